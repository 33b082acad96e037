"""One measured round of each benchmark scenario; each returns seconds (or a dict of named figures)."""

from __future__ import annotations

import signal
import time

import psutil

from bench.rig import Round, kill_tree, now, ports


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
