"""One measured round of each benchmark scenario; each returns seconds (or a dict of named figures)."""

from __future__ import annotations

import signal
import time

import psutil

from bench.rig import RETRY, Round, kill_tree, now, ports


def baseline(rnd: Round) -> float:
    """Plain `ray start --head --block` -> its GCS answers a call."""
    (port,) = ports(1)
    started = now()
    rnd.plain_head(port)
    return rnd.answered(port) - started


def _leader_and_standby(rnd: Round) -> tuple[psutil.Process, int]:
    """Launcher a leading (GCS serving), launcher b standing by; a's process and b's GCS port."""
    port_a, port_b = ports(2)
    leader = rnd.launcher("a", port_a)
    rnd.wait_log("a", "GCS serving")
    rnd.launcher("b", port_b)
    rnd.wait_log("b", "standing by")
    return psutil.Process(leader.pid), port_b


def crash_failover(rnd: Round) -> dict[str, float]:
    """kill -9 of the leader's launcher and tree -> the standby's GCS answers; split into three parts."""
    leader, port_b = _leader_and_standby(rnd)
    wall, killed = time.time(), now()
    kill_tree(leader.pid)
    serving = rnd.answered(port_b) - killed
    elected = rnd.logged_at("b", "elected leader", wall - 0.001)
    started = rnd.logged_at("b", "head started", wall - 0.001)
    detection = (elected or wall) - wall
    takeover = (started or wall) - wall - detection
    return {"total": serving, "detection": detection, "takeover": takeover,
            "start": serving - detection - takeover}


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
    procs = {"leader": leader, "standby": standby, **{f"{k} watchdog": v for k, v in dogs.items()}}
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
    client.set("ray-ha:default:leader", '{"node":"stand-in"}', px=int((seconds + 60) * 1000))
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
