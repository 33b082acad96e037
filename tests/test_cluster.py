"""Cluster-mode Redis (as MemoryDB and ElastiCache in cluster mode give), real redis-servers with
--cluster-enabled: the lease on one shard and on three, a standby's takeover after kill -9, a shard
failover under a running leader, the fence on every node, and the refusals a cluster can give."""

import json
import time

import pytest
import redis

from conftest import FAST_TIMING, KEYS, LaunchPad, fake_ray_events, subscribers, tagged_processes, wait_for
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.view import read_cluster
from raylaunch.store.fence import AclFence
from raylaunch.store.leader import LeaderReader
from raylaunch.store.errors import RedisRefused, guarded
from raylaunch.store.lease import RedisLease
from raylaunch.store.records import Holder
from raylaunch.store.connect import RedisTarget, connect, is_cluster
from rediscluster import LocalCluster
from redisbins import binary as redis_binary

pytestmark = pytest.mark.redis_versions



@pytest.fixture
def make_cluster(tmp_path, redis_version):
    """Start a LocalCluster of the given shape; every one started is stopped at teardown."""
    started = []
    server = redis_binary(redis_version)

    def make(shards=1, replicas=0):
        cluster = LocalCluster(tmp_path / f"cluster-{len(started)}", shards=shards, replicas=replicas,
                               binary=server.path, env=server.env).start()
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


def lease_on(cluster, node, lease=5.0, port=None):
    target = RedisTarget("127.0.0.1", port or cluster.nodes[0].port)
    return RedisLease(Keyspace(guarded(lambda: connect(target, 1.0), KEYS.lease), KEYS), Holder.me(node, "h"), lease)


@pytest.mark.parametrize("shards", [1, 3])
def test_the_lease_works_on_a_cluster_of_one_and_of_three_shards(make_cluster, shards):
    cluster = make_cluster(shards=shards)
    a = lease_on(cluster, "a")
    b = lease_on(cluster, "b", port=cluster.nodes[-1].port)  # any node leads to the slot's owner
    assert is_cluster(a.client) and is_cluster(b.client)
    a.check()
    attempt = a.try_acquire()
    assert attempt.won and attempt.epoch == 1
    assert not b.try_acquire().won
    assert a.renew(1) == 1
    assert a.write_record("10.0.0.1:6379", 1, time.time(), {})
    owner = cluster.owner_of(KEYS.lease)
    assert json.loads(owner.client().get(KEYS.record))["gcs_address"] == "10.0.0.1:6379"
    others = [n for n in cluster.masters if n is not owner]
    assert all(n.client().dbsize() == 0 for n in others), "every key of the lease lives on one shard"

    view = read_cluster(b.keyspace)
    assert view.leader_node == "a" and [s.record.node for s in view.standbys] == ["b"]
    source = LeaderReader(b.keyspace, "w", ttl=5)
    assert source.current(None).gcs_address == "10.0.0.1:6379"
    assert owner.client().get(KEYS.follower("w")) is not None

    woke = []
    import threading
    stop = threading.Event()
    waiter = threading.Thread(target=lambda: woke.append(b.wait_released(10, stop)))
    waiter.start()
    wait_for(lambda: subscribers(KEYS.channel, *cluster.nodes) == 1, 10, what="b's subscription to the release channel")
    assert a.release()
    waiter.join(10)
    assert woke == [True], "the release notification crosses the cluster"
    assert b.try_acquire().epoch == 2
    for lease in (a, b):
        lease.close()


