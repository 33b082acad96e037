"""Real Ray 2.60 across hosts: Redis on its own host, two head candidates, a follow-mode worker, a driver.

Every host is a rig host (tests/hosts/test_rig.py): its own network, host name, PIDs and /tmp. The heads
reach Redis over the storage network, the worker and the driver reach the heads over the hosts' network,
and faults are real: kill -9 of a whole host, its links down, its storage link down, Redis restarted.
Whether two heads ever ran at once is judged by the life of the gcs_server processes, never by logs.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_for
from testkit.hostray import (GCS_PORT, HostLauncher, HostRedis, ProcessWatch, clean_env, drive, head_args,
                             worker_args)
from testkit.hosts import Host, Rig
from testkit.published import strays

pytestmark = [pytest.mark.ray, pytest.mark.hosts]

TIMING = ["--ha-lease-duration=5", "--ha-renew-deadline=3", "--ha-retry-period=0.5", "--ha-redis-timeout=1"]
LEASE = 5.0


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


def start_head(rig: Rig, redis: HostRedis, name: str, tmp_path) -> HostLauncher:
    env = clean_env(RAY_ENABLE_HEAD_HA="1", RAY_REDIS_ADDRESS=redis.address)
    return HostLauncher(rig.hosts[name], head_args(rig.hosts[name], *TIMING), env, tmp_path / f"{name}.log",
                        restart=True)


@pytest.fixture
def cluster(rig: Rig, tmp_path) -> Cluster:
    if shutil.which("ray") is None:
        pytest.fail("real Ray is needed: pip install 'ray[client]==2.60.0'")
    redis_host = rig.add("r1", 2, storage=True, hosts=False)
    for name, number in (("h1", 11), ("h2", 12), ("w1", 21)):
        rig.add(name, number, storage=True)
    driver = rig.add("d1", 31)
    redis = HostRedis(redis_host, tmp_path / "redis").start()
    watch = ProcessWatch([rig.hosts["h1"], rig.hosts["h2"]])
    h1 = start_head(rig, redis, "h1", tmp_path)
    h1.wait_log("GCS serving", timeout=120)
    h2 = start_head(rig, redis, "h2", tmp_path)
    h2.wait_log("standing by; leader is h1", timeout=60)
    worker = HostLauncher(rig.hosts["w1"], worker_args(rig.hosts["w1"], *TIMING),
                          clean_env(RAY_REDIS_ADDRESS=redis.address), tmp_path / "w1.log")
    worker.wait_log("joining leader h1 (epoch 1)", timeout=60)
    yield Cluster(rig, redis, {"h1": h1, "h2": h2}, worker, driver, watch)
    watch.close()
    published = redis.published()
    assert published and not strays(published), f"GCS addresses off the rig: {strays(published)}"
    assert {a.rsplit(":", 1)[0] for a in published} <= {h.ip for h in rig.hosts.values()}


def test_kill_9_of_the_leader_host(cluster: Cluster):
    """Everything on the leader's machine dies at once: the standby serves, the worker re-joins, the
    detached actor answers through the new leader, and nothing of the old host's tree is left."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    before = drive(cluster.driver, h1.ip, "create")
    assert before["value"] == 1
    pinned = drive(cluster.driver, h1.ip, "pinned")

    killed_at = time.monotonic()
    killed = h1.kill_all()
    assert h1.processes() == [], "kill -9 of every process on the host"
    cluster.heads["h2"].wait_log("GCS serving", timeout=90)
    serving = time.monotonic() - killed_at
    cluster.worker.wait_log("joining leader h2 (epoch 2)", timeout=60)
    after = drive(cluster.driver, h2.ip, "get")
    again = drive(cluster.driver, h2.ip, "pinned")
    took = time.monotonic() - killed_at
    assert after["session"] == before["session"], "the new head resumes the same session"
    assert after["value"] >= 1
    assert again["session"] == before["session"] and again["node"] != pinned["node"], \
        "the pinned task ran on the worker's new raylet"
    assert cluster.leader() == "h2" and cluster.epoch() == 2
    assert cluster.watch.overlaps() == [], "never two gcs_server processes alive at once"
    assert h1.processes() == [], "nothing of the old host's tree came back"
    print(f"kill -9 of h1 ({killed} processes): h2's GCS serving after {serving:.1f}s; worker re-joined "
          f"and the actor answered after {took:.1f}s (lease {LEASE:g}s)")


