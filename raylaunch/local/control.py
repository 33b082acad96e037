"""Local control, without Redis or Ray: stop this machine's supervisors, and the health probe."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

import psutil

from raylaunch.local.state import LocalSupervisor, SupervisorState, gcs_probe, local_supervisors

#: Extra time `stop` allows beyond a supervisor's own grace (s).
STOP_SLACK = 10.0


def stop_supervisors(directory: Path, node: Optional[str]) -> tuple[list[str], list[str]]:
    """SIGTERM every running supervisor here (or `node`'s) and wait for each; (stopped, failed) lines."""
    running = [s for s in local_supervisors(directory, node) if s.running and s.pid]
    for sup in running:
        try:
            os.kill(sup.pid, signal.SIGTERM)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass
    stopped, failed = [], []
    for sup in running:
        state = sup.state or SupervisorState(node=sup.node)  # not written yet: the default timings
        bound = state.stop_grace + state.lease_duration
        if _wait_gone(directory, sup, bound + STOP_SLACK):
            stopped.append(f"stopped the ray-ha supervisor of node {sup.node} (pid {sup.pid})")
        else:
            failed.append(f"the ray-ha supervisor of node {sup.node} (pid {sup.pid}) did not stop "
                          f"within {bound + STOP_SLACK:.0f}s")
    return stopped, failed


def _wait_gone(directory: Path, sup: LocalSupervisor, timeout: float) -> bool:
    """Wait until the supervisor has let go of its lock and its process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(s.running for s in local_supervisors(directory, sup.node)) and not _alive(sup.pid):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: Optional[int]) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def health(directory: Path, node: Optional[str], role: str) -> tuple[bool, str]:
    """Probe this machine's supervisor: `leader` needs a serving GCS, `any` a live, fresh supervisor."""
    running = [s for s in local_supervisors(directory, node) if s.running]
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

