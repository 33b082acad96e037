"""Carry `ray up`'s local node provider list across leaders. Ray keeps it on the head's disk
(`<ray temp dir>/cluster-<name>.state`), so a new leader's autoscaler would find every worker
"terminated" and run its setup and start commands on live workers again. The leader keeps the workers'
entries in Redis; a new leader writes them into its own list before its head starts."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Protocol

from raylaunch.head.steps import Snapshot, Step
from raylaunch.proc.autoscaling import LocalCluster
from raylaunch.store.errors import RedisRefused, RedisUnavailable

log = logging.getLogger("ray-ha")

KIND = "ray-node-type"  # Ray's TAG_RAY_NODE_KIND
ERRORS = (RedisUnavailable, RedisRefused, OSError, ValueError)


class NodeListLease(Protocol):
    """Where the leader keeps the list (store.lease.RedisLease in production)."""

    def write_provider_nodes(self, text: str) -> bool: ...
    def read_provider_nodes(self) -> Optional[str]: ...


class NodeListCarrier:
    """A campaign watcher: on winning, restore the workers' entries before the head starts; while
    serving, right after each renewal (Redis just answered; once per retry period, not every tick),
    keep them in Redis if Ray's file changed."""

    def __init__(self, lease: NodeListLease, cluster: LocalCluster) -> None:
        self.lease, self.cluster = lease, cluster
        self._saved: Optional[int] = None  # mtime_ns of the file last kept

    def __call__(self, snapshot: Snapshot) -> None:
        try:
            if snapshot.step is Step.ACQUIRED:
                self.restore()
            elif snapshot.serving and snapshot.step is Step.RENEWED:
                self.keep()
        except ERRORS as exc:
            log.warning("the node provider's list (%s) was not carried: %s", self.cluster.state_path, exc)

    def restore(self) -> None:
        """Write the last leader's worker entries into this machine's list (ours for the rest)."""
        text = self.lease.read_provider_nodes()
        if text is None:
            return
        path = self.cluster.state_path
        nodes = json.loads(path.read_text()) if path.exists() else {}
        nodes.setdefault(self.cluster.head_ip, {"tags": {KIND: "head"}, "state": "terminated"})  # else Ray drops all
        carried = {ip: entry for ip, entry in json.loads(text).items() if ip in self.cluster.worker_ips}
        nodes.update(carried)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".ray-ha")
        scratch.write_text(json.dumps(nodes))
        os.replace(scratch, path)
        self._saved = path.stat().st_mtime_ns
        log.info("node provider list: %d worker(s) carried over from the last leader (%s)", len(carried),
                 ", ".join(f"{ip} {entry.get('state')}" for ip, entry in carried.items()) or "none")

    def keep(self) -> None:
        """Keep the workers' entries in Redis when Ray's file changed since last time."""
        path = self.cluster.state_path
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._saved:
            return
        nodes = json.loads(path.read_text())
        workers = {ip: entry for ip, entry in nodes.items() if entry.get("tags", {}).get(KIND) == "worker"}
        if self.lease.write_provider_nodes(json.dumps(workers, sort_keys=True)):
            self._saved = stamp