def test_a_standby_takes_over_after_kill_9_on_a_one_shard_cluster(make_cluster, fake_ray_env, tmp_path,
                                                                    leak_guard):
    cluster = make_cluster(shards=1)
    pad = LaunchPad(fake_ray_env, tmp_path, cluster.address, FAST_TIMING)
    try:
        a = pad("a", "--port=0")
        a.wait_log("GCS serving")
        b = pad("b", "--port=0")
        b.wait_log("standing by; leader is a")
        a.kill_tree()
        b.wait_log("GCS serving", timeout=20)
        starts = [e for e in fake_ray_events(fake_ray_env) if e["event"] == "start"]
        assert [(e["node"], int(e["epoch"])) for e in starts] == [("a", 1), ("b", 2)]
        assert all(e["others"] == [] for e in starts), "no head started while another lived"
        b.proc.terminate()
        assert b.wait(15) == 0, b.log()
        assert cluster.owner_of(KEYS.lease).client().get(KEYS.lease) is None
    finally:
        pad.close()
    assert tagged_processes(leak_guard) == []


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_a_shard_failover_under_a_running_leader_never_gives_two_heads(make_cluster, fake_ray_env, tmp_path,
                                                                         leak_guard, min_replicas):
    cluster = make_cluster(shards=1, replicas=1)
    old_master, replica = cluster.nodes
    pad = LaunchPad(fake_ray_env, tmp_path, cluster.address, FAST_TIMING)
    extra = [f"--ha-min-replicas={min_replicas}"]
    try:
        a = pad("a", "--port=0", *extra)
        a.wait_log("GCS serving")
        b = pad("b", "--port=0", *extra)
        b.wait_log("standing by; leader is a")
        replica.client().execute_command("CLUSTER", "FAILOVER")
        wait_for(lambda: cluster.owner_of(KEYS.lease) is replica, 20, interval=0.1, what="the replica promoted")
        time.sleep(1.0)  # the lease has aged: it is fresh on the new master only if the leader renews there
        wait_for(lambda: replica.client().pttl(KEYS.lease) > 2000, 10, what="a leader renewing on the new master")
        assert json.loads(replica.client().get(KEYS.lease))["node"] == "a", "the leader kept its lease"
        time.sleep(3.0)  # one more lease: nothing changes hands
        starts = [e for e in fake_ray_events(fake_ray_env) if e["event"] == "start"]
        assert [(e["node"], int(e["epoch"])) for e in starts] == [("a", 1)], starts
        assert a.proc.poll() is None and b.proc.poll() is None
        for launcher in (a, b):
            launcher.proc.terminate()
            assert launcher.wait(15) == 0, launcher.log()
    finally:
        pad.close()
    assert tagged_processes(leak_guard) == []


def test_the_fence_issues_and_revokes_users_on_every_node(make_cluster):
    cluster = make_cluster(shards=1, replicas=1)
    client = connect(RedisTarget("127.0.0.1", cluster.nodes[0].port), 1.0)
    AclFence(Keyspace(client, KEYS)).lock_out(1)
    fence = AclFence(Keyspace(client, KEYS))
    assert fence.lock_out(2) == [f"{KEYS.gcs_user_prefix}1"]
    for node in cluster.nodes:
        users = node.client().acl_users()
        assert f"{KEYS.gcs_user_prefix}2" in users and f"{KEYS.gcs_user_prefix}1" not in users, node.port
    gcs = redis.Redis(port=cluster.nodes[1].port, username=fence.credentials(2).username,
                      password=fence.credentials(2).password, decode_responses=True)
    assert gcs.ping(), "after a failover the GCS can log in on the new master too"


def test_keys_in_different_slots_are_a_permanent_refusal(make_cluster):
    cluster = make_cluster(shards=1)
    plain = cluster.nodes[0].client()  # a client that does not know it talks to a cluster
    with pytest.raises(RedisRefused) as refused:
        guarded(lambda: plain.eval("return 1", 2, "ray-ha:a", "ray-ha:b"), KEYS.lease)
    assert refused.value.cause == "crossslot" and "CROSSSLOT" in str(refused.value)
    clustered = connect(RedisTarget("127.0.0.1", cluster.nodes[0].port), 1.0)
    with pytest.raises(RedisRefused) as refused:  # redis-py's cluster client refuses it itself
        guarded(lambda: clustered.eval("return 1", 2, "ray-ha:a", "ray-ha:b"), KEYS.lease)
    assert refused.value.cause == "crossslot"


def test_a_cluster_node_taken_for_a_plain_redis_is_a_permanent_refusal(make_cluster):
    cluster = make_cluster(shards=3)
    owner = cluster.owner_of(KEYS.lease)
    elsewhere = next(n for n in cluster.masters if n is not owner)
    lease = RedisLease(Keyspace(elsewhere.client(), KEYS), Holder.me("a", "h"), 5.0)  # as when INFO is denied
    with pytest.raises(RedisRefused) as refused:
        lease.check()
    assert refused.value.cause == "moved" and "allow INFO" in str(refused.value)
