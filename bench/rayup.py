"""The bench's `ray up` scenario: Ray 2.60's own `ray up` with the docs/ recipes on rig hosts with sshd
(testkit/rayup.py), kill -9 of every process on the leader's machine, and what a user of the worker sees."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.hosts import go, probe
from bench.rig import now
from testkit.hostray import drive_at, read_json_line
from testkit.hosts import Rig
from testkit.rayup import RayUp


class RayUpRound:
    """One round's rig with sshd on its machines; `close()` kills everything on it and removes it."""

    def __init__(self, lease: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rhu-", dir="/tmp"))
        self.rig = Rig(self.dir)
        try:
            self.up = RayUp(self.rig, self.dir, lease)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.rig.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def ray_up_hosts(rnd: RayUpRound) -> dict[str, float]:
    """`ray up` of both candidates, a detached actor on the autoscaler's worker, kill -9 of the leader's
    machine -> the new leader's record, then a driver on w1 (connected before the kill) gets the actor's
    answer with its state and runs a task on w1 (total)."""
    up = rnd.up
    up.up("h1")
    deadline = time.monotonic() + 180
    while not up.raylets("w1"):
        if time.monotonic() > deadline:
            raise RuntimeError("h1's autoscaler never started w1")
        time.sleep(0.5)
    up.up("h2")
    w1 = up.host("w1")
    created = drive_at(w1, "auto", "worker-create")
    drive_at(w1, "auto", "pinned")
    resident = probe(w1, "auto", up.host("h1").ip)
    killed = now()
    up.host("h1").kill_all()
    go(resident)
    led = _record_names(up, "h2", killed)
    seen = read_json_line(resident.proc.stdout, 300)
    if (seen.get("pid"), seen.get("node")) != (created["pid"], created["node"]) or "task" not in seen:
        raise RuntimeError(f"w1's work did not carry on: {seen}")
    return {"total": max(seen["actor"], seen["task"]) - killed, "h2's record": led - killed,
            "actor answered": seen["actor"] - killed, "task ran on w1": seen["task"] - killed}


def _record_names(up: RayUp, node: str, since: float) -> float:
    """Block until the leader record names `node`; the monotonic time it did."""
    while now() < since + 120:
        if up.leader() == node:
            return now()
        time.sleep(0.05)
    raise RuntimeError(f"{node} never led")
