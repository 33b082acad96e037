"""Real Ray 2.60 across hosts: Redis on its own host, two head candidates, a follow-mode worker (through
its relay, the default), a driver.

Every host is a rig host (tests/hosts/test_rig.py): its own network, host name, PIDs and /tmp. The heads
reach Redis over the storage network, the worker and the driver reach the heads over the hosts' network,
and faults are real: kill -9 of a whole host, its links down, its storage link down, Redis restarted.
Whether two heads ever ran at once is judged by the life of the gcs_server processes, never by logs.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

import psutil
import pytest

from conftest import HOSTS_LEASE as LEASE
from conftest import Cluster, start_head, wait_for
from testkit.hostray import GCS_PORT, ServingDriver, clean_env, drive, gcs_nodes
from testkit.hosts import Host

pytestmark = [pytest.mark.ray, pytest.mark.hosts]

class WorkerWork:
    """What runs on w1 and must survive a failover: its raylet, a detached actor that counts, and a
    driver started on w1 with `ray.init("auto")` (so it reaches the GCS through the relay)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.host = cluster, cluster.rig.hosts["w1"]
        self.raylet = wait_for(self.raylet_pid, 60, what="w1's raylet")
        self.driver = ServingDriver(self.host)
        first = self.driver.ask("worker-create")
        assert first["value"] == 1
        self.actor, self.node, self.count = first["pid"], first["node"], 1

    def raylet_pid(self) -> Optional[int]:
        pids = [p.pid for p in self.host.processes() if named(p) == "raylet"]
        assert len(pids) <= 1, f"w1 runs {len(pids)} raylets"
        return pids[0] if pids else None

    def check(self, leader: Host) -> None:
        """Through the new leader (a Ray Client driver on d1) and from the driver on w1: the actor's state
        goes on in the same process, a task runs on w1, and w1's raylet is the one it always was."""
        for answer in (drive(self.cluster.driver, leader.ip, "worker-get"), self.driver.ask("worker-get")):
            self.count += 1
            assert (answer["value"], answer["pid"], answer["node"]) == (self.count, self.actor, self.node), \
                f"the actor's state and process carry on: {answer}"
        assert drive(self.cluster.driver, leader.ip, "pinned")["node"] == self.node, "a new task ran on w1"
        assert self.raylet_pid() == self.raylet, "w1's raylet is the same process"
        assert "restarting the worker" not in self.cluster.worker.log() and self.cluster.worker.process.poll() is None

    def relay(self) -> str:
        line = next(l for l in self.cluster.worker.log().splitlines() if "GCS relay listening on" in l)
        return line.rsplit(" ", 1)[-1]

    def stopped_clean(self, how: str) -> None:
        """Stop the follower (SIGTERM or `ray-ha stop`): nothing is left on w1, the relay's port included."""
        relay = self.relay()
        self.driver.close()
        if how == "sigterm":
            self.cluster.worker.process.send_signal(signal.SIGTERM)
        else:
            self.host.run([sys.executable, "-m", "raylaunch", "stop"], env=clean_env(), timeout=90)
        assert self.cluster.worker.process.wait(90) == 0
        assert self.host.processes() == [], f"left on w1: {[p.name() for p in self.host.processes()]}"
        probe = self.host.run([sys.executable, "-c", CONNECT, relay], check=False)
        assert probe.returncode != 0, f"the relay at {relay} still accepts"


CONNECT = "import socket, sys; h, p = sys.argv[1].rsplit(':', 1); socket.create_connection((h, int(p)), 2)"


