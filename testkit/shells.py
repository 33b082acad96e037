"""Real shells for the completion tests, tmux for `status --watch`, and a pseudo-terminal to type into one.

zsh, fish and tmux come from Debian's packages, and bash-completion (the loader of bash's vendor
completions) too, unpacked without root into the tests' cache (testkit.debian) and run from there as if installed:
a fresh machine has none of them. Each function raises testkit.debian.Unavailable, saying what to
install, where that cannot be done.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from testkit.debian import library_path, unpacked


@dataclass(frozen=True)
class Shell:
    """A shell unpacked from Debian's packages: its binary, the packages' root, what it needs in its env."""

    path: Path
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def version(self) -> str:
        """Its `--version` line, for reports."""
        out = subprocess.run([str(self.path), "--version"], env={**os.environ, **self.env}, capture_output=True,
                             text=True, timeout=30)
        return next(iter((out.stdout or out.stderr).strip().splitlines()), f"{self.path}: no version")


def zsh() -> Shell:
    """zsh 5.9 with its functions (zsh-common); an rc file must point fpath and module_path into `root`."""
    root = unpacked("zsh", ("zsh", "zsh-common"), "zsh is needed: apt-get install zsh")
    return Shell(root / "bin" / "zsh", root, {"LD_LIBRARY_PATH": library_path(root)})


def fish() -> Shell:
    """fish 3.6, which finds its data (share/fish) beside its binary once usr/etc/fish exists too."""
    root = unpacked("fish", ("fish", "fish-common", "libpcre2-32-0"), "fish is needed: apt-get install fish")
    try:  # fish takes <prefix>/share/fish only if <prefix>/etc/fish exists; Debian's is /etc/fish
        (root / "usr" / "etc").symlink_to("../etc")
    except FileExistsError:
        pass
    return Shell(root / "usr" / "bin" / "fish", root, {"LD_LIBRARY_PATH": library_path(root)})


def tmux() -> Shell:
    """tmux 3.3 (a real terminal multiplexer: type into a pane, capture what it shows), with its libraries."""
    root = unpacked("tmux", ("tmux", "libevent-core-2.1-7", "libutempter0"), "tmux is needed: apt-get install tmux")
    return Shell(root / "usr" / "bin" / "tmux", root, {"LD_LIBRARY_PATH": library_path(root)})


def bash_completion() -> Path:
    """bash-completion's script (a user's ~/.bashrc sources it) from Debian's package."""
    root = unpacked("bash-completion", ("bash-completion",),
                    "bash-completion is needed: apt-get install bash-completion")
    return root / "usr" / "share" / "bash-completion" / "bash_completion"


class Pty:
    """A program on a pseudo-terminal of its own session: type into it, read what the terminal shows."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Optional[Path] = None, rows: int = 100,
                 cols: int = 200) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a big window, so that no listing asks before showing all
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(argv[0], argv, env)
            except BaseException as exc:  # never go on as a second copy of the caller
                os.write(2, f"cannot start {argv[0]}: {exc}\n".encode())
            finally:
                os._exit(127)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, done: Callable[[str], bool], timeout: float = 20) -> str:
        """What the terminal showed since the last call, once `done` of it holds or `timeout` s passed."""
        out, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline and not done(out):
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    out += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the program ended
                    break
        return out

    def close(self) -> None:
        """SIGKILL to the program's whole process group (it leads its session), then reap it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)
