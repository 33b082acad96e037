"""Local control, without Redis or Ray: stop this machine's supervisors, and the health probe.

Only a supervisor the kernel names as its lock's holder, of this user (or root's, for root), running
ray-ha, is ever signalled (local.holder); anything else holding a lock is reported, never signalled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Optional

from raylaunch.local.holder import signal_holder, wait_exit
from raylaunch.local.rundir import run_dir
from raylaunch.local.state import LocalSupervisor, SupervisorState, gcs_probe, local_supervisors, machine_supervisors

#: Extra time `stop` allows beyond a supervisor's own grace (s).
STOP_SLACK = 10.0


@dataclass
class StopReport:
    """What `stop` did: one line per supervisor stopped, one per failure, notes on places not searched."""

    stopped: list[str]
    failed: list[str]
    notes: list[str]


def stop_supervisors(env: Mapping[str, str], node: Optional[str]) -> StopReport:
    """SIGTERM every proven supervisor here (or `node`'s) and wait for each to exit."""
    found = machine_supervisors(env, node)
    report = StopReport([], [f"node {s.node}: not signalled: {s.doubt}" for s in found.supervisors if s.doubt],
                        found.notes)
    for sup, pidfd in _signal_all([s for s in found.supervisors if s.running]):
        state = sup.state or SupervisorState(node=sup.node)  # not written yet: the default timings
        bound = state.stop_grace + state.lease_duration + STOP_SLACK
        try:
            gone = wait_exit(pidfd, bound)
        finally:
            os.close(pidfd)
        if gone:
            report.stopped.append(f"stopped the ray-ha supervisor of node {sup.node} (pid {sup.pid})")
        else:
            report.failed.append(f"the ray-ha supervisor of node {sup.node} (pid {sup.pid}) did not stop "
                                 f"within {bound:.0f}s")
    return report


def _signal_all(supervisors: list[LocalSupervisor]) -> list[tuple[LocalSupervisor, int]]:
    """SIGTERM each proven supervisor (all before waiting for any); each with a pidfd to wait on."""
    signalled = []
    for sup in supervisors:
        pidfd = signal_holder(sup.pid or 0, signal.SIGTERM, _still_holds(sup))
        if pidfd is not None:
            signalled.append((sup, pidfd))
    return signalled


def _still_holds(sup: LocalSupervisor) -> Callable[[int], bool]:
    """A check, made after the pidfd is open, that `sup`'s lock is still held by the same proven pid."""
    def check(pid: int) -> bool:
        return any(s.running and s.pid == pid for s in local_supervisors(sup.directory, sup.node))
    return check


def health(env: Mapping[str, str], node: Optional[str], role: str) -> tuple[bool, str]:
    """Probe this machine's supervisor: `leader` needs a serving GCS, `any` a live, fresh supervisor."""
    running = [s for s in local_supervisors(run_dir(env), node) if s.running]
    if not running:
        return False, "no ray-ha supervisor runs here" + (f" for node {node}" if node else "")
    verdicts = [_probe(sup, role) for sup in running]
    good = [why for ok, why in verdicts if ok]
    return (True, good[0]) if good else (False, verdicts[0][1])


def _probe(sup: LocalSupervisor, role: str) -> tuple[bool, str]:
    who = f"node {sup.node} (pid {sup.pid})"
    if sup.state is None or not sup.fresh():
        return False, f"{who}: supervisor state is stale (loop stuck or frozen?)"
    ok, why = sup.state.health(role, gcs_probe)
    return ok, f"{who}: {why}"
