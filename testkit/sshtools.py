"""sshd, ssh, ssh-keygen and rsync for `ray up` on rig hosts: the machine's own where it has them, else
Debian's packages fetched without root (testkit.debian), so a fresh machine needs nothing installed by hand.

A fetched client program (ssh, ssh-keygen, rsync) is reached through a small script in `bin` that gives it
its libraries and runs it: put on PATH, on the admin host and in the hosts' login shell, it is found as an
installed one would be, and no other program (Ray's) sees the fetched libraries. Every host has a /tmp of
its own, so a fetched tree that lies under /tmp (the cache of a user without a home) is copied into the
working folder first, which the rig shows on every host at the same path.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from testkit.debian import cache_dir, library_path, unpacked

SSHD = "/usr/sbin/sshd"
#: What to fetch for each tool (a fresh Debian 12 lacks libwrap0 and libpopt0 too); the libraries the
#: machine lacks besides are added, as apt would install them.
PACKAGES = {"sshd": ("openssh-server", "libwrap0"), "ssh": ("openssh-client",), "rsync": ("rsync", "libpopt0")}
#: The programs each tool brings, as a hint names them.
PROGRAMS = {"sshd": f"sshd ({SSHD})", "ssh": "ssh and ssh-keygen", "rsync": "rsync"}


@dataclass(frozen=True)
class Sshd:
    """The sshd to run, by absolute path (it re-executes itself), and the environment it needs."""

    path: str
    env: dict[str, str] = field(default_factory=dict)


def missing() -> list[str]:
    """The tools (keys of PACKAGES) this machine lacks: no /usr/sbin/sshd, or not on PATH."""
    have = {"sshd": os.access(SSHD, os.X_OK), "ssh": bool(shutil.which("ssh") and shutil.which("ssh-keygen")),
            "rsync": bool(shutil.which("rsync"))}
    return [tool for tool, found in have.items() if not found]


def hint(tools: Sequence[str]) -> str:
    """What to install for `tools`, as one line."""
    return (f"`ray up` on the rig needs {', '.join(PROGRAMS[t] for t in tools)}: install them "
            f"(Debian: apt-get install {' '.join(PACKAGES[t][0] for t in tools)})")


class SshTools:
    """The machine's or fetched sshd, ssh, ssh-keygen and rsync (`fetched` names the fetched tools);
    scripts for the fetched client programs are in `bin`. Raises testkit.debian.Unavailable if a missing
    tool cannot be fetched."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.bin = self.dir / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.fetched = missing()
        self.sshd = self._fetched_sshd() if "sshd" in self.fetched else Sshd(SSHD)
        for tool, programs in (("ssh", ("ssh", "ssh-keygen")), ("rsync", ("rsync",))):
            if tool in self.fetched:
                self._scripts(tool, programs)

    def environ(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` with the fetched programs first on its PATH."""
        return {**env, "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', os.defpath)}"}

    def _fetched_sshd(self) -> Sshd:
        root = self._tree("sshd")
        return Sshd(str(root / "usr/sbin/sshd"), {"LD_LIBRARY_PATH": library_path(root)})

    def _scripts(self, tool: str, programs: Sequence[str]) -> None:
        """A script in `bin` for each of `programs` of `tool`'s fetched tree: its libraries, then it."""
        root = self._tree(tool)
        for name in programs:
            script = self.bin / name
            script.write_text(f"#!/bin/sh\nexport LD_LIBRARY_PATH={shlex.quote(library_path(root))}\n"
                              f"exec {shlex.quote(str(root / 'usr/bin' / name))} \"$@\"\n")
            script.chmod(0o755)

    def _tree(self, tool: str) -> Path:
        """`tool`'s fetched tree, where every host sees it (the hint names every tool missing here)."""
        name = PACKAGES[tool][0]
        wanted = PACKAGES[tool] if (cache_dir() / name).is_dir() else with_missing_libraries(PACKAGES[tool])
        root = unpacked(name, wanted, hint(self.fetched))
        if not str(root.resolve()).startswith("/tmp/"):
            return root
        copy = self.dir / "tree" / name
        if not copy.is_dir():
            shutil.copytree(root, copy, symlinks=True)
        return copy


def with_missing_libraries(packages: Sequence[str]) -> list[str]:
    """`packages` and those apt would newly install with them here (what this machine lacks of their
    dependencies); `packages` alone if apt cannot say."""
    try:
        sim = subprocess.run(["apt-get", "-s", "-q", "install", "--no-install-recommends", *packages],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return list(packages)
    new = re.findall(r"^Inst (\S+) \(", sim.stdout, re.MULTILINE) if sim.returncode == 0 else []
    return list(dict.fromkeys([*packages, *new]))
