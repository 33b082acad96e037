"""Carrying `ray up`'s local node provider list across leaders (head.provider), with Ray's file format."""

import json
import os
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

    def __init__(self, text: Optional[str] = None) -> None:
        self.text, self.ours, self.writes, self.error = text, True, 0, None

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
