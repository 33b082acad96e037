"""Carrying `ray up`'s local node provider list across leaders (head.provider), with Ray's file format."""

import json
import logging
import os
import time
from typing import Optional

import pytest

from raylaunch.head.provider import NodeListCarrier
from raylaunch.head.steps import Role, Snapshot, Step
from raylaunch.proc.autoscaling import LocalCluster
from raylaunch.store.errors import RedisUnavailable

WORKER = {"tags": {"ray-node-type": "worker", "ray-node-status": "up-to-date", "ray-launch-config": "abc"},
          "state": "running"}


class Store:
    """The leader's key in Redis, as a string; `ours` says whether the lease is ours."""

    def __init__(self, text: Optional[str] = None, live=frozenset({"10.0.0.21", "10.0.0.22"})) -> None:
        self.text, self.ours, self.writes, self.error = text, True, 0, None
        self.live = live  # the addresses of machines with a live follower (None: one did not say)

    def write_provider_nodes(self, text: str) -> bool:
        if self.error:
            raise self.error
        self.writes += 1
        if self.ours:
            self.text = text
        return self.ours

    def read_provider_nodes(self) -> Optional[str]:
        if self.error:
            raise self.error
        return self.text

    def follower_addresses(self):
        return self.live


def snap(step: Step, serving: bool = False) -> Snapshot:
    return Snapshot(node="h2", role=Role.LEADER if serving else Role.WAITING, epoch=2, leader="h2",
                    gcs_address=None, serving=serving, transitions=1, renew_failures=0, takeover_seconds=None,
                    lease_confirmed_at=None, redis_refused=None, step=step, outcome=None)


@pytest.fixture
def cluster(tmp_path):
    return LocalCluster(tmp_path / "ray" / "cluster-ray-ha-2.state", "10.0.0.12", ("10.0.0.21", "10.0.0.22"))


def test_a_new_leader_writes_the_last_leaders_workers_into_its_list_before_its_head_starts(cluster):
    store = Store(json.dumps({"10.0.0.21": WORKER, "10.0.0.99": WORKER}))
    NodeListCarrier(store, cluster)(snap(Step.ACQUIRED))
    nodes = json.loads(cluster.state_path.read_text())
    assert nodes["10.0.0.21"] == WORKER, "the worker runs, as the last leader's autoscaler knew"
    assert nodes["10.0.0.12"] == {"tags": {"ray-node-type": "head"}, "state": "terminated"}, \
        "its own head entry, without which Ray drops the list ('Head IP changed')"
    assert "10.0.0.99" not in nodes, "only this cluster's workers"


def test_restoring_keeps_this_machines_own_entries_for_the_rest(cluster):
    cluster.state_path.parent.mkdir()
    own_head = {"tags": {"ray-node-type": "head", "x": "y"}, "state": "running"}
    cluster.state_path.write_text(json.dumps({"10.0.0.12": own_head, "10.0.0.22": {**WORKER, "state": "terminated"}}))
    NodeListCarrier(Store(json.dumps({"10.0.0.21": WORKER})), cluster)(snap(Step.ACQUIRED))
    nodes = json.loads(cluster.state_path.read_text())
    assert nodes["10.0.0.12"] == own_head and nodes["10.0.0.22"]["state"] == "terminated"
    assert nodes["10.0.0.21"] == WORKER


def test_nothing_kept_yet_leaves_the_list_alone(cluster):
    NodeListCarrier(Store(None), cluster)(snap(Step.ACQUIRED))
    assert not cluster.state_path.exists()


def test_a_serving_leader_keeps_the_workers_whenever_rays_file_changes(cluster):
    store = Store()
    carrier = NodeListCarrier(store, cluster)
    carrier(snap(Step.RENEWED, serving=True))
    assert store.writes == 0, "no file yet"
    cluster.state_path.parent.mkdir()
    cluster.state_path.write_text(json.dumps({"10.0.0.12": {"tags": {"ray-node-type": "head"}, "state": "running"},
                                              "10.0.0.21": WORKER}))
    carrier(snap(Step.RENEWED, serving=True))
    carrier(snap(Step.LEADING, serving=True))
    assert store.writes == 1 and json.loads(store.text) == {"10.0.0.21": WORKER}, "workers only, once per change"
    later = cluster.state_path.stat().st_mtime_ns + 1_000_000
    cluster.state_path.write_text(json.dumps({"10.0.0.21": {**WORKER, "state": "terminated"}}))
    os.utime(cluster.state_path, ns=(later, later))
    carrier(snap(Step.RENEWED, serving=True))
    assert store.writes == 2 and json.loads(store.text)["10.0.0.21"]["state"] == "terminated"