def test_the_leader_host_cut_off_entirely(cluster: Cluster):
    """Its links down: its head is dead before any other head starts; healed, its launcher (restarted
    as systemd's Restart=always would) comes back as a standby."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    before = drive(cluster.driver, h1.ip, "create")
    cut_at = time.time()
    h1.cut()
    cluster.heads["h2"].wait_log("GCS serving", timeout=90)
    cluster.watch.look()
    (old,) = cluster.watch.on("h1")
    (new,) = cluster.watch.on("h2")
    assert old.gone is not None and old.gone <= new.started, \
        f"h1's GCS was seen alive {old.gone - new.started:.2f}s after h2's started"
    after = drive(cluster.driver, h2.ip, "get")
    assert after["session"] == before["session"]
    cluster.worker.wait_log("joining leader h2 (epoch 2)", timeout=60)

    mark = len(cluster.heads["h1"].log())
    h1.heal()
    cluster.heads["h1"].wait_log("standing by; leader is h2", timeout=60, since=mark)
    assert cluster.leader() == "h2" and cluster.watch.overlaps() == []
    assert [life.host for life in cluster.watch.alive()] == ["h2"]
    print(f"h1 cut off: its GCS gone {old.gone - cut_at:.1f}s after the cut, h2's GCS started "
          f"{new.started - cut_at:.1f}s after it ({new.started - old.gone:.1f}s apart); h1 stands by after "
          "the heal")


def test_the_leader_cut_from_redis_only(cluster: Cluster):
    """The leader still reaches its workers but not Redis: it steps down before its lease can expire,
    the worker follows the new leader, and the old GCS never answers after the new one does."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    before = drive(cluster.driver, h1.ip, "create")
    prober = GcsProber(cluster.rig.hosts["w1"], [h1.ip, h2.ip], cluster.rig.workdir / "probes.txt")
    try:
        cut_at = time.time()
        h1.cut_storage()
        cluster.heads["h2"].wait_log("GCS serving", timeout=90)
        cluster.worker.wait_log("joining leader h2 (epoch 2)", timeout=60)
        after = drive(cluster.driver, h2.ip, "get")
        time.sleep(2)
    finally:
        answers = prober.close()
    cluster.watch.look()
    (old,) = cluster.watch.on("h1")
    (new,) = cluster.watch.on("h2")
    assert old.gone is not None and old.gone - cut_at < LEASE, \
        f"h1's head was still alive {old.gone - cut_at:.1f}s after the cut: longer than the lease"
    assert old.gone <= new.started
    assert after["session"] == before["session"]
    last_old, first_new = max(answers[h1.ip], default=0.0), min(answers[h2.ip], default=None)
    assert first_new is not None and last_old < first_new, "the old GCS answered after the new one did"
    print(f"h1 cut from Redis: its GCS gone {old.gone - cut_at:.1f}s after the cut (lease {LEASE:g}s); "
          f"h2's GCS started {new.started - cut_at:.1f}s after it; old GCS last answered "
          f"{last_old - cut_at:.1f}s, new first {first_new - cut_at:.1f}s after the cut")


def test_redis_restarted_under_a_running_leader(cluster: Cluster):
    """kill -9 of redis-server, restarted on its AOF: at most one leader change, never two heads."""
    before = drive(cluster.driver, cluster.head("h1").ip, "create")
    cluster.redis.kill()
    time.sleep(1.0)
    cluster.redis.start()
    time.sleep(LEASE * 2)
    leader = wait_for(cluster.leader, 90, interval=0.2, what="a leader after the restart")
    cluster.heads[leader].wait_log("GCS serving", timeout=90)
    assert cluster.epoch() <= 2, "at most one leader change"
    assert cluster.watch.overlaps() == []
    after = drive(cluster.driver, cluster.head(leader).ip, "get")
    assert after["session"] == before["session"]
    print(f"Redis restarted (AOF): leader {leader}, epoch {cluster.epoch()}")


class GcsProber:
    """From a host, tries a TCP connection to each GCS address every 50 ms; `close()` returns, per
    address, the wall-clock times it accepted."""

    CODE = """
import socket, sys, time
ips = sys.argv[2:]
port = int(sys.argv[1])
while True:
    for ip in ips:
        try:
            socket.create_connection((ip, port), timeout=0.2).close()
            print(ip, time.time(), flush=True)
        except OSError:
            pass
    time.sleep(0.05)
"""

    def __init__(self, host: Host, ips: list[str], out: Path) -> None:
        self.ips, self.out = ips, out
        with open(out, "wb") as sink:
            self.proc = host.popen([sys.executable, "-c", self.CODE, str(GCS_PORT), *ips], stdout=sink)

    def close(self) -> dict[str, list[float]]:
        self.proc.kill()
        self.proc.wait(10)
        out = self.out.read_text()
        answers: dict[str, list[float]] = {ip: [] for ip in self.ips}
        for line in out.splitlines():
            ip, stamp = line.split()
            answers[ip].append(float(stamp))
        return answers
