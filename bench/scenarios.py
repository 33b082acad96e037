"""One measured round of each benchmark scenario; each returns seconds (or a dict of named figures)."""

from __future__ import annotations

import signal
import time

import psutil

from bench.rig import FAKE_RAY, OVERRIDES, RETRY, Round, logged_at, now, ports
from testkit.procs import kill_tree
from raylaunch.store.keys import Keys


def baseline(rnd: Round) -> float:
    """Plain `ray start --head --block` -> its GCS answers a call."""
    (port,) = ports(1)
    started = now()
    rnd.plain_head(port)
    return rnd.answered(port) - started


#: How long a pre-warmed standby is given to import Ray's CLI before the leader is killed (s).
WARM_UP = 3.0


def _leader_and_standby(rnd: Round, *standby_flags: str) -> tuple[psutil.Process, int]:
    """Launcher a leading (GCS serving), launcher b standing by; a's process and b's GCS port."""
    port_a, port_b = ports(2)
    leader = rnd.launcher("a", port_a)
    rnd.wait_log("a", "GCS serving")
    rnd.launcher("b", port_b, *standby_flags)
    rnd.wait_log("b", "standing by")
    return psutil.Process(leader.pid), port_b


def crash_failover(rnd: Round) -> dict[str, float]:
    """ray-ha's defaults: the standby pre-warms (--ha-prewarm auto), and has warmed up before the kill."""
    figures = _crash_failover(rnd)
    if "pre-warmed interpreter (pid" not in rnd.log("b"):
        raise RuntimeError("the standby started its head cold; the default's figures would be wrong")
    return {**figures, "to serving": figures["takeover"] + figures["start"]}


def crash_failover_cold(rnd: Round) -> dict[str, float]:
    """As crash_failover with --ha-prewarm=off: the takeover runs `ray start` from scratch."""
    return _crash_failover(rnd, "--ha-prewarm=off")


def _crash_failover(rnd: Round, *standby_flags: str) -> dict[str, float]:
    """kill -9 of the leader's launcher and tree -> the standby's GCS answers; split into three parts."""
    leader, port_b = _leader_and_standby(rnd, *standby_flags)
    time.sleep(WARM_UP)
    wall, killed = time.time(), now()
    kill_tree(leader.pid)
    serving = rnd.answered(port_b) - killed
    return split(rnd.log("b"), wall, serving)


def split(standby_log: str, wall: float, serving: float) -> dict[str, float]:
    """A crash failover's `serving` time (from the kill at wall-clock `wall`) in three parts: detection
    (until the standby was elected), takeover (until its head started) and start (until its GCS answered)."""
    elected = logged_at(standby_log, "elected leader", wall - 0.001)
    started = logged_at(standby_log, "head started", wall - 0.001)
    detection = (elected or wall) - wall
    takeover = (started or wall) - wall - detection
    return {"total": serving, "detection": detection, "takeover": takeover, "start": serving - detection - takeover}


#: What a worker's `ray start` prints once its node has registered with the GCS.
JOINED = "Ray runtime started."


def follower_rejoin(rnd: Round) -> float:
    """kill -9 of the leader's launcher and tree -> a follower's worker has joined the new leader (its
    `ray start` against the new address says it started, i.e. the node registered with the new GCS)."""
    leader, _ = _leader_and_standby(rnd)
    rnd.follower("f")
    rnd.wait_log("f", JOINED)
    killed = now()
    kill_tree(leader.pid)
    _wait(lambda: rnd.log("f").count(JOINED) >= 2, 120)
    return now() - killed


def graceful_handover(rnd: Round) -> float:
    """SIGTERM to the leader's launcher -> the standby's GCS answers."""
    leader, port_b = _leader_and_standby(rnd)
    asked = now()
    leader.send_signal(signal.SIGTERM)
    return rnd.answered(port_b) - asked


def gcs_crash(rnd: Round) -> float:
    """kill -9 of the leader's gcs_server alone -> the standby's GCS answers."""
    leader, port_b = _leader_and_standby(rnd)
    gcs = next(p for p in leader.children(recursive=True) if p.name() == "gcs_server")
    killed = now()
    gcs.kill()
    return rnd.answered(port_b) - killed


def passthrough(rnd: Round) -> dict[str, float]:
    """HA off: `ray-ha start --head --block` (which execs `ray start`) vs `ray start` -> GCS answers."""
    port_plain, port_ours = ports(2)
    started = now()
    rnd.plain_head(port_plain)
    plain = rnd.answered(port_plain) - started
    started = now()
    rnd.passthrough_head(port_ours)
    ours = rnd.answered(port_ours) - started
    return {"total": ours, "ray start": plain, "ratio": ours / plain}


