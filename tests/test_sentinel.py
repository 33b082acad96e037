"""Redis Sentinel and replica confirmation, against real servers on loopback: a master, a replica and
three sentinels (`redis-server --sentinel`), with launchers running the fake `ray`."""

import os
import subprocess
import time

import pytest
import redis

from conftest import KEYS, fake_ray_events, tagged_processes, wait_for
from testkit.localredis import free_port
from redisbins import binary as redis_binary
from raylaunch.store.connect import RedisTarget, connect, sentinel_master, server_mode

pytestmark = pytest.mark.redis_versions

KEY = KEYS.lease
#: Long enough that a leader can ride out a Sentinel failover (about 2-3 s here) without stepping down.
SENTINEL_TIMING = ["--ha-lease-duration=6", "--ha-renew-deadline=4", "--ha-retry-period=0.5",
                   "--ha-redis-timeout=0.5", "--ha-stop-grace=2"]


class Sentinels:
    """Three sentinels watching `master` (named mymaster), quorum 2, one second to call it down."""

    def __init__(self, workdir, master, binary):
        self.procs, self.ports = [], []
        for i in range(3):
            port = free_port()
            conf = workdir / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                            f"sentinel monitor mymaster 127.0.0.1 {master.port} 2\n"
                            "sentinel down-after-milliseconds mymaster 1000\n"
                            "sentinel failover-timeout mymaster 5000\n")
            self.procs.append(subprocess.Popen([binary.path, str(conf), "--sentinel"], env={**os.environ, **binary.env},
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)

    @property
    def address(self):
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def client(self, i=0):
        return redis.Redis(port=self.ports[i], decode_responses=True, socket_timeout=2)

    def master_port(self):
        try:
            return int(self.client().sentinel_get_master_addr_by_name("mymaster")[1])
        except (redis.RedisError, TypeError):
            return None

    def ready(self):
        """Every sentinel knows the replica and the two other sentinels (needed to fail over)."""
        try:
            return all(self.client(i).sentinel_slaves("mymaster") and len(self.client(i).sentinel_sentinels(
                "mymaster")) == 2 for i in range(3))
        except redis.RedisError:
            return False

    def stop(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def replicated(tmp_path, make_redis):
    """A master and one replica of it."""
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    master = make_redis(tmp_path / "m").start()
    replica = make_redis(tmp_path / "r", extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", 10,
             what="the replica in sync")
    yield master, replica
    replica.stop()
    master.stop()


@pytest.fixture
def sentinels(tmp_path, replicated, redis_version):
    watch = Sentinels(tmp_path, replicated[0], redis_binary(redis_version))
    try:
        wait_for(watch.ready, 20, interval=0.2, what="sentinels that know each other and the replica")
        yield watch
    finally:
        watch.stop()


def test_a_sentinel_address_leads_to_its_master(sentinels, replicated):
    master, _ = replicated
    first = sentinels.address.split(",")[0]
    assert sentinel_master(redis.Redis(port=int(first.split(":")[1]), decode_responses=True)) == "mymaster"
    assert server_mode(master.client()) == "standalone", "a plain Redis is not a sentinel"
    client = connect(RedisTarget("127.0.0.1", sentinels.ports[0]), timeout=2)
    client.set("through-the-sentinel", "1")
    assert master.client().get("through-the-sentinel") == "1"


def test_master_failover_never_gives_two_leaders(launch, sentinels, replicated, fake_ray_env, leak_guard):
    master, replica = replicated
    env = {"RAY_REDIS_ADDRESS": sentinels.address}
    a = launch("a", env=env, timing=SENTINEL_TIMING)
    a.wait_log("GCS serving")
    b = launch("b", env=env, timing=SENTINEL_TIMING)
    b.wait_log("standing by")
    wait_for(lambda: replica.client().get(KEY), 5, what="the lease replicated")
    master.stop()  # kill -9
    wait_for(lambda: sentinels.master_port() == replica.port, 30, interval=0.2, what="the sentinels' failover")
    time.sleep(2.0)  # the replicated lease has aged: it is fresh only if a leader renews it on the new master
    wait_for(lambda: replica.client().pttl(KEY) > 5000, 10, what="a leader renewing on the new master")
    starts = [e for e in fake_ray_events(fake_ray_env) if e["event"] == "start"]
    assert 1 <= len(starts) <= 2, f"at most one extra leader change: {starts}"
    assert all(e["others"] == [] for e in starts), "no head started while another epoch's lived"
    assert [int(e["epoch"]) for e in starts] == sorted({int(e["epoch"]) for e in starts})
    for launcher in (a, b):
        launcher.proc.terminate()
        assert launcher.wait(15) == 0, launcher.log()
    assert tagged_processes(leak_guard) == []


def test_min_replicas_holds_the_lease_only_while_a_replica_confirms(launch, replicated, fake_ray_env):
    master, replica = replicated
    env = {"RAY_REDIS_ADDRESS": master.address}
    leader = launch("a", "--ha-min-replicas=1", env=env)
    leader.wait_log("GCS serving")
    replica.stop()
    leader.wait_log("replica(s) confirmed", timeout=5)
    assert leader.wait(10) == 3, "unconfirmed renewals are no renewals: the leader steps down"
    again = launch("b", "--ha-min-replicas=1", env=env)
    again.wait_log("replica(s) confirmed", timeout=5)
    assert master.client().get(KEY) is None, "an unconfirmed acquisition is given back at once"
    replica.start()
    again.wait_log("GCS serving", timeout=20)
    assert [e["node"] for e in fake_ray_events(fake_ray_env) if e["event"] == "start"] == ["a", "b"]


def test_min_replicas_is_checked():
    from raylaunch.config import SAFETY, ConfigError, settings_from

    with pytest.raises(ConfigError, match="not a number of replicas"):
        settings_from(SAFETY, {"min_replicas": "one"}, {})
    assert settings_from(SAFETY, {}, {"RAY_HA_MIN_REPLICAS": "2"}).min_replicas == 2
