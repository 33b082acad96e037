"""The bench's test bed: a fresh loopback Redis per round, real Ray heads, ray-ha launchers, a GCS poller.

Every head gets its own port, temp dir, one CPU, no dashboard and --node-ip-address=127.0.0.2, so
all traffic stays on loopback. Everything a round starts is killed when the round ends.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


from testkit.localredis import LocalRedis, free_port
from testkit.procs import kill_tree

ROOT = Path(__file__).resolve().parent.parent
FAKE_RAY = ROOT / "tests" / "fakeray"  # a `ray` whose head starts in milliseconds, for the scale test
RETRY = 0.5  # the launchers' retry period (s), unless --retry says otherwise
#: --renew and --retry of this run: the renew deadline (None: 0.6 × lease) and retry period (s).
OVERRIDES: dict[str, Optional[float]] = {"renew": None, "retry": None}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Poller:
    """The long-lived `bench/poller.py` process (Ray already imported)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "poller.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    def answered(self, address: str) -> float:
        """Block until the GCS at `address` answers; the monotonic time it did."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(address + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Round:
    """One round's Redis, processes and logs; `close()` kills all of it."""

    def __init__(self, poller: Poller, lease: float) -> None:
        self.poller, self.lease = poller, lease
        self.dir = Path(tempfile.mkdtemp(prefix="rhb-", dir="/tmp"))
        # 127.0.0.2 too, for ant-ray (it rewrites exactly 127.0.0.1); still loopback only.
        self.redis = LocalRedis(self.dir, extra_args=["--bind", "127.0.0.1", "127.0.0.2",
                                                      "--protected-mode", "no"]).start()
        self.procs: list[subprocess.Popen] = []
        # Ray settings of the caller's shell would skew the figures; a test's leak-guard tag is kept.
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_HA_TEST_TAG"},
                    "RAY_REDIS_ADDRESS": self.redis.address, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_HA_RUN_DIR": str(self.dir / "run"), "PYTHONPATH": str(ROOT)}

    def head_flags(self, name: str, port: int) -> list[str]:
        return ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                "--node-ip-address=127.0.0.2", f"--temp-dir={self.dir / name}", "--disable-usage-stats"]

    def timing(self) -> list[str]:
        return timing(self.lease)

    def plain_head(self, port: int) -> subprocess.Popen:
        """`ray start --head --block` on this round's Redis (GCS fault tolerance on, as for ray-ha)."""
        return self._spawn(["ray", "start", *self.head_flags("plain", port), "--block"], "plain")

    def passthrough_head(self, port: int) -> subprocess.Popen:
        """`ray-ha start --head --block` with HA off: ray-ha only execs `ray start`."""
        argv = [sys.executable, "-m", "raylaunch", "start", *self.head_flags("passthrough", port), "--block"]
        return self._spawn(argv, "passthrough")

    def launcher(self, name: str, port: int, *extra: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "raylaunch", "start", *self.head_flags(name, port), "--block",
                f"--ha-node-name={name}", *self.timing(), *extra]
        return self._spawn(argv, name, RAY_ENABLE_HEAD_HA="1")

    def follower(self, name: str) -> subprocess.Popen:
        """`ray-ha start --ha-follow --ha-relay=off --block`: a worker node (1 CPU) that joins whoever leads
        and is restarted against each new one (a relay on one machine would change nothing measured)."""
        argv = [sys.executable, "-m", "raylaunch", "start", "--ha-follow", "--ha-relay=off",
                f"--ha-node-name={name}", "--num-cpus=1",
                "--node-ip-address=127.0.0.2", "--disable-usage-stats", "--block", *self.timing()]
        return self._spawn(argv, name)

    def peer_head(self, name: str, port: int, env: dict[str, str]) -> subprocess.Popen:
        """`ray start --head --block` of the peer (ant-ray, from env's PATH) with its own Head HA."""
        return self._spawn(["ray", "start", *self.head_flags(name, port), "--block"], name, **env)

    def fake_launcher(self, name: str, env: dict[str, str]) -> subprocess.Popen:
        """A launcher whose `ray` is the fake (env puts it first on PATH)."""
        argv = [sys.executable, "-m", "raylaunch", "start", "--head", "--port=0", "--block",
                f"--temp-dir={self.dir / name}", f"--ha-node-name={name}", *self.timing()]
        return self._spawn(argv, name, RAY_ENABLE_HEAD_HA="1", RAY_HA_TEST_NODE=name, **env)

    def _spawn(self, argv: list[str], name: str, **env: str) -> subprocess.Popen:
        with open(self.dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, timeout: float = 120) -> None:
        deadline = now() + timeout
        while text not in self.log(name):
            if now() > deadline:
                raise RuntimeError(f"{name} never logged {text!r}:\n{self.log(name)[-2000:]}")
            time.sleep(0.02)

    def logged_at(self, name: str, text: str, after: float) -> Optional[float]:
        return logged_at(self.log(name), text, after)

    def answered(self, port: int) -> float:
        return self.poller.answered(f"127.0.0.2:{port}")

    def close(self) -> None:
        for proc in self.procs:
            kill_tree(proc.pid)
            proc.wait()
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def timing(lease: float) -> list[str]:
    """The launchers' timing flags for `lease`: renew deadline 0.6 x lease and retry period RETRY unless
    OVERRIDES say otherwise (15/10/2 s is Kubernetes' and REP-65's), Redis timeout at most 1 s."""
    renew = OVERRIDES["renew"] or lease * 0.6
    retry = OVERRIDES["retry"] or RETRY
    return [f"--ha-lease-duration={lease:g}", f"--ha-renew-deadline={renew:g}", f"--ha-retry-period={retry:g}",
            f"--ha-redis-timeout={min(1.0, (lease - renew) / 2):g}"]


def timing_text(lease: float) -> str:
    """`5/3/0.5 s`: lease, renew deadline and retry period of this run."""
    return "/".join(flag.split("=", 1)[1] for flag in timing(lease)[:3]) + " s"


def logged_at(log: str, text: str, after: float) -> Optional[float]:
    """Wall-clock time of the first line of `log` containing `text` stamped after `after`."""
    for line in log.splitlines():
        match = STAMP.match(line)
        if match and text in line:
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= after:
                return stamp
    return None


def ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]
