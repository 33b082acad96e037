"""Which process holds a node's lock, and whether it is a ray-ha supervisor this user may signal.

A supervisor holds a POSIX record lock on its pid file for its whole life. The kernel names the holder
of such a lock (F_GETLK) and drops the lock when the holder dies, so a pid is never taken from a file's
text. 0.2's supervisors held an flock, whose holder the kernel shows in /proc/locks. A holder is a
supervisor of ours when its uid is the pid file's owner, that owner is the caller (or the caller is
root), and its command line is ray-ha's. A signal goes through a pidfd opened while the holder was
proven, so a pid reused in between is never signalled.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
from dataclasses import dataclass
from typing import Callable, Optional

import psutil

#: struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (native alignment, padded).
_FLOCK = "hhqqi4x"


def take(fd: int) -> bool:
    """Take the exclusive lock on `fd`'s whole file without waiting; False if another process has it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def holder(fd: int) -> Optional[int]:
    """The pid the kernel says holds a lock on `fd`'s file: None if nobody, 0 if a process this pid
    namespace cannot see."""
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    return None if kind == fcntl.F_UNLCK else max(pid, 0)


def flock_holder(st: os.stat_result, locks: str = "/proc/locks") -> Optional[int]:
    """The pid /proc/locks names for an flock on the file `st` describes (0.2's lock), or None."""
    try:
        with open(locks) as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        words = line.split()
        if len(words) > 5 and words[1] == "FLOCK" and words[5] == inode and words[4].isdigit():
            return int(words[4]) or None
    return None


@dataclass(frozen=True)
class Holder:
    """A lock's holder as the kernel named it, and why it may not be signalled (None: it may)."""

    pid: int
    doubt: Optional[str] = None

    @property
    def proven(self) -> bool:
        return self.doubt is None


def judge(pid: int, file_uid: int, caller: Optional[int] = None) -> Holder:
    """Whether `pid`, the kernel's holder of a pid file owned by `file_uid`, is a ray-ha supervisor that
    the caller may signal."""
    caller = os.geteuid() if caller is None else caller
    if pid <= 0:
        return Holder(pid, "held by a process this machine's view cannot name")
    if file_uid != caller and caller != 0:
        return Holder(pid, f"its pid file belongs to uid {file_uid}, not to this user")
    try:
        proc = psutil.Process(pid)
        uids, cmdline = proc.uids(), proc.cmdline()
    except psutil.Error:
        return Holder(pid, "its process is gone or cannot be read")
    if uids.real != file_uid or uids.effective != file_uid:
        return Holder(pid, f"held by pid {pid} of uid {uids.real}, not the pid file's owner {file_uid}")
    if not is_ray_ha(cmdline):
        return Holder(pid, f"held by pid {pid}, which is not ray-ha ({' '.join(cmdline)[:80]!r})")
    return Holder(pid)


def is_ray_ha(cmdline: list[str]) -> bool:
    """True for ray-ha's own command lines: `python -m raylaunch ...`, or the `ray-ha` script run
    directly or by its interpreter."""
    for i, word in enumerate(cmdline):
        if word == "-m" and i + 1 < len(cmdline) and cmdline[i + 1].split(".")[0] == "raylaunch":
            return True
        if word.startswith("-mraylaunch") or (i < 2 and os.path.basename(word) == "ray-ha"):
            return True
    return False


def signal_holder(pid: int, sig: int, still_held_by: Callable[[int], bool]) -> Optional[int]:
    """Send `sig` to `pid` through a pidfd, once `still_held_by(pid)` confirms, after the pidfd is open,
    that the proven holder is this very process; the pidfd (to wait on), or None if it was not sent."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if not still_held_by(pid):
            raise ProcessLookupError(pid)
        signal.pidfd_send_signal(pidfd, sig)
    except OSError:
        os.close(pidfd)
        return None
    return pidfd


def wait_exit(pidfd: int, timeout: float) -> bool:
    """Wait until the process behind `pidfd` has exited (True), for at most `timeout` s."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))
