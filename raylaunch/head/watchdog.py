"""An independent watchdog that kills the head's tree when the launcher stops confirming its lease.

A frozen (SIGSTOP, a paused VM), starved or killed launcher cannot kill its own head, yet its lease
runs out and a standby starts another one. So each launcher keeps a tiny second process, in its own
session and imported with nothing but the standard library, that it tells over a pipe when its lease
was last confirmed:

    arm SID DEADLINE     the head runs in session SID (0: not started yet); kill the tree if
                             CLOCK_MONOTONIC passes DEADLINE before the next line
    disarm                   the launcher holds no lease and runs no head

When the deadline passes, or the pipe closes while armed (the launcher died), the watchdog SIGKILLs
every descendant of the launcher and every process in the head's session, then waits for the next
line. CLOCK_MONOTONIC is system-wide, so both processes read the same clock.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from raylaunch.head.steps import Snapshot

#: How long a sweep keeps killing processes that a dying tree may still spawn (s).
SWEEP_FOR = 5.0


# -- the watchdog process -------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """Watch the launcher whose pid is argv[1]; see the module docstring for the protocol."""
    launcher, pending = int(argv[1]), b""
    sid = 0
    deadline: Optional[float] = None  # armed while not None
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            fire(launcher, sid, "no lease renewal confirmed in time (launcher frozen or starved?)")
            deadline = None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([0], [], [], timeout)[0]:
            continue
        data = os.read(0, 4096)
        if not data:
            if deadline is not None:
                fire(launcher, sid, "the launcher died while leading")
            return 0
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            words = line.split()
            if words[:1] == [b"arm"] and len(words) == 3:
                sid, deadline = int(words[1]), float(words[2])
            elif words == [b"disarm"]:
                deadline = None


def fire(launcher: int, sid: int, why: str) -> None:
    """Kill the tree now and say so on stderr (the launcher's log)."""
    killed = sweep(launcher, sid)
    say(f"{why}; killed the head's processes: {' '.join(map(str, sorted(killed))) or 'none left'}")


def sweep(launcher: int, sid: int) -> set[int]:
    """SIGKILL the launcher's descendants and the head's session until none is left; the pids hit."""
    hit: set[int] = set()
    give_up = time.monotonic() + SWEEP_FOR
    while time.monotonic() < give_up:
        doomed = targets(launcher, sid, os.getpid())
        if not doomed:
            break
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
                hit.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    return hit


def targets(launcher: int, sid: int, me: int) -> set[int]:
    """Live (non-zombie) processes under `launcher` or in session `sid`, except `me` and the launcher."""
    table = dict(process_table())
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(children.get(launcher, []))
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    if sid > 0:
        found |= {pid for pid, (_, theirs, _) in table.items() if theirs == sid}
    return {pid for pid in found if table[pid][2] != "Z" and pid not in (me, launcher)}


def process_table() -> Iterable[tuple[int, tuple[int, int, str]]]:
    """(pid, (ppid, session id, state)) for every process, from /proc/PID/stat."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        yield int(name), (int(fields[1]), int(fields[3]), fields[0].decode())


def say(message: str) -> None:
    sys.stderr.write(f"ray-ha watchdog[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


# -- the launcher's side --------------------------------------------------------------------------

class Watchdog:
    """The launcher's handle on its watchdog process: a campaign watcher that arms and disarms it.

    Armed while we hold the lease, with a deadline halfway between the renew deadline and the lease's
    end, counted from the last confirmed renewal: after the launcher's own deadline kill had its
    chance, and well before a standby can take the lease.
    """

    def __init__(self, renew_deadline: float, lease_duration: float,
                 head_sid: Callable[[], Optional[int]]) -> None:
        self.fire_after = (renew_deadline + lease_duration) / 2
        self.head_sid = head_sid
        self._sent: Optional[bytes] = None
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-S", "-E", os.path.abspath(__file__), str(os.getpid())],
                                stdin=subprocess.PIPE, start_new_session=True)

    def pids(self) -> set[int]:
        """The watchdog's pid (and session): not part of the head's tree."""
        return {self.proc.pid}

    def __call__(self, snapshot: Snapshot) -> None:
        """Campaign watcher: re-arm after each confirmed renewal, disarm once we hold nothing."""
        confirmed = snapshot.lease_confirmed_at
        line = b"disarm\n" if confirmed is None else \
            f"arm {self.head_sid() or 0} {confirmed + self.fire_after:.6f}\n".encode()
        if line != self._sent:
            self._send(line)

    def _send(self, line: bytes) -> None:
        """Write one line; a watchdog that died is replaced (and told the same line) at once."""
        for _ in range(2):
            try:
                assert self.proc.stdin is not None  # always a pipe
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
                self._sent = line
                return
            except (BrokenPipeError, OSError, ValueError):
                self.proc.wait()
                logging.getLogger("ray-ha").error("the watchdog exited with code %s; starting a new one",
                                                  self.proc.returncode)
                _discard(self.proc.stdin)
                self.proc = self._spawn()
        raise RuntimeError("cannot talk to the watchdog")

    def close(self) -> None:
        """Disarm, close the pipe (the watchdog exits on EOF) and wait for it."""
        try:
            self._send(b"disarm\n")
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(5)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _discard(pipe: Optional[IO[bytes]]) -> None:
    """Close a pipe to a dead process, dropping what it still buffers (it would fail again on exit)."""
    try:
        if pipe is not None:
            pipe.close()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
