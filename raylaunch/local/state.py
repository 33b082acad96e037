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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Mapping, Optional

from raylaunch.config import ConfigError, Timing
from raylaunch.proc.net import tcp_accepts

RUN_DIR_ENV = "RAY_HA_RUN_DIR"
DEFAULT_RUN_DIR = "/tmp/ray-ha"
#: Version of the state file's layout; bumped only on incompatible changes.
SCHEMA = 1
#: How long `ray-ha health` waits for the leader's GCS to accept a connection (s).
PROBE_TIMEOUT = 0.2


def run_dir(env: Mapping[str, str]) -> Path:
    """Where this machine's supervisors keep their pid and state files."""
    return Path(env.get(RUN_DIR_ENV, "").strip() or DEFAULT_RUN_DIR)


class AlreadyRunning(ConfigError):
    """Another supervisor for the same node runs on this machine."""


@dataclass(frozen=True)
class SupervisorState:
    """What a supervisor says about itself in its state file; read by status, health, stop, the HTTP
    endpoint and a detached start. The first block is fixed at start; the rest changes as it runs."""

    node: str
    key: str = ""
    redis: str = ""
    lease_duration: float = Timing.lease_duration
    retry_period: float = Timing.retry_period
    stop_grace: float = Timing.stop_grace
    started: float = 0.0
    http: Optional[str] = None      # host:port of the HTTP endpoint, if any
    role: str = "starting"          # a campaign's Role value, or "follower"
    epoch: Optional[int] = None
    leader: Optional[str] = None
    gcs_address: Optional[str] = None
    serving: bool = False           # a leader whose GCS serves
    redis_refused: Optional[str] = None  # the permanent Redis refusal it is stuck on
    transitions: int = 0            # head mode: leader changes seen
    renew_failures: int = 0
    takeover_seconds: Optional[float] = None
    waiting_old_gcs: bool = False
    step: Optional[str] = None      # follow mode: the last FollowStep
    joined: bool = False
    restarts: int = 0
    relay: Optional[str] = None     # follow mode: the relay's address, which the worker dials
    pid: Optional[int] = None       # set by StateFile on every write
    updated: Optional[float] = None
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Optional["SupervisorState"]:
        """The record in `text`; None if unreadable or of another schema. Unknown fields are ignored."""
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            state = cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError):
            return None
        return state if state.schema == SCHEMA else None

    def fresh(self, now: float) -> bool:
        """True if written within one lease duration: a frozen loop goes stale."""
        return self.updated is not None and now - self.updated <= self.lease_duration

    def health(self, role: str, probe: Callable[[str], bool] = tcp_accepts) -> tuple[bool, str]:
        """The one definition of healthy, for `ray-ha health` and the HTTP endpoint (freshness aside).

        `any`: Redis does not refuse it. `leader`: also leads, serves, and its GCS accepts connections.
        """
        if self.redis_refused:
            return False, f"{self.role}, stuck: Redis refuses it: {self.redis_refused}"
        if role == "any":
            return True, self.role
        if self.role != "leader" or not self.serving:
            return False, f"not the serving leader ({self.role})"
        address = self.gcs_address or ""
        if not probe(address):
            return False, f"leader, but its GCS at {address} does not accept connections"
        return True, f"leader, epoch {self.epoch}, GCS at {address}"


def gcs_probe(address: str) -> bool:
    """Whether a GCS accepts a TCP connection, within the probe's short timeout."""
    return tcp_accepts(address, timeout=PROBE_TIMEOUT)


class StateFile:
    """The supervisor's side: claim the node's pid file, then keep its state file current."""

    def __init__(self, directory: Path, base: SupervisorState, heartbeat: float) -> None:
        self.pid_path, self.state_path = directory / f"{base.node}.pid", directory / f"{base.node}.json"
        self.base, self.heartbeat = base, heartbeat
        self._fd: Optional[int] = None
        self._last: Optional[SupervisorState] = None
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

    def update(self, state: SupervisorState) -> None:
        """Write the state when it changed, or at least every `heartbeat` s so readers see we are alive."""
        now = time.time()
        if state == self._last and now - self._written < self.heartbeat:
            return
        self._last, self._written = state, now
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(replace(state, pid=os.getpid(), updated=now).to_json())
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
    state: Optional[SupervisorState]  # None until its first write, or if unreadable

    def fresh(self) -> bool:
        """True if the state was written within one lease duration (a frozen loop goes stale)."""
        return self.state is not None and self.state.fresh(time.time())


def local_supervisors(directory: Path, node: Optional[str] = None) -> list[LocalSupervisor]:
    """The supervisors with files in `directory` (only `node`'s if given), running or stale."""
    found = []
    for pid_path in sorted(directory.glob("*.pid")) if directory.is_dir() else []:
        if node is not None and pid_path.stem != node:
            continue
        try:
            state = SupervisorState.from_json(pid_path.with_suffix(".json").read_text())
        except OSError:
            state = None
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
