"""Private directories in shared places: the run dir (pid and state files) and the log dir.

The default run dir is per user: /run/ray-ha for root where /run is writable, else /tmp/ray-ha-<uid>;
$RAY_HA_RUN_DIR overrides it. A run dir is checked the way ssh's StrictModes checks a home before any
use: not a symlink, owned by the caller or root, not writable by group or others, and every directory
above it owned by root or the caller and not writable by others unless sticky (as /tmp is). The log
dir (`<ray temp dir>/ray-ha`, under Ray's world-writable temp dir) is checked itself, not above.
Files are opened relative to the checked directory's descriptor with O_NOFOLLOW, so a link planted
in it is never followed, and a directory swapped in after the check is never used.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from raylaunch.config import ConfigError

RUN_DIR_ENV = "RAY_HA_RUN_DIR"
#: The default of 0.2, shared by every user: `stop` and `status` still look there, under the same checks.
LEGACY_RUN_DIR = Path("/tmp/ray-ha")  # noqa: S108  (only read, under checked_dir's checks)
#: What to do about an unsafe run dir.
RUN_DIR_FIX = f"Remove it, or make it yours (mode 0700), or set {RUN_DIR_ENV} to a directory of your own"
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDir(ConfigError):
    """A directory another user could write to or plant in: refused with what to fix (exit 2)."""


def run_dir(env: Mapping[str, str], euid: Optional[int] = None, run: Path = Path("/run")) -> Path:
    """Where this machine's supervisors keep their files: $RAY_HA_RUN_DIR, else the user's default."""
    explicit = env.get(RUN_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit)
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and run.is_dir() and os.access(run, os.W_OK, effective_ids=True):
        return run / "ray-ha"
    return Path(f"/tmp/ray-ha-{euid}")  # noqa: S108  (made 0700 and checked before any use)


class PrivateDir:
    """A checked directory held open: files in it are reached only through its descriptor."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def open(cls, path: Path, create: bool = False, above: bool = True, fix: str = RUN_DIR_FIX) -> PrivateDir:
        """Open `path` (made mode 0700 if `create`) once it passes the checks; UnsafeDir, saying `fix`,
        if it does not; FileNotFoundError if it is missing and not to be made. `above`: check the
        directories above it too."""
        if create:
            _make(path)
        try:
            fd = os.open(path, _OPEN_DIR)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeDir(_advice(path, "is a symlink or not a directory", fix)) from None
            raise
        problem = owner_problem(os.fstat(fd)) or (above_problem(path) if above else None)
        if problem:
            os.close(fd)
            raise UnsafeDir(_advice(path, problem, fix))
        return cls(path, fd)

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """A descriptor for `name` in this directory, never through a symlink."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def read_text(self, name: str) -> Optional[str]:
        """The text of regular file `name`, or None if it is missing or not a regular file."""
        try:
            fd = self.open_file(name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return file.read(1 << 20).decode(errors="replace")

    def write_text(self, name: str, text: str) -> None:
        """Replace `name` atomically: write a new temp file (O_EXCL), then rename it over `name`."""
        tmp = f"{name}.tmp"
        self.unlink(tmp)
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove `name` if it is there (a symlink is removed, never followed)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def names(self, suffix: str) -> list[str]:
        """The names in this directory that end in `suffix`, sorted."""
        return sorted(name for name in os.listdir(self.fd) if name.endswith(suffix))

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def owner_problem(st: os.stat_result, euid: Optional[int] = None) -> Optional[str]:
    """Why a directory with this status is not private to the caller (or root), or None."""
    euid = os.geteuid() if euid is None else euid
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (euid, 0):
        return f"is owned by uid {st.st_uid}, not by this user ({euid}) or root"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def above_problem(path: Path, euid: Optional[int] = None) -> Optional[str]:
    """Why a directory above `path` would let another user swap it, or None: each must be owned by
    root or the caller (in a user namespace, an unmapped owner counts as root) and be writable by
    nobody else unless sticky."""
    euid = os.geteuid() if euid is None else euid
    trusted = {0, euid} | ({_overflow_uid()} if _in_user_namespace() else set())
    parent = Path(os.path.realpath(path.parent))
    for above in (parent, *parent.parents):
        st = os.stat(above)
        if st.st_uid not in trusted:
            return f"lies in {above}, owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"lies in {above}, writable by group or others without the sticky bit"
    return None


def _make(path: Path) -> None:
    """Make `path` mode 0700 unless it exists (what exists is checked after); parents it needs are made
    writable by their owner only, whatever the umask."""
    umask = os.umask(0o022)
    os.umask(umask | 0o022)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    finally:
        os.umask(umask)


def _advice(path: Path, problem: str, fix: str) -> str:
    return f"unsafe directory {path}: it {problem}; another user could plant files there. {fix}"


def _in_user_namespace() -> bool:
    """True inside a user namespace other than the machine's (its uid map is not the identity)."""
    try:
        with open("/proc/self/uid_map") as uid_map:
            return uid_map.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _overflow_uid() -> int:
    """The uid the kernel shows for owners unmapped in this user namespace (usually 65534)."""
    try:
        with open("/proc/sys/kernel/overflowuid") as overflow:
            return int(overflow.read())
    except (OSError, ValueError):
        return 65534
