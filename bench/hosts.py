"""The bench's host layout: the crash-failover and follower scenarios with every part on its own rig host.

Redis on r1 (storage network only), head candidates on h1 and h2, a follow-mode worker on w1, and the
GCS poller on p1, which reaches the heads over the hosts' network as a client machine would. The crash
is kill -9 of every process on the leader's host. Times are CLOCK_MONOTONIC, one clock for every host.
"""

from __future__ import annotations

import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil

from bench.rig import ROOT, logged_at, now, timing
from bench.scenarios import JOINED, split
from raylaunch.proc.raycmd import RELAY_ENV
from raylaunch.store.keys import Keys
from testkit.hostray import (DASHBOARD, GCS_PORT, HostLauncher, HostRedis, clean_env, drive_at, head_args,
                             read_json_line, read_line, worker_args)
from testkit.hosts import Rig
from testkit.serving import ServeWatch, serve_app


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

    def follower(self, name: str, *extra: str) -> HostLauncher:
        host = self.rig.hosts[name]
        self.launchers[name] = HostLauncher(host, worker_args(host, *timing(self.lease), *extra),
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


def _leader_and_standby(rnd: HostsRound, *extra: str) -> None:
    rnd.launcher("h1", *extra).wait_log("GCS serving", timeout=120)
    rnd.launcher("h2", *extra).wait_log("standing by", timeout=60)


def crash_failover_hosts(rnd: HostsRound, *extra: str) -> dict[str, float]:
    """kill -9 of everything on the leader's host -> the standby's GCS answers p1; in three parts."""
    _leader_and_standby(rnd, *extra)
    wall, killed = time.time(), now()
    rnd.rig.hosts["h1"].kill_all()
    serving = rnd.answered("h2") - killed
    # the new leader's own probe of its GCS (every 0.1 s): unlike p1's client, never held back by gRPC's
    # reconnect backoff after connections the standby's listener accepted and reset during the failover
    rnd.launchers["h2"].wait_log("GCS serving at", timeout=30, since=0)
    log = rnd.launchers["h2"].log()
    served = (logged_at(log, "GCS serving at", wall - 0.001) or float("nan")) - wall
    return {**split(log, wall, serving), "leader saw it serve": served}


def crash_failover_hosts_unfronted(rnd: HostsRound) -> dict[str, float]:
    """crash-failover-hosts with the standby's client listeners off (--ha-client-ports=off): what closing
    them on winning costs a takeover, beside the default."""
    return crash_failover_hosts(rnd, "--ha-client-ports=off")


def follower_rejoin_hosts(rnd: HostsRound) -> float:
    """kill -9 of everything on the leader's host -> the worker on w1 (no relay) has joined the new leader."""
    _leader_and_standby(rnd)
    worker = rnd.follower("w1", "--ha-relay=off")
    worker.wait_log(JOINED, timeout=120)
    killed = now()
    rnd.rig.hosts["h1"].kill_all()
    deadline = killed + 120
    while worker.log().count(JOINED) < 2:
        if now() > deadline:
            raise RuntimeError(f"w1 never re-joined:\n{worker.log()[-2000:]}")
        time.sleep(0.02)
    return now() - killed


def follower_relay_hosts(rnd: HostsRound) -> dict[str, float]:
    """kill -9 of the leader's host -> w1's actor answered through the new leader with its state, and a
    task ran on w1 (total), with the relay: nothing on w1 restarts."""
    return _follower_failover(rnd, relay=True)


def follower_restart_hosts(rnd: HostsRound) -> dict[str, float]:
    """The same without the relay (--ha-relay=off): w1's worker is restarted, its actor is lost."""
    return _follower_failover(rnd, relay=False)


def timeline_hosts(rnd: HostsRound) -> dict[str, float]:
    """follower-relay-hosts with each head's dashboard on, a Ray Job submitted before the crash (its
    driver on w1) and a Serve app (replica and proxy on w1, the controller on the head): also when the new
    leader's dashboard says the job runs and shows it running on, and when Serve's controller, back on the
    new head, says the app runs."""
    return _timeline(rnd, cut=False)


def timeline_hosts_cut(rnd: HostsRound) -> dict[str, float]:
    """timeline-hosts with the leader's host cut off (its links down) instead of killed."""
    return _timeline(rnd, cut=True)


def _timeline(rnd: HostsRound, cut: bool) -> dict[str, float]:
    try:
        importlib.import_module("ray.dashboard.optional_deps")  # what `ray start` checks for its dashboard
        importlib.import_module("ray.serve.api")  # what Serve needs beside Ray (starlette, fastapi)
    except ImportError as exc:
        raise RuntimeError(f"timeline-hosts needs Ray's dashboard and Serve: pip install 'ray[default,serve]' "
                           f"({exc})") from None
    return _follower_failover(rnd, relay=True, job=True, cut=cut)


def _follower_failover(rnd: HostsRound, relay: bool, job: bool = False, cut: bool = False) -> dict[str, float]:
    """Parts: a new driver on the new leader's node (both paths) and, with the relay, a driver on w1
    connected before the kill (with the relay's backoff setting, RELAY_ENV, as docs/follow-mode.md advises for
    drivers on a worker node); each says when w1's actor answered and a task ran on w1. The relay's
    total is the w1 driver's later answer; without a relay, the new driver's task on w1."""
    _leader_and_standby(rnd, *(DASHBOARD if job else ()))
    worker = rnd.follower("w1", *([] if relay else ["--ha-relay=off"]))
    worker.wait_log(JOINED, timeout=120)
    w1, h1, h2 = (rnd.rig.hosts[n] for n in ("w1", "h1", "h2"))
    ray_job = job_probe(rnd.rig.hosts["p1"], h1.ip, h2.ip, w1.ip) if job else None
    if job:
        serve_app(w1, "auto", "deploy", "v1")
    serve = ServeWatch(w1) if job else None
    created = drive_at(w1, "auto", "worker-create")
    drive_at(w1, "auto", "pinned")  # w1 has run a task before: an idle worker process waits, as on a busy node
    new_driver = probe(h2, f"{h2.ip}:{GCS_PORT}", h1.ip)
    resident = probe(w1, "auto", h1.ip) if relay else None
    rnd.redis.command("PING")  # its probe process started before the clock does
    wall, killed = time.time(), now()
    h1.cut() if cut else h1.kill_all()
    if resident:
        go(resident)
    if ray_job:
        go(ray_job, repr(wall))  # the job probe judges its driver's tasks by the wall clock
    if serve:
        serve.go()
    expired = lease_expiry(rnd) - killed
    served = rnd.answered("h2")
    go(new_driver)
    seen = read_json_line(new_driver.proc.stdout, 300)
    on_w1 = read_json_line(resident.proc.stdout, 300) if resident else {}
    if "task" not in seen or (resident and "task" not in on_w1):
        raise RuntimeError(f"no task ran on w1 after the failover: {seen} {on_w1}\n{worker.log()[-2000:]}")
    restarts = worker.log().count("restarting the worker")
    won = (logged_at(rnd.launchers["h2"].log(), "elected leader", wall - 0.001) or wall) - wall
    # when the new leader logged that its GCS marks h1's node dead: the observers above see it only once
    # their own GCS clients are through to the new GCS (the w1 driver's ~6 s, the new driver's later)
    marked = logged_at(rnd.launchers["h2"].log(), "marked the previous head node", wall - 0.001)
    rejoined = raylet_logged(rnd, "w1", RAYLET_REJOINED, wall)
    figures = {"total": max(on_w1["actor"], on_w1["task"]) - killed if resident else seen["task"] - killed,
               "lease expired": expired, "lease won": won, "new GCS answered": served - killed, "new driver: task ran on w1": seen["task"] - killed,
               "new driver connected": seen["connected"] - killed,
               "old head listed dead": min(p.get("old head dead", killed + 999) for p in (seen, on_w1) if p) - killed}
    if marked is not None:
        figures["old head marked dead (new leader's log)"] = marked - wall
    if rejoined is not None:
        figures["w1 raylet reconnected"] = rejoined - wall
    if ray_job:
        figures.update(job_figures(read_json_line(ray_job.proc.stdout, 300), killed))
    if serve:
        back = serve.result()
        if "running" not in back:
            raise RuntimeError(f"Serve's controller never said the app runs through the new head: {back}")
        figures["Serve app RUNNING through the new head"] = back["running"] - killed
    if relay:
        state = (created["pid"], created["node"])
        kept = [(s.get("pid"), s["node"]) == state for s in (seen, on_w1)] + [seen.get("value") in (2, 3)]
        if not all(kept) or restarts:
            raise RuntimeError(f"the relay did not keep w1's work: {seen} {on_w1}, {restarts} restarts")
        figures["actor answered (new driver)"] = seen["actor"] - killed
        figures["w1 driver: actor answered"] = on_w1["actor"] - killed
        figures["w1 driver: task ran on w1"] = on_w1["task"] - killed
    elif "actor lost" not in seen or restarts != 1:
        raise RuntimeError(f"without the relay w1's worker should restart and lose its actor: {seen}")
    return figures


#: What a raylet logs once its GCS client is through to a new GCS (node_manager.cc, Ray 2.60).
RAYLET_REJOINED = "The GCS has restarted. Resubscribing"


def raylet_logged(rnd: HostsRound, host: str, text: str, after: float) -> Optional[float]:
    """Wall-clock time of the first line with `text` in `host`'s raylet.out stamped after `after`."""
    for log in sorted((rnd.rig.workdir / "hosts" / host / "tmp" / "ray").glob("session_*/logs/raylet.out")):
        lines = (line[1:] for line in log.read_text(errors="replace").splitlines() if line.startswith("["))
        stamp = logged_at("\n".join(lines), text, after)  # Ray's "[2026-.. ..,mmm I pid tid]" without its "["
        if stamp is not None:
            return stamp
    return None


def job_probe(host, old_ip: str, new_ip: str, worker_ip: str):
    """bench/job_probe.py on `host`: a Ray Job submitted to the leader at `old_ip`, running on w1."""
    started = host.popen([sys.executable, str(ROOT / "bench" / "job_probe.py"), old_ip, new_ip, worker_ip],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env())
    if not read_line(started.proc.stdout, 240, b"ready"):
        raise RuntimeError(f"the job probe on {host.name} did not get a job running")
    return started


def job_figures(seen: dict, killed: float) -> dict[str, float]:
    """The job probe's answer as figures (s after the kill); a job not shown running on is a failed round."""
    if "progressed" not in seen:
        raise RuntimeError(f"the new leader's dashboard never showed the job running on: {seen}")
    return {"job: new dashboard answered": seen["answered"] - killed, "job: RUNNING": seen["running"] - killed,
            "job: RUNNING, its driver's new tasks logged": seen["progressed"] - killed}


def lease_expiry(rnd: HostsRound) -> float:
    """When the lease the killed leader held runs out (monotonic), from its PTTL in Redis."""
    before = now()
    left = rnd.redis.command("PTTL", Keys("ray-ha:default:leader").lease)
    if not isinstance(left, int) or left < 0:
        raise RuntimeError(f"the leader's lease has no time left to read: {left}")
    return (before + now()) / 2 + left / 1000


def probe(host, address: str, old_ip: str):
    """bench/worker_probe.py on `host` at `address`, ready (Ray imported, connected if `auto`)."""
    started = host.popen([sys.executable, str(ROOT / "bench" / "worker_probe.py"), address, old_ip],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       env=clean_env(**(RELAY_ENV if address == "auto" else {})))  # as docs/follow-mode.md advises
    if read_line(started.proc.stdout, 120) != b"ready":
        raise RuntimeError(f"the probe on {host.name} did not start")
    return started


def go(started, line: str = "go") -> None:
    """Tell a probe from `probe` (or the job probe) to begin."""
    started.proc.stdin.write(line.encode() + b"\n")
    started.proc.stdin.flush()


def relay_cost(lease: float, rounds: int, tasks: int = 1000, gets: int = 2000) -> list[str]:
    """What the relay costs: the same load from a driver on w1 with the relay and without (alternating
    rounds), as table rows: tasks/s, internal_kv_get p50/p99, and the follower's CPU and RSS."""
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(rounds):
        for relay in (True, False):
            rnd = HostsRound(lease)
            try:
                runs[relay].append(_load(rnd, relay, tasks, gets))
            finally:
                rnd.close()
    rows = [f"\n| relay cost ({rounds} rounds, {tasks} tasks x 3, {gets} GCS calls) | relay | direct | relay / direct "
            "| target | met |", "|---|---|---|---|---|---|"]
    for name in runs[True][0]:
        with_relay = statistics.median(r[name] for r in runs[True])
        direct = statistics.median(r[name] for r in runs[False])
        ratio = with_relay / direct if direct else float("nan")
        target, met = ("≥ 0.95", "yes" if ratio >= 0.95 else "no") if name == "tasks/s" else ("-", "-")
        rows.append(f"| {name} | {with_relay:.2f} | {direct:.2f} | {ratio:.2f} | {target} | {met} |")
    return rows


def _load(rnd: HostsRound, relay: bool, tasks: int, gets: int) -> dict[str, float]:
    rnd.launcher("h1").wait_log("GCS serving", timeout=120)
    worker = rnd.follower("w1", *([] if relay else ["--ha-relay=off"]))
    worker.wait_log(JOINED, timeout=120)
    load = rnd.rig.hosts["w1"].popen([sys.executable, str(ROOT / "bench" / "relay_load.py"), str(tasks), str(gets)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env())
    if read_line(load.proc.stdout, 120, b"go") != b"go":
        raise RuntimeError("the load on w1 did not start")
    follower = psutil.Process(worker.process.pid)
    cpu, wall = sum(follower.cpu_times()[:2]), now()
    figures = read_json_line(load.proc.stdout, 600)
    if not figures:
        raise RuntimeError("the load on w1 gave no figures")
    used = (sum(follower.cpu_times()[:2]) - cpu) / (now() - wall)
    return {**figures, "follower CPU %": 100 * used, "follower RSS MiB": follower.memory_info().rss / 2**20}