def test_a_standby_keeps_nothing_and_trouble_is_logged_not_raised(cluster, caplog):
    store = Store()
    carrier = NodeListCarrier(store, cluster)
    cluster.state_path.parent.mkdir()
    cluster.state_path.write_text(json.dumps({"10.0.0.21": WORKER}))
    carrier(snap(Step.STANDING_BY))
    assert store.writes == 0
    store.error = RedisUnavailable("connection refused")
    carrier(snap(Step.RENEWED, serving=True))
    carrier(snap(Step.ACQUIRED))
    assert caplog.text.count("was not carried") == 2
    store.error = None
    carrier(snap(Step.RENEWED, serving=True))
    assert store.writes == 1, "tried again once Redis answers"


def test_a_worker_whose_follower_is_gone_is_left_to_the_autoscaler(cluster, caplog):
    """The cluster was stopped whole (or that worker's machine was): its entry would have the autoscaler
    wait for a heartbeat that never comes; left out, the worker is started at once."""
    cluster.state_path.parent.mkdir()
    cluster.state_path.write_text(json.dumps({"10.0.0.22": WORKER}))  # from this machine's earlier tenure
    store = Store(json.dumps({"10.0.0.21": WORKER, "10.0.0.22": WORKER}), live=frozenset({"10.0.0.21", "10.0.0.5"}))
    with caplog.at_level(logging.INFO, logger="ray-ha"):
        NodeListCarrier(store, cluster)(snap(Step.ACQUIRED))
    nodes = json.loads(cluster.state_path.read_text())
    assert nodes["10.0.0.21"] == WORKER, "its follower runs: carried, the autoscaler leaves it alone"
    assert nodes["10.0.0.22"] == {**WORKER, "state": "terminated"}, "no follower: not running, whatever a list says"
    assert "no follower runs on 10.0.0.22; the autoscaler starts it" in caplog.text


def test_a_follower_that_does_not_say_where_it_runs_leaves_the_carried_list_as_it_was(cluster):
    """A follower of an older ray-ha names no addresses: nothing is known, so nothing is dropped."""
    store = Store(json.dumps({"10.0.0.21": WORKER, "10.0.0.22": WORKER}), live=None)
    NodeListCarrier(store, cluster)(snap(Step.ACQUIRED))
    nodes = json.loads(cluster.state_path.read_text())
    assert nodes["10.0.0.21"] == WORKER and nodes["10.0.0.22"] == WORKER


def test_workers_named_by_host_name_are_carried_as_before(tmp_path):
    """worker_ips may hold names; a follower's heartbeat names addresses, so a name is never judged gone."""
    named = LocalCluster(tmp_path / "cluster-x.state", "10.0.0.12", ("w1.example",))
    NodeListCarrier(Store(json.dumps({"w1.example": WORKER}), live=frozenset()), named)(snap(Step.ACQUIRED))
    assert json.loads(named.state_path.read_text())["w1.example"] == WORKER


def test_live_followers_say_where_they_run_in_redis(redis_server):
    """With a real Redis: a follower's heartbeat names its machine's addresses while it lives; one that does
    not (an older ray-ha) makes the answer unknown."""
    from conftest import KEYS
    from raylaunch.follow.runtime import machine_addresses
    from raylaunch.store.keyspace import Keyspace
    from raylaunch.store.leader import LeaderReader
    from raylaunch.store.lease import RedisLease
    from raylaunch.store.records import Holder

    keyspace = Keyspace(redis_server.client(), KEYS)
    lease = RedisLease(keyspace, Holder.me("h2", "h"), 5.0)
    assert lease.follower_addresses() == frozenset(), "no follower"
    LeaderReader(keyspace, "w1", ttl=5, addresses=("10.0.0.21",)).current(None)
    LeaderReader(keyspace, "w2", ttl=0.2, addresses=("10.0.0.22", "fd00::22")).current(None)
    assert lease.follower_addresses() == {"10.0.0.21", "10.0.0.22", "fd00::22"}
    time.sleep(0.4)
    assert lease.follower_addresses() == {"10.0.0.21"}, "w2's heartbeat expired: its machine runs no follower"
    LeaderReader(keyspace, "w3", ttl=5).current(None)  # says no address
    assert lease.follower_addresses() is None
    assert machine_addresses() and not any(a.startswith("127.") or a == "::1" for a in machine_addresses())
