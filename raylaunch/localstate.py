"""This machine's supervisors, found without Redis: a locked pid file and a JSON state file per node.

`ray-ha stop`, `health` and `status` read them. The supervisor holds an flock on its pid file for its
whole life, so a live supervisor is told from a stale file without trusting pids, and a second
supervisor for the same node on this machine is refused. Directory: $RAY_HA_RUN_DIR or /tmp/ray-ha.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from raylaunch.config import ConfigError

RUN_DIR_ENV = "RAY_HA_RUN_DIR"
DEFAULT_RUN_DIR = "/tmp/ray-ha"
#: Version of the state file's layout; bumped only on incompatible changes.
SCHEMA = 1


def run_dir(env: Mapping[str, str]) -> Path:
    """Where this machine's supervisors keep their pid and state files."""
    return Path(env.get(RUN_DIR_ENV, "").strip() or DEFAULT_RUN_DIR)


class AlreadyRunning(ConfigError):
    """Another supervisor for the same node runs on this machine."""


class StateFile:
    """The supervisor's side: claim the node's pid file, then keep its state file current."""

    def __init__(self, directory: Path, node: str, static: Mapping[str, Any], heartbeat: float) -> None:
        self.pid_path, self.state_path = directory / f"{node}.pid", directory / f"{node}.json"
        self.static, self.heartbeat = dict(static), heartbeat
        self._fd: Optional[int] = None
        self._last: Optional[dict[str, Any]] = None
        self._written = 0.0

    def claim(self) -> None:
        """Take the node's lock for this process's life; AlreadyRunning if another supervisor has it."""
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.pid_path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock(fd, wait=0.5):
            os.close(fd)
            raise AlreadyRunning(f"a ray-ha supervisor for node {self.pid_path.stem!r} already runs here "
                                 f"(pid {_read_pid(self.pid_path)}); stop it first: ray-ha stop")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def update(self, state: Mapping[str, Any]) -> None:
        """Write the state when it changed, or at least every `heartbeat` s so readers see we are alive."""
        now = time.time()
        if state == self._last and now - self._written < self.heartbeat:
            return
        self._last, self._written = dict(state), now
        body = {"schema": SCHEMA, **self.static, **state, "pid": os.getpid(), "updated": now}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, sort_keys=True))
        os.replace(tmp, self.state_path)

    def close(self) -> None:
        """Remove both files; the lock goes with the descriptor."""
        for path in (self.state_path, self.pid_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class LocalSupervisor:
    """A supervisor as seen from outside: its node, pid, whether it still runs, and its last state."""

    node: str
    pid: Optional[int]
    running: bool
    state: Mapping[str, Any]

    def fresh(self) -> bool:
        """True if the state was written within one lease duration (a frozen loop goes stale)."""
        updated, lease = self.state.get("updated"), self.state.get("lease_duration")
        return bool(updated and lease and time.time() - float(updated) <= float(lease))


def local_supervisors(directory: Path, node: Optional[str] = None) -> list[LocalSupervisor]:
    """The supervisors with files in `directory` (only `node`'s if given), running or stale."""
    found = []
    for pid_path in sorted(directory.glob("*.pid")) if directory.is_dir() else []:
        if node is not None and pid_path.stem != node:
            continue
        try:
            state = json.loads(pid_path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            state = {}
        found.append(LocalSupervisor(node=pid_path.stem, pid=_read_pid(pid_path),
                                     running=_held(pid_path), state=state))
    return found


def _lock(fd: int, wait: float) -> bool:
    """Take an exclusive flock, retrying for `wait` s (a reader may be testing it for a moment)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _held(pid_path: Path) -> bool:
    """True if a live process holds the pid file's lock."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
