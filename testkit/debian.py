"""Programs from Debian's packages for the tests, without root: `apt-get download` (which needs no root)
and `dpkg-deb -x` into a per-user cache, once; libraries that came along are found through
LD_LIBRARY_PATH. What a fresh machine lacks (Redis 7, sshd, rsync, zsh, fish) comes this way, so the
README's test command needs nothing installed by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

CACHE_VAR = "XDG_CACHE_HOME"
LIB_DIR = "usr/lib/x86_64-linux-gnu"


class Unavailable(RuntimeError):
    """The packages cannot be fetched here (no apt-get, or the download failed); says what to install."""


def cache_dir() -> Path:
    """The tests' cache of unpacked packages; a user without a home (nobody) gets a folder of its own in
    /tmp, refused if another user made it first."""
    base = Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache") / "ray-ha-tests"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        pass
    mine = Path(f"/tmp/ray-ha-tests-{os.getuid()}")
    mine.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(mine)
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or not mine.is_dir() or mine.is_symlink():
        raise Unavailable(f"{mine} is not this user's own folder; remove it or set {CACHE_VAR}")
    return mine


def unpacked(name: str, packages: Sequence[str], hint: str) -> Path:
    """The root of `packages` unpacked (cached under `name`); `hint` says how else to get them."""
    root = cache_dir() / name
    if not root.is_dir():
        _fetch(root, packages, hint)
    return root


def library_path(root: Path) -> str:
    """LD_LIBRARY_PATH for binaries under `root`: its own libraries first, then the caller's."""
    paths = [str(root / LIB_DIR), str(root / "lib/x86_64-linux-gnu")]
    if os.environ.get("LD_LIBRARY_PATH"):
        paths.append(os.environ["LD_LIBRARY_PATH"])
    return os.pathsep.join(paths)


def _fetch(root: Path, packages: Sequence[str], hint: str) -> None:
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise Unavailable(f"{hint}, or run on a Debian-like machine where `apt-get download` works")
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        got = subprocess.run(["apt-get", "download", *packages], cwd=tmp, capture_output=True, text=True,
                             timeout=300)
        if got.returncode != 0:
            raise Unavailable(f"apt-get download {' '.join(packages)} failed ({got.stderr.strip()}); {hint}")
        tree = Path(tmp) / "root"
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=120)
        try:
            os.replace(tree, root)  # whole or not at all, if two runs race
        except OSError:
            if not root.is_dir():
                raise
