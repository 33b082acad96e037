"""Carry `ray up`'s local node provider list across leaders. Ray keeps it on the head's disk
(`<ray temp dir>/cluster-<name>.state`), so a new leader's autoscaler would find every worker
"terminated" and run its setup and start commands on live workers again. The leader keeps the workers'
entries in Redis; a new leader writes them into its own list before its head starts."""

from __future__ import annotations

import ipaddress
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
    def follower_addresses(self) -> Optional[frozenset[str]]: ...


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
        """Write the last leader's entries of workers that still run a follower into this machine's list
        (ours for the rest). A worker whose follower is gone (the cluster was stopped whole, or that machine
        was) is left to the autoscaler, which starts it at once."""
        text = self.lease.read_provider_nodes()
        if text is None:
            return
        path = self.cluster.state_path
        nodes = json.loads(path.read_text()) if path.exists() else {}
        nodes.setdefault(self.cluster.head_ip, {"tags": {KIND: "head"}, "state": "terminated"})  # else Ray drops all
        listed = {ip: entry for ip, entry in json.loads(text).items() if ip in self.cluster.worker_ips}
        gone = self.followers_gone() & (set(listed) | set(nodes))
        carried = {ip: entry for ip, entry in listed.items() if ip not in gone}
        for ip in gone & set(nodes):  # this machine's own list, from an earlier tenure, says no better
            nodes[ip] = {**nodes[ip], "state": "terminated"}
        if gone:
            log.info("node provider list: no follower runs on %s; the autoscaler starts it",
                     ", ".join(sorted(gone)))
        nodes.update(carried)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".ray-ha")
        scratch.write_text(json.dumps(nodes))
        os.replace(scratch, path)
        self._saved = path.stat().st_mtime_ns
        log.info("node provider list: %d worker(s) carried over from the last leader (%s)", len(carried),
                 ", ".join(f"{ip} {entry.get('state')}" for ip, entry in carried.items()) or "none")

    def followers_gone(self) -> set[str]:
        """The worker_ips (addresses, not names) where no follower runs now; none if a follower does not
        say where it runs (an older ray-ha)."""
        live = self.lease.follower_addresses()
        return set() if live is None else {ip for ip in self.cluster.worker_ips if _is_address(ip) and ip not in live}

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


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
