"""The bench's host layout: the crash-failover and follower scenarios with every part on its own rig host.

Redis on r1 (storage network only), head candidates on h1 and h2, a follow-mode worker on w1, and the
GCS poller on p1, which reaches the heads over the hosts' network as a client machine would. The crash
is kill -9 of every process on the leader's host. Times are CLOCK_MONOTONIC, one clock for every host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.rig import ROOT, now, timing
from bench.scenarios import JOINED, split
from testkit.hostray import GCS_PORT, HostLauncher, HostRedis, clean_env, head_args, worker_args
from testkit.hosts import Rig


class HostsRound:
    """One round's rig; `close()` kills everything on it and removes it."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.dir = Path(tempfile.mkdtemp(prefix="rhh-", dir="/tmp"))
        self.rig = Rig(self.dir)
        self.launchers: dict[str, HostLauncher] = {}
        try:
            redis_host = self.rig.add("r1", 2, storage=True, hosts=False)
            for name, number in (("h1", 11), ("h2", 12), ("w1", 21)):
                self.rig.add(name, number, storage=True)
            probe = self.rig.add("p1", 31)
            self.redis = HostRedis(redis_host, self.dir / "redis").start()
            self.poller = probe.popen([sys.executable, str(ROOT / "bench" / "poller.py")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env())
            if self.poller.proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("the poller on p1 did not start")
        except BaseException:
            self.close()
            raise

    def launcher(self, name: str, *extra: str) -> HostLauncher:
        host = self.rig.hosts[name]
        env = clean_env(RAY_ENABLE_HEAD_HA="1", RAY_REDIS_ADDRESS=self.redis.address)
        self.launchers[name] = HostLauncher(host, head_args(host, *timing(self.lease), *extra), env,
                                            self.dir / f"{name}.log")
        return self.launchers[name]

    def follower(self, name: str) -> HostLauncher:
        host = self.rig.hosts[name]
        self.launchers[name] = HostLauncher(host, worker_args(host, *timing(self.lease)),
                                            clean_env(RAY_REDIS_ADDRESS=self.redis.address), self.dir / f"{name}.log")
        return self.launchers[name]

    def answered(self, name: str) -> float:
        """Block until the GCS on host `name` answers a call from p1; the monotonic time it did."""
        stdin, stdout = self.poller.proc.stdin, self.poller.proc.stdout
        stdin.write(f"{self.rig.hosts[name].ip}:{GCS_PORT}\n".encode())
        stdin.flush()
        return float(stdout.readline())

    def close(self) -> None:
        self.rig.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _leader_and_standby(rnd: HostsRound) -> None:
    rnd.launcher("h1").wait_log("GCS serving", timeout=120)
    rnd.launcher("h2").wait_log("standing by", timeout=60)


def crash_failover_hosts(rnd: HostsRound) -> dict[str, float]:
    """kill -9 of everything on the leader's host -> the standby's GCS answers p1; in three parts."""
    _leader_and_standby(rnd)
    wall, killed = time.time(), now()
    rnd.rig.hosts["h1"].kill_all()
    serving = rnd.answered("h2") - killed
    return split(rnd.launchers["h2"].log(), wall, serving)


def follower_rejoin_hosts(rnd: HostsRound) -> float:
    """kill -9 of everything on the leader's host -> the worker on w1 has joined the new leader."""
    _leader_and_standby(rnd)
    worker = rnd.follower("w1")
    worker.wait_log(JOINED, timeout=120)
    killed = now()
    rnd.rig.hosts["h1"].kill_all()
    deadline = killed + 120
    while worker.log().count(JOINED) < 2:
        if now() > deadline:
            raise RuntimeError(f"w1 never re-joined:\n{worker.log()[-2000:]}")
        time.sleep(0.02)
    return now() - killed