def test_kill_9_of_the_leader_host(cluster: Cluster):
    """Everything on the leader's machine dies at once: the standby serves, the worker's relay follows it,
    and everything on the worker carries on: the detached actor's state, its raylet, a driver on it."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    before = drive(cluster.driver, h1.ip, "create")
    assert before["value"] == 1
    work = WorkerWork(cluster)

    killed_at = time.monotonic()
    killed = h1.kill_all()
    assert h1.processes() == [], "kill -9 of every process on the host"
    cluster.heads["h2"].wait_log("GCS serving", timeout=90)
    serving = time.monotonic() - killed_at
    cluster.worker.wait_log("leader is now h2 (epoch 2)", timeout=60)
    work.check(h2)
    took = time.monotonic() - killed_at
    assert took < 45, f"the worker's actor answered through h2 {took:.1f}s after the kill (bound 45 s)"
    after = drive(cluster.driver, h2.ip, "get")
    assert after["session"] == before["session"] and after["value"] >= 1, "the new head resumes the session"
    assert cluster.leader() == "h2" and cluster.epoch() == 2
    assert cluster.watch.overlaps() == [], "never two gcs_server processes alive at once"
    assert h1.processes() == [], "nothing of the old host's tree came back"
    print(f"kill -9 of h1 ({killed} processes): h2's GCS serving after {serving:.1f}s; w1's actor answered "
          f"through h2 with its state, and a task ran on w1, {took:.1f}s after the kill (lease {LEASE:g}s)")
    work.stopped_clean("sigterm")


def test_the_leader_host_cut_off_entirely(cluster: Cluster):
    """Its links down: its head is dead before any other head starts, the worker's work carries on
    through the new leader; healed, its launcher (restarted as systemd's Restart=always would) comes back
    as a standby."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    before = drive(cluster.driver, h1.ip, "create")
    work = WorkerWork(cluster)
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
    cluster.worker.wait_log("leader is now h2 (epoch 2)", timeout=60)
    work.check(h2)
    took = time.time() - cut_at
    assert took < 45, f"the worker's actor answered through h2 {took:.1f}s after the cut (bound 45 s)"

    mark = len(cluster.heads["h1"].log())
    h1.heal()
    cluster.heads["h1"].wait_log("standing by; leader is h2", timeout=60, since=mark)
    assert cluster.leader() == "h2" and cluster.watch.overlaps() == []
    assert [life.host for life in cluster.watch.alive()] == ["h2"]
    print(f"h1 cut off: its GCS gone {old.gone - cut_at:.1f}s after the cut, h2's GCS started "
          f"{new.started - cut_at:.1f}s after it ({new.started - old.gone:.1f}s apart); w1's actor answered "
          f"through h2 {took:.1f}s after the cut; h1 stands by after the heal")
    work.stopped_clean("ray-ha stop")


def test_a_ray_client_dialing_any_candidate_reaches_the_head_that_leads(cluster: Cluster, tmp_path):
    """A client list (or DNS name) holding every candidate: the standby's Ray Client port relays to the
    leader's; after a failover the new leader answers there itself, and the old machine, back as a
    standby, relays to it in turn. The same session throughout, never two heads."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    cluster.heads["h2"].wait_log("answering for h1's head (epoch 1)", timeout=60)
    before = drive(cluster.driver, h2.ip, "create")  # h2 stands by: its listener relays to h1's head
    assert before["value"] == 1
    killed_at = time.monotonic()
    h1.kill_all()
    cluster.heads["h2"].wait_log("GCS serving", timeout=90)
    after = drive(cluster.driver, h2.ip, "get")  # the same address, now h2's own head
    took = time.monotonic() - killed_at
    assert after["session"] == before["session"]
    cluster.heads["h1"] = start_head(cluster.rig, cluster.redis, "h1", tmp_path)  # its machine is back
    cluster.heads["h1"].wait_log("answering for h2's head (epoch 2)", timeout=90)
    again = drive(cluster.driver, h1.ip, "get")  # h1 stands by: its listener relays to h2's head
    assert again["session"] == before["session"]
    assert cluster.leader() == "h2" and cluster.watch.overlaps() == [], "never two heads"
    print(f"Ray Client through a standby's address: the leader's head before the kill; {took:.1f}s after "
          f"kill -9 of h1, h2's own head at the same address; then h2's head through h1's address")


def newest_change(cluster: Cluster) -> tuple[str, str, str]:
    """The newest entry of the leadership history: (new leader, the one before, why its tenure ended)."""
    from raylaunch.store.records import Change

    (entry,) = cluster.redis.command("LRANGE", "{ray-ha:default:leader}:history", "0", "0")
    change = Change.decode(entry)
    assert change is not None and change.previous is not None, entry
    return change.record.node, change.previous.node, change.previous.reason.value


@pytest.mark.parametrize("fault", ["kill -9", "cut"])
def test_the_new_leader_marks_the_old_head_dead(cluster: Cluster, fault: str):
    """Once h2's GCS serves, h2 marks h1's head node dead in it (Ray's own health checks would take
    longer), so a detached actor that needs the head's resource, as Serve's controller does, restarts on
    h2 at once. Through kill -9 of h1's machine and through a cut of its links."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    first = drive(cluster.driver, h1.ip, "head-create")
    fault_at = time.monotonic()
    h1.kill_all() if fault == "kill -9" else h1.cut()
    cluster.heads["h2"].wait_log("GCS serving", timeout=90)
    cluster.heads["h2"].wait_log("marked the previous head node", timeout=60)
    marked = time.monotonic() - fault_at
    old = [n for n in gcs_nodes(h2, f"{h2.ip}:{GCS_PORT}") if n["ip"] == h1.ip]
    assert old and all(not n["alive"] and n["death"].startswith("ray-ha:") for n in old), \
        f"h1's head node is dead by ray-ha's word, not by missed heartbeats: {old}"
    after = drive(cluster.driver, h2.ip, "head-get")
    took = time.monotonic() - fault_at
    assert after["node"] != first["node"] and after["value"] == 1, f"restarted on the new head: {after}"
    assert took < 45, f"the head's actor answered on h2 {took:.1f}s after the {fault} (bound 45 s)"
    assert cluster.watch.overlaps() == []
    assert newest_change(cluster) == ("h2", "h1", "expired"), "the history says why h1's tenure ended"
    print(f"{fault} of h1: h2 marked h1's head node dead {marked:.1f}s after it; the head's detached actor "
          f"answered on h2 {took:.1f}s after it (lease {LEASE:g}s)")


def test_two_failovers_in_a_row(cluster: Cluster, tmp_path):
    """h1 killed, then (once h1 stands by again) h2 killed: the worker's work carries on through both."""
    h1, h2 = cluster.head("h1"), cluster.head("h2")
    work = WorkerWork(cluster)
    h1.kill_all()
    cluster.worker.wait_log("leader is now h2 (epoch 2)", timeout=90)
    work.check(h2)
    cluster.heads["h1"] = start_head(cluster.rig, cluster.redis, "h1", tmp_path)  # its machine is back
    cluster.heads["h1"].wait_log("standing by; leader is h2", timeout=90)
    killed_at = time.monotonic()
    h2.kill_all()
    cluster.worker.wait_log("leader is now h1 (epoch 3)", timeout=90)
    work.check(h1)
    took = time.monotonic() - killed_at
    assert took < 45, f"after the second failover the actor answered {took:.1f}s after the kill (bound 45 s)"
    assert cluster.watch.overlaps() == []
    print(f"two failovers in a row: after the second, w1's actor answered through h1 {took:.1f}s after the kill; "
          f"count {work.count}, same actor and raylet throughout")
    work.stopped_clean("sigterm")


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
        cluster.worker.wait_log("leader is now h2 (epoch 2)", timeout=60)
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
    # h2's own port answered before its GCS existed (its listener relayed to h1 while it stood by), so the
    # new GCS is judged by its process; h1, cut from Redis, never learns of a leader to answer for
    last_old = max(answers[h1.ip], default=0.0)
    assert last_old < new.started, "the old GCS answered after the new one had started"
    assert newest_change(cluster) == ("h2", "h1", "expired"), "h1, cut off, could not release: its lease expired"
    print(f"h1 cut from Redis: its GCS gone {old.gone - cut_at:.1f}s after the cut (lease {LEASE:g}s); "
          f"h2's GCS started {new.started - cut_at:.1f}s after it; old GCS last answered "
          f"{last_old - cut_at:.1f}s after the cut")


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


def named(proc) -> str:
    """A process's name; "" for one that ended while being looked at."""
    try:
        return proc.name()
    except psutil.Error:
        return ""
