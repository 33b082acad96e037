"""This machine's supervisors, found without Redis: a locked pid file and a JSON state file per node.

`ray-ha stop`, `health` and `status` read them. A supervisor holds a lock on its pid file for its whole
life (local.holder), so a live supervisor is told from a stale file by the kernel, never by a pid in a
file, and a second supervisor for the same node on this machine is refused. The files live in a
checked private directory (local.rundir) and are reached only through it.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional

from raylaunch.config import ConfigError, Role, Timing
from raylaunch.local.holder import flock_holder, holder, judge, take
from raylaunch.local.rundir import LEGACY_RUN_DIR, RUN_DIR_ENV, PrivateDir, UnsafeDir, run_dir
from raylaunch.proc.net import tcp_accepts

#: Version of the state file's layout; bumped only on incompatible changes.
SCHEMA = 1
#: How long `ray-ha health` waits for the leader's GCS to accept a connection (s).
PROBE_TIMEOUT = 0.2


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
    priority: int = 1               # head mode: --ha-priority
    role: Role = Role.STARTING
    epoch: Optional[int] = None
    leader: Optional[str] = None
    gcs_address: Optional[str] = None
    serving: bool = False           # a leader whose GCS serves
    redis_refused: Optional[str] = None  # the permanent Redis refusal it is stuck on
    transitions: int = 0            # head mode: leader changes seen
    renew_failures: int = 0
    takeover_seconds: Optional[float] = None
    headless_seconds: Optional[float] = None  # the last takeover: the tenure before's end -> our GCS serving
    switchover_pending: bool = False  # leading: a switchover is asked for or scheduled
    waiting_old_gcs: bool = False
    paused: bool = False            # head mode: an operator's pause holds automatic takeovers back
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
    def from_json(cls, text: str) -> Optional[SupervisorState]:
        """The record in `text`; None if unreadable or of another schema. Unknown fields are ignored."""
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in data.items() if k in known}
            values["role"] = Role(values.get("role", Role.STARTING))  # a role this version does not know: unreadable
            state = cls(**values)
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
            return True, f"{self.role}, paused" if self.paused else self.role
        if self.role != Role.LEADER or not self.serving:
            return False, f"not the serving leader ({self.role})"
        address = self.gcs_address or ""
        if not probe(address):
            return False, f"leader, but its GCS at {address} does not accept connections"
        return True, f"leader, epoch {self.epoch}, GCS at {address}"


def gcs_probe(address: str) -> bool:
    """Whether a GCS accepts a TCP connection, within the probe's short timeout."""
    return tcp_accepts(address, timeout=PROBE_TIMEOUT)


class StateFile:
    """The supervisor's side: claim the node's pid file, then keep its state file current. The process
    that claimed never opens the pid file again: closing any descriptor of it would drop the lock."""

    def __init__(self, directory: Path, base: SupervisorState, heartbeat: float) -> None:
        self.directory, self.base, self.heartbeat = directory, base, heartbeat
        self.pid_name, self.state_name = f"{base.node}.pid", f"{base.node}.json"
        self._dir: Optional[PrivateDir] = None
        self._fd: Optional[int] = None
        self._last: Optional[SupervisorState] = None
        self._written = 0.0

    def claim(self) -> None:
        """Take the node's lock for this process's life; AlreadyRunning if another supervisor has it,
        UnsafeDir if the run dir is not private."""
        run = PrivateDir.open(self.directory, create=True)
        try:
            fd = self._lock(run)
        except BaseException:
            run.close()
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for people; readers ask the kernel
        self._dir, self._fd = run, fd

    def _lock(self, run: PrivateDir) -> int:
        """The locked pid file's descriptor; the file must still be the one named, not one unlinked by a
        supervisor that was just leaving."""
        while True:
            fd = run.open_file(self.pid_name, os.O_RDWR | os.O_CREAT, 0o644)
            if not take(fd):
                pid = holder(fd)
                os.close(fd)
                raise AlreadyRunning(f"a ray-ha supervisor for node {self.base.node!r} already runs here "
                                     f"(pid {pid}); stop it first: ray-ha stop")
            try:
                named = os.stat(self.pid_name, dir_fd=run.fd, follow_symlinks=False)
            except FileNotFoundError:
                named = None
            mine = os.fstat(fd)
            if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
            os.close(fd)

    def update(self, state: SupervisorState) -> None:
        """Write the state when it changed, or at least every `heartbeat` s so readers see we are alive."""
        now = time.time()
        if state == self._last and now - self._written < self.heartbeat:
            return
        self._last, self._written = state, now
        assert self._dir is not None, "update before claim"
        self._dir.write_text(self.state_name, replace(state, pid=os.getpid(), updated=now).to_json())

    def close(self) -> None:
        """Remove both files, then let go of the lock (in that order: nobody locks a file we remove)."""
        if self._dir is not None:
            for name in (self.state_name, self.pid_name):
                self._dir.unlink(name)
            self._dir.close()
            self._dir = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class LocalSupervisor:
    """A supervisor as seen from outside: its node, the pid the kernel says holds its lock, whether that
    holder is proven to be a ray-ha supervisor of ours (running), and its last state."""

    node: str
    pid: Optional[int]  # the lock's holder, None when nobody holds it
    running: bool
    state: Optional[SupervisorState]  # None until its first write, or if unreadable
    directory: Path = Path()
    doubt: Optional[str] = None  # why a held lock's holder is not taken for a supervisor of ours

    def fresh(self) -> bool:
        """True if the state was written within one lease duration (a frozen loop goes stale)."""
        return self.state is not None and self.state.fresh(time.time())


def local_supervisors(directory: Path, node: Optional[str] = None) -> list[LocalSupervisor]:
    """The supervisors with files in `directory` (only `node`'s if given), running or stale; UnsafeDir
    if the directory is not private."""
    try:
        run = PrivateDir.open(directory)
    except FileNotFoundError:
        return []
    with run:
        return [inspect(run, name[:-len(".pid")]) for name in run.names(".pid")
                if node is None or name == f"{node}.pid"]


def inspect(run: PrivateDir, node: str) -> LocalSupervisor:
    """One node's files: who holds its lock (the kernel's answer, then proven), and its state."""
    state = SupervisorState.from_json(run.read_text(f"{node}.json") or "")
    try:
        fd = run.open_file(f"{node}.pid", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return LocalSupervisor(node, None, False, state, run.path)
    try:
        st = os.fstat(fd)
        pid = holder(fd) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)
    pid = flock_holder(st) if pid is None else pid  # a supervisor of 0.2
    if pid is None:
        return LocalSupervisor(node, None, False, state, run.path)
    verdict = judge(pid, st.st_uid)
    return LocalSupervisor(node, pid, verdict.proven, state, run.path, verdict.doubt)


@dataclass(frozen=True)
class Found:
    """This machine's supervisors, and notes on places that were not searched (and why)."""

    supervisors: list[LocalSupervisor]
    notes: list[str]


def machine_supervisors(env: Mapping[str, str], node: Optional[str] = None) -> Found:
    """The supervisors in the run dir, and for one release in 0.2's shared /tmp/ray-ha too (under the
    same checks), so that those started before an upgrade can still be found and stopped."""
    primary = run_dir(env)
    found = Found(local_supervisors(primary, node), [])
    if env.get(RUN_DIR_ENV, "").strip() or primary == LEGACY_RUN_DIR or not LEGACY_RUN_DIR.exists():
        return found
    try:
        found.supervisors.extend(local_supervisors(LEGACY_RUN_DIR, node))
    except UnsafeDir as exc:
        found.notes.append(f"not looking for 0.2's supervisors: {exc}")
    return found
