"""The real-Ray path on each Ray in a list, each in a venv of its own holding that Ray and ray-ha.

Per version, on this machine's loopback (each head a node IP of its own, 127.0.0.2 and 127.0.0.3, as on
two machines; Ray rewrites only 127.0.0.1): a Redis; two heads started the way `ray up` starts them (`ray-ha start --head` without --block: it must return once
Ray has said "Ray runtime started", or on its own bound, never hang); a detached actor through the
leader; the reconnect key of that Ray found in the running gcs_server's config; kill -9 of the leader's
supervisor and its whole tree; the actor answering through the new leader in the same session;
`ray-ha stop`, after which nothing of either head may be left.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import psutil

from raylaunch.config import Timing
from raylaunch.proc.raycmd import NEW_KEY, OLD_RETRIES_KEY, parse_version
from raylaunch.store.keys import Keys
from testkit.localredis import LocalRedis, free_port
from testkit.procs import kill_tree

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VERSIONS = ("2.9.3", "2.24.0", "2.40.0", "2.50.1", "2.60.0")
#: Each head's node IP, as if on machines of their own (a driver must find its head's raylet by it).
NODE_IPS = {"a": "127.0.0.2", "b": "127.0.0.3"}
TAG = "RAY_HA_COMPAT_TAG"
TIMING = Timing(lease_duration=5, renew_deadline=3, retry_period=0.5, redis_timeout=1)
TIMING_FLAGS = ["--ha-lease-duration=5", "--ha-renew-deadline=3", "--ha-retry-period=0.5", "--ha-redis-timeout=1"]
#: A non-block start must return well before ray-ha's own 180 s bound; longer means it waited on Ray's text.
START_BOUND = 120.0


@dataclass
class Result:
    version: str
    checks: dict[str, bool] = field(default_factory=dict)
    failover_s: Optional[float] = None
    start_s: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def venv_for(version: str, root: Path, log: Callable[[str], None]) -> Path:
    """A venv with ray==version and ray-ha (editable, from this checkout); made once, then reused."""
    venv = root / f"ray-{version}"
    ray = venv / "bin" / "ray"
    if not ray.exists() or version not in subprocess.run([str(ray), "--version"], capture_output=True,
                                                         text=True).stdout:
        log(f"ray {version}: making {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _pip(venv, f"ray=={version}")
    _pip(venv, "-e", str(ROOT))
    return venv


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *args], check=True)


class Machine:
    """One version's run: its Redis, its environment and every process it starts (tagged)."""

    def __init__(self, version: str, venv: Path, workdir: Path) -> None:
        self.version, self.venv, self.workdir = version, venv, workdir
        self.tag = uuid.uuid4().hex
        (workdir / "redis").mkdir(parents=True)
        self.redis = LocalRedis(workdir / "redis").start()
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**base, "PATH": f"{venv / 'bin'}{os.pathsep}{base.get('PATH', '')}", TAG: self.tag,
                    "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": self.redis.address,
                    "RAY_HA_RUN_DIR": str(workdir / "run"), "RAY_USAGE_STATS_ENABLED": "0"}

    def start_head(self, name: str) -> subprocess.CompletedProcess:
        args = ["--head", f"--port={free_port()}", "--num-cpus=1", "--include-dashboard=false",
                f"--node-ip-address={NODE_IPS[name]}", f"--temp-dir={self.workdir / name}", "--disable-usage-stats",
                f"--ha-node-name={name}", *TIMING_FLAGS]
        return self.ray_ha("start", *args, timeout=240)

    def ray_ha(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "ray-ha"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def drive(self, address: str, action: str) -> dict:
        out = subprocess.run([str(self.venv / "bin" / "python"), str(ROOT / "demo" / "actor_driver.py"), address,
                              action], env=self.env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"driver {action} failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def record(self) -> dict:
        return json.loads(self.redis.client().get(Keys("ray-ha:default:leader").record) or "{}")

    def state(self, node: str) -> dict:
        try:
            return json.loads((self.workdir / "run" / f"{node}.json").read_text())
        except (OSError, ValueError):
            return {}

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(TAG) == self.tag and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def close(self) -> None:
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.redis.stop()


def gcs_config(machine: Machine) -> dict:
    """The running gcs_server's effective config (its base64 --config_list argument)."""
    for proc in machine.processes():
        try:
            if proc.name() != "gcs_server":
                continue
            arg = next(a for a in proc.cmdline() if a.startswith("--config_list="))
        except (psutil.Error, StopIteration):
            continue
        return json.loads(base64.b64decode(arg.split("=", 1)[1]))
    return {}


def wait_for(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return None


def run_one(version: str, venv: Path, log: Callable[[str], None]) -> Result:
    """The whole path for one Ray; every check recorded, the first failure ends the run."""
    result = Result(version)
    workdir = Path(tempfile.mkdtemp(prefix="rha-c-", dir="/tmp"))  # Ray's socket paths are length-limited
    machine = Machine(version, venv, workdir)

    def check(name: str, ok: bool, why: str = "") -> None:
        """Record one check; a failed one, with `why`, ends this version's run."""
        result.checks[name] = bool(ok)
        log(f"ray {version}: {'ok  ' if ok else 'FAIL'} {name}{': ' + why if why and not ok else ''}")
        if not ok:
            result.notes.append(f"{name}: {why}" if why else name)
            raise _Stop()

    try:
        _path(machine, result, check)
    except _Stop:
        pass
    except Exception as exc:  # a failure of the run itself is a failure of the version, with its reason
        result.checks["ran"] = False
        result.notes.append(f"{type(exc).__name__}: {exc}")
        log(f"ray {version}: FAIL {type(exc).__name__}: {exc}")
    finally:
        machine.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


class _Stop(Exception):
    pass


def _path(m: Machine, result: Result, check: Callable[..., None]) -> None:
    t0 = time.monotonic()
    a = m.start_head("a")
    result.start_s = round(time.monotonic() - t0, 1)
    check("non-block start of the leader returns 0", a.returncode == 0 and "leading as a" in a.stdout,
          (a.stderr or a.stdout).strip()[-300:])
    check("it returned after Ray's own output", "Ray runtime started" in a.stdout and result.start_s < START_BOUND,
          f"{result.start_s}s")
    b = m.start_head("b")
    check("non-block start of a standby returns 0", b.returncode == 0 and "standing by; leader is a" in b.stdout,
          (b.stderr or b.stdout).strip()[-300:])
    before = m.drive(m.record()["gcs_address"], "create")
    check("a detached actor answers through the leader", before.get("value") == 1)

    config = gcs_config(m)
    key = NEW_KEY if parse_version(m.version) >= (1, 10) else OLD_RETRIES_KEY
    wanted = int(TIMING.effective_reconnect_timeout)
    check(f"gcs_server runs with {key}={wanted}", config.get(key) == wanted, f"found {config.get(key)!r}")

    supervisor = int(m.state("a").get("pid") or 0)
    killed_at = time.monotonic()
    kill_tree(supervisor)
    served = wait_for(lambda: m.record().get("epoch") == 2 and m.state("b").get("serving"), 120)
    result.failover_s = round(time.monotonic() - killed_at, 2) if served else None
    check("the standby serves after kill -9 of the leader", bool(served), "no leader of epoch 2 within 120 s")
    after = m.drive(m.record()["gcs_address"], "get")
    check("the actor answers through the new leader, same session",
          after.get("session") == before.get("session") and after.get("value", 0) >= 1, json.dumps(after))

    stop = m.ray_ha("stop", timeout=180)
    check("ray-ha stop returns 0", stop.returncode == 0, (stop.stderr or stop.stdout).strip()[-300:])
    left = wait_for(lambda: not m.processes(), 30)
    check("nothing is left", bool(left), ", ".join(f"{p.pid}" for p in m.processes()))


def render(results: list[Result], python: str) -> str:
    """docs/COMPAT.md's table."""
    lines = ["| Ray | result | non-block start (s) | failover (s) | notes |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.version} | {'pass' if r.ok else 'FAIL'} | {r.start_s if r.start_s is not None else '-'} | "
                     f"{r.failover_s if r.failover_s is not None else '-'} | {'; '.join(r.notes) or ''} |")
    return "\n".join(lines) + (f"\n\nRun on {time.strftime('%Y-%m-%d')}: Python {python}, lease "
                                f"{TIMING.lease_duration:g} s, {os.cpu_count()} cores.\n")


def run(versions: list[str], venv_root: Path, log: Callable[[str], None] = print) -> list[Result]:
    results = []
    for version in versions:
        venv = venv_for(version, venv_root, log)
        results.append(run_one(version, venv, log))
    return results


def write_doc(path: Path, table: str) -> None:
    """Put `table` between the markers in `path` (the text around it is written by hand)."""
    text = path.read_text() if path.exists() else f"{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{table}{END}{tail}")


START, END = "<!-- compat:table -->", "<!-- /compat:table -->"