def supervisor_cost(rnd: Round, seconds: float) -> dict[str, float]:
    """RSS and CPU share of the launcher processes (not their heads) over `seconds`, leader and standby."""
    leader, _ = _leader_and_standby(rnd)
    standby = next(p for p in psutil.process_iter(["cmdline"])
                   if "--ha-node-name=b" in (p.info["cmdline"] or []) and "raylaunch" in p.info["cmdline"])
    dogs = {name: next(c for c in proc.children() if any(a.endswith("watchdog.py") for a in c.cmdline()))
            for name, proc in (("leader", leader), ("standby", standby))}
    time.sleep(WARM_UP)  # the default pre-warm has imported Ray's CLI: what is left is its idle cost
    warm = next(c for c in standby.children() if any(a.endswith("prewarm.py") for a in c.cmdline()))
    procs = {"leader": leader, "standby": standby, **{f"{k} watchdog": v for k, v in dogs.items()},
             "standby pre-warmed interpreter": warm}
    before = {name: _cpu(p) for name, p in procs.items()}
    started, peak = now(), {name: 0 for name in procs}
    while now() - started < seconds:
        for name, proc in procs.items():
            peak[name] = max(peak[name], proc.memory_info().rss)
        time.sleep(1.0)
    elapsed = now() - started
    figures: dict[str, float] = {}
    for name, proc in procs.items():
        figures[f"{name} CPU %"] = 100 * (_cpu(proc) - before[name]) / elapsed
        figures[f"{name} RSS MiB"] = peak[name] / 2 ** 20
    return figures


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def redis_cost(rnd: Round, seconds: float) -> dict[str, float]:
    """What one standby costs Redis (the lease held by a stand-in): commands it sends, counted with
    MONITOR, and commands Redis runs for it, counting those inside its Lua script."""
    client = rnd.redis.client()
    client.set(Keys("ray-ha:default:leader").lease, '{"node":"stand-in"}', px=int((seconds + 60) * 1000))
    (port,) = ports(1)
    rnd.launcher("b", port)
    rnd.wait_log("b", "standing by")
    time.sleep(1.0)  # past start-up checks
    client.config_resetstat()
    stamps = _monitor(rnd, seconds)
    executed = sum(int(v["calls"]) for k, v in client.info("commandstats").items()
                   if k not in ("cmdstat_config", "cmdstat_monitor", "cmdstat_info"))
    sent_rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"sent per retry period": sent_rate * RETRY,
            "run by Redis per retry period": executed / (seconds / RETRY)}


def _monitor(rnd: Round, seconds: float) -> list[float]:
    """Redis's timestamps of the commands other clients sent during `seconds` (MONITOR; script
    internals excluded). The rate between the first and the last is free of the window's edges."""
    stamps: list[float] = []
    deadline = now() + seconds
    with rnd.redis.client().monitor() as monitor:
        monitor.connection.socket_timeout = 0.5
        while now() < deadline:
            try:
                command = monitor.next_command()
            except Exception:  # noqa: BLE001 - a quiet half second
                continue
            if command.get("client_type") != "lua" and "MONITOR" not in command.get("command", ""):
                stamps.append(float(command["time"]))
    return stamps


def scale(rnd: Round, standbys: int = 100) -> dict[str, float]:
    """`standbys` + 1 candidates (fake `ray`) on one Redis: after kill -9 of the leader, how long until
    the next head starts, whether two ever ran at once, and what Redis spent."""
    import sys

    sys.path.insert(0, str(FAKE_RAY.parent / "chaos"))
    from checker import check  # type: ignore[import-not-found]  # the chaos harness's checker
    from tenures import TenureRecorder  # type: ignore[import-not-found]

    recorder = TenureRecorder(str(rnd.dir / "tenures.sock"))
    redis_proc = psutil.Process(rnd.redis.proc.pid)  # type: ignore[union-attr]
    cpu_before, started = _cpu(redis_proc), now()
    fake = {"PATH": f"{FAKE_RAY}:{rnd.env['PATH']}", "FAKE_RAY_TENURE_SOCKET": recorder.path}
    try:
        leader = rnd.fake_launcher("c0", fake)
        _wait(lambda: recorder.active() is not None, 60)
        for i in range(1, standbys + 1):
            rnd.fake_launcher(f"c{i}", fake)
        _wait(lambda: all("standing by" in rnd.log(f"c{i}") for i in range(1, standbys + 1)), 300)
        killed = now()
        kill_tree(leader.pid)
        _wait(lambda: getattr(recorder.active(), "node", "c0") != "c0", 60)
        next_head = recorder.active().start - killed  # type: ignore[union-attr]
        time.sleep(2 * RETRY)
        report = check(recorder.tenures(), [], rnd.lease, 0, now())
        elapsed = now() - started
        return {"total": next_head, "overlaps": float(len(report.overlaps)),
                "Redis CPU % (whole run)": 100 * (_cpu(redis_proc) - cpu_before) / elapsed}
    finally:
        recorder.close()


def _wait(predicate, timeout: float) -> None:
    deadline = now() + timeout
    while not predicate():
        if now() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


#: ant-ray's Head HA settings: "tuned" matches our lease (5 s expiry, 0.5 s checks, no wait after
#: winning); "defaults" leaves ant-ray's own (60 s expiry, 3 s checks).
PEER_SETTINGS = {
    "tuned": {"RAY_HA_KEY_EXPIRE_TIME_MS": "{lease_ms}", "RAY_HA_CHECK_INTERVAL_MS": "{retry_ms}",
              "RAY_HA_WAIT_TIME_AFTER_BE_ACTIVE_MS": "0"},
    "defaults": {},
}


def peer_failover(rnd: Round, venv: str, settings: str) -> float:
    """ant-ray's built-in Head HA: kill -9 of the active head's whole tree -> the standby's GCS answers.

    Its Redis address is 127.0.0.2 because ant-ray rewrites exactly 127.0.0.1 to the outward IP.
    """
    retry_ms = int((OVERRIDES["retry"] or RETRY) * 1000)  # its check interval: our retry period
    env = {k: v.format(lease_ms=int(rnd.lease * 1000), retry_ms=retry_ms) for k, v in PEER_SETTINGS[settings].items()}
    env.update(RAY_ENABLE_HEAD_HA="true", RAY_REDIS_ADDRESS=f"127.0.0.2:{rnd.redis.port}",
               PATH=f"{venv}/bin:{rnd.env['PATH']}")
    port_a, port_b = ports(2)
    first = rnd.peer_head("pa", port_a, env)
    rnd.answered(port_a)
    rnd.peer_head("pb", port_b, env)
    time.sleep(3.0)  # the standby is campaigning
    killed = now()
    kill_tree(first.pid)
    return rnd.answered(port_b) - killed
