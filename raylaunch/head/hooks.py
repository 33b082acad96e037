"""keepalived-style notify hooks: a shell command when this node starts and stops leading.

Hooks run in their own threads and process groups, bounded by a timeout, so a slow or failing hook
is logged and never blocks or breaks the lease loop. The launcher waits for running hooks (up to the
same bound) before it exits, so none is left behind.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Mapping
from typing import Optional

from raylaunch.config import Role
from raylaunch.head.steps import LEADING_ROLES, Snapshot
from raylaunch.proc.tree import kill_session

log = logging.getLogger("ray-ha")



class Hooks:
    """A campaign watcher that runs `on_elected` once our GCS serves and `on_demoted` when we stop leading."""

    def __init__(self, on_elected: Optional[str], on_demoted: Optional[str], timeout: float,
                 env: Mapping[str, str]) -> None:
        self.on_elected, self.on_demoted, self.timeout = on_elected, on_demoted, timeout
        self.env = dict(env)
        self._tenure: Optional[tuple[int, str]] = None   # (epoch, GCS address) while we lead
        self._running: dict[int, subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, snapshot: Snapshot) -> None:
        if snapshot.serving and self._tenure is None:
            self._tenure = (snapshot.epoch, snapshot.gcs_address or "")
            self._fire("elected", self.on_elected, Role.LEADER, *self._tenure)
        elif self._tenure is not None and snapshot.role not in LEADING_ROLES:
            self._fire("demoted", self.on_demoted, Role.STANDBY, *self._tenure)
            self._tenure = None

    def pids(self) -> set[int]:
        """Hook processes running now: not part of the head's tree, never killed or reaped with it."""
        with self._lock:
            return set(self._running)

    def close(self) -> None:
        """Wait for running hooks (each is bounded by the timeout, so this is too)."""
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _fire(self, event: str, command: Optional[str], role: Role, epoch: int, gcs: str) -> None:
        if not command:
            return
        env = {**self.env, "RAY_HA_ROLE": role.value, "RAY_HA_EPOCH": str(epoch), "RAY_HA_GCS_ADDRESS": gcs}
        thread = threading.Thread(target=self._run, args=(event, command, env), daemon=True,
                                  name=f"hook-{event}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run(self, event: str, command: str, env: Mapping[str, str]) -> None:
        """Run one hook to completion or its timeout; log how it ended."""
        try:
            with self._lock:
                proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True, text=True, errors="replace")
                self._running[proc.pid] = proc
        except OSError as exc:
            log.error("on-%s hook could not start: %s", event, exc)
            return
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            out, _ = proc.communicate()
            log.error("on-%s hook killed after %gs: %s", event, self.timeout, command)
            return
        finally:
            with self._lock:
                self._running.pop(proc.pid, None)
        last = (out or "").strip().splitlines()[-1:] or [""]
        if proc.returncode == 0:
            log.info("on-%s hook done", event)
        else:
            log.error("on-%s hook failed with code %s: %s", event, proc.returncode, last[0])
