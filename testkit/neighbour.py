"""A machine of its own for playing another local user against ray-ha: a mount namespace with a private
/tmp and /run, so a test can use the real default places (/tmp/ray-ha, /run/ray-ha) and leave the
machine's alone.

As root, ray-ha runs as root and the neighbour is `nobody` (setpriv): two real uids.
Without root one user cannot be two, so ray-ha runs as the root of a user namespace, where the kernel
shows every file of another uid as owned by the overflow uid (nobody): the neighbour's directories are
then the machine's own directories of other users (root's sticky /var/tmp, root's /etc), and what the
neighbour plants in them the test user plants.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from testkit.hosts import _INIT, RigUnavailable, _start_init, _tmp_paths
from testkit.procs import kill_tree

NOBODY = 65534
ROOT = Path(__file__).resolve().parent.parent


class Neighbourhood:
    """The namespace's PID 1 and how to run a program in it as ray-ha's user or as the neighbour."""

    def __init__(self, workdir: Path) -> None:
        self.as_root = os.geteuid() == 0
        tmp, run = workdir / "machine" / "tmp", workdir / "machine" / "run"
        tmp.mkdir(parents=True)
        run.mkdir()
        tmp.chmod(0o1777)  # like /tmp: the neighbour may make its own entries there
        keep = _tmp_paths([workdir, Path(sys.prefix), Path(sys.base_prefix), ROOT])
        user = [] if self.as_root else ["--user", "--map-root-user"]
        self._unshare, self.init_pid = _start_init(
            ["unshare", *user, "--mount", "--propagation", "private", "--fork", "--kill-child", sys.executable, "-c", _INIT, "", str(tmp),
             *keep], "a machine of its own (a mount namespace)")

    def command(self, argv: Sequence[str], neighbour: bool = False) -> list[str]:
        """`argv` run inside, as ray-ha's user or (as root) as nobody."""
        enter = ["nsenter", "-t", str(self.init_pid), "-m", *([] if self.as_root else ["-U", "--preserve-credentials"])]
        become = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return [*enter, *(become if neighbour and self.as_root else []), *argv]

    def run(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, neighbour: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv, neighbour), env=env, capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, neighbour: bool = False,
              **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv, neighbour), env=env, **kw)

    def sh(self, script: str, neighbour: bool = False) -> str:
        """Run a shell script inside; its stdout, or an AssertionError with its stderr."""
        done = self.run(["sh", "-ec", script], neighbour=neighbour)
        assert done.returncode == 0, f"{script!r}: {done.stderr}"
        return done.stdout

    def path(self, inner: str) -> Path:
        """Where the test sees the namespace's `inner` path from outside."""
        return Path(f"/proc/{self.init_pid}/root{inner}")

    def neighbour_sticky_dir(self) -> str:
        """A sticky, world-writable directory another user owns, as ray-ha sees it."""
        if self.as_root:
            self.sh("mkdir -m 1777 /tmp/shared", neighbour=True)
            return "/tmp/shared"
        return _other_users("/var/tmp")

    def neighbour_private_dir(self) -> str:
        """A directory only another user may write to, as ray-ha sees it."""
        if self.as_root:
            self.sh("mkdir -m 700 /tmp/private", neighbour=True)
            return "/tmp/private"
        return _other_users("/etc")

    def close(self) -> None:
        kill_tree(self._unshare.pid)
        self._unshare.wait(10)


def _other_users(path: str) -> str:
    """`path`, which must belong to a uid other than ours (root's, seen as nobody in the namespace)."""
    if not os.path.isdir(path) or os.stat(path).st_uid == os.geteuid():
        raise RigUnavailable(f"no directory of another user at {path} to play the neighbour's")
    return path


def need_tools() -> None:
    """The tools the neighbourhood runs; RigUnavailable naming the first one missing."""
    for tool in ("unshare", "nsenter", "setpriv", "flock"):
        if shutil.which(tool) is None:
            raise RigUnavailable(f"`{tool}` is not on PATH (util-linux)")
