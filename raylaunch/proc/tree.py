"""Runs one child process tree and stops all of it. Knows nothing of Redis or leases.

The launcher becomes a child subreaper, so processes that detach from the tree (double forks,
Ray's agents orphaned when `ray start` exits) are re-parented to it and stay findable. Stopping is
always: SIGTERM to the process that knows how to wind the tree down (the drain process, else the
top), a bounded wait for it, then SIGKILL to every descendant until none is left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Callable, Optional

import psutil

PR_SET_CHILD_SUBREAPER = 36
POLL = 0.05


def become_subreaper() -> bool:
    """Ask Linux to re-parent this process's orphaned descendants to it (False where unsupported)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def kill_session(sid: int) -> None:
    """SIGKILL the session (process group) a child of ours leads; it may have ended already. Only for a
    child not yet reaped, so the id is still ours."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def is_alive(proc: psutil.Process) -> bool:
    """True while `proc` (the same process, not a reused pid) runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessTree:
    """A child started in its own session, plus everything it spawns, watched and stopped as one.

    `watch_name` names the process whose death means the tree has failed; `drain_name` the one a
    graceful stop sends SIGTERM to and waits for (the top when there is none). `spare` returns the
    pids of other children of the launcher (hooks, each leading its own session) that are not part of
    the tree: they and their sessions are never signalled or reaped by it.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], watch_name: str,
                 drain_name: Optional[str] = None, spare: Callable[[], Collection[int]] = frozenset) -> None:
        self.argv, self.env = list(argv), dict(env)
        self.watch_name, self.drain_name, self.spare = watch_name, drain_name, spare
        self.popen: Optional[subprocess.Popen[bytes]] = None
        self._watched: Optional[psutil.Process] = None
        self._draining: Optional[psutil.Process] = None
        self._me = psutil.Process()

    def start(self, adopt: Optional[subprocess.Popen[bytes]] = None) -> None:
        """Start the top process in its own session so a terminal's Ctrl-C reaches only the launcher.

        `adopt`: a child of ours already running in its own session (a pre-warmed interpreter told to
        become this command) is taken as the top instead.
        """
        self.popen = adopt or subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                               start_new_session=True)

    def failure(self) -> Optional[str]:
        """Why the tree is no longer whole (top exited, watched process died), or None while it is."""
        self._reap_orphans()
        if self._watched is not None and self.watched() is None:  # the root cause comes first
            return f"{self.watch_name} (pid {self._watched.pid}) died"
        code = self.popen.poll() if self.popen else None
        if code is not None:
            return f"{os.path.basename(self.argv[0])} exited with code {code}"
        self.watched()
        return None

    def watched(self) -> Optional[psutil.Process]:
        """The process named `watch_name` once it has appeared and while it lives."""
        if self._watched is None:
            self._watched = next((p for p in self.members() if _named(p, self.watch_name)), None)
        return self._watched if self._watched is not None and is_alive(self._watched) else None

    def members(self) -> list[psutil.Process]:
        """Every living descendant of the launcher: the tree plus the orphans it re-parented to us."""
        spare = set(self.spare())
        try:
            return [p for p in self._me.children(recursive=True) if is_alive(p) and _session(p) not in spare]
        except psutil.Error:
            return []

    def terminate(self) -> None:
        """Begin a graceful stop: SIGTERM to the drain process if it runs, else to the top."""
        drain = next((p for p in self.members() if self.drain_name and _named(p, self.drain_name)), None)
        if drain is None and self.popen is not None and self.popen.poll() is None:
            drain = psutil.Process(self.popen.pid)
        self._draining = drain
        if drain is not None:
            _signal(drain, signal.SIGTERM)

    def drained(self) -> bool:
        """True once the process a graceful stop waits for has exited."""
        return self._draining is None or not is_alive(self._draining)

    def top_exited(self) -> bool:
        """True once the top process has exited (or never started)."""
        return self.popen is None or self.popen.poll() is not None

    def kill(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every descendant until none is left; returns pids that survived `timeout` (should be none)."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.members()
            if not members and self.top_exited():
                return []
            if time.monotonic() >= deadline:
                return [p.pid for p in members]
            for proc in members:
                _signal(proc, signal.SIGKILL)
            time.sleep(POLL)
            self._reap_orphans()

    def stop(self, grace: float) -> list[int]:
        """Graceful stop for up to `grace` s (see terminate), then SIGKILL whatever is left."""
        self.terminate()
        deadline = time.monotonic() + grace
        while not self.drained() and time.monotonic() < deadline:
            time.sleep(POLL)
        return self.kill()

    def _reap_orphans(self) -> None:
        """Collect exited children: Popen's own for the top, waitpid for re-parented orphans.

        waitid(WNOWAIT) asks the kernel which child has exited without reaping it, one syscall
        instead of a scan of /proc on every tick.
        """
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in self.spare():
                return  # a spare child is reaped by its owner
            if self.popen is not None and info.si_pid == self.popen.pid:
                self.popen.poll()
            else:
                try:
                    os.waitpid(info.si_pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def _named(proc: psutil.Process, name: str) -> bool:
    """True if the process's name or its executable's file name is `name`."""
    try:
        argv0 = (proc.cmdline() or [""])[0]
        return proc.name() == name or os.path.basename(argv0) == name
    except psutil.Error:
        return False


def _session(proc: psutil.Process) -> int:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return -1


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass
