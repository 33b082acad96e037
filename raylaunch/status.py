"""What `ray-ha status` and `ray-ha history` show: the cluster as Redis sees it (store.view) and this
machine's supervisors (local.state), as JSON (layout versioned by SCHEMA; fields are only ever added
within a version) or as tables like `patronictl list` and `patronictl history`."""

from __future__ import annotations

import time
from typing import Any, Optional

from raylaunch.config import Role
from raylaunch.local.state import LocalSupervisor
from raylaunch.store.records import Change, Pause, end_reason
from raylaunch.store.view import ClusterView

SCHEMA = 1


def status_json(view: ClusterView, redis_display: str, local: list[LocalSupervisor]) -> dict[str, Any]:
    """The view in the JSON layout documented in docs/operations.md."""
    lead = view.leadership
    leader = None
    if lead.holder is not None:
        serving = lead.serving
        leader = {"node": lead.holder.node, "host": lead.holder.host, "pid": lead.holder.pid, "epoch": lead.epoch,
                  "gcs_address": serving.gcs_address if serving else None,
                  "since": serving.since if serving else None, "lease_left_s": lead.lease_left}
    request = view.switchover
    return {
        "schema": SCHEMA, "key": view.key, "redis": redis_display, "epoch": lead.epoch, "leader": leader,
        "standbys": [{"node": s.record.node, "host": s.record.host, "pid": s.record.pid, "role": s.record.role,
                      "since": s.record.since, "expires_in_s": s.expires_in, "priority": s.record.priority}
                     for s in view.standbys],
        "followers": [{"node": f.record.node, "host": f.record.host, "pid": f.record.pid, "epoch": f.record.epoch,
                       "leader": f.record.leader, "gcs_address": f.record.gcs_address, "since": f.record.since,
                       "expires_in_s": f.expires_in} for f in view.followers],
        "history": [change_json(c) for c in view.history],
        "switchover": {"from": request.source, "to": request.target or None, "epoch": request.epoch}
        if request else None,
        "pause": pause_json(view.pause),
        "scheduled_switchover": None if view.scheduled is None else {
            "to": view.scheduled.target or None, "at": view.scheduled.at, "by": view.scheduled.by,
            "window_s": view.scheduled.window},
        "local": [_local(s) for s in local],
    }


def change_json(change: Change) -> dict[str, Any]:
    """One history entry: the new leader's record, then how the tenure before ended and how long the
    cluster had no serving head (None where unknown)."""
    prev = change.previous
    return {**vars(change.record), "ports": dict(change.record.ports),
            "previous": None if prev is None else {"node": prev.node, "epoch": prev.epoch or None,
                                                   "reason": prev.reason.value},
            "headless_s": change.headless_seconds}


def pause_json(pause: Optional[Pause]) -> Optional[dict[str, Any]]:
    return None if pause is None else {"by": pause.by, "since": pause.since, "until": pause.until,
                                       "reason": pause.reason or None}


def _local(sup: LocalSupervisor) -> dict[str, Any]:
    state = sup.state
    role = state.role if state and sup.running and sup.fresh() else ("stale" if sup.running else "gone")
    role = "not-ray-ha" if sup.doubt else role
    return {"node": sup.node, "pid": sup.pid, "role": role, "epoch": state.epoch if state else None,
            "leader": state.leader if state else None, "gcs_address": state.gcs_address if state else None,
            "serving": bool(state and state.serving) and sup.running, "relay": state.relay if state else None,
            "redis_refused": state.redis_refused if state and sup.running else None, "doubt": sup.doubt,
            "paused": bool(state and state.paused) and sup.running}


def render(view: dict[str, Any]) -> str:
    """The view as a readable table, like `patronictl list`."""
    lines = [f"lease {view['key']} on {view['redis']}, epoch {view['epoch']}", ""]
    rows: list[tuple[str, ...]] = [("NODE", "ROLE", "HOST", "PID", "EPOCH", "GCS ADDRESS", "SINCE", "LEASE LEFT")]
    if view["leader"]:
        lead = view["leader"]
        rows.append((lead["node"], "leader", lead["host"], str(lead["pid"]), str(lead["epoch"]),
                     lead["gcs_address"] or "(starting)", _when(lead["since"]), f"{lead['lease_left_s']:.1f}s"))
    for cand in view["standbys"]:
        role = cand["role"] + ("" if cand["priority"] == 1 else " (never leads)" if cand["priority"] == 0
                               else f" (priority {cand['priority']})")
        rows.append((cand["node"], role, str(cand["host"]), str(cand["pid"]), "-", "-", _when(cand["since"]), "-"))
    for fol in view["followers"]:
        rows.append((fol["node"], "follower", str(fol["host"]), str(fol["pid"]),
                     str(fol["epoch"]) if fol["epoch"] is not None else "-", fol["gcs_address"] or "(waiting)",
                     _when(fol["since"]), "-"))
    if len(rows) > 1:
        lines += _table(rows)
    if not view["leader"]:
        lines.append("no leader: nobody holds the lease")
    if view["pause"]:
        lines.append(pause_line(view["pause"]))
    if view["switchover"]:
        sw = view["switchover"]
        lines.append(f"switchover pending: {sw['from']} -> {sw['to'] or 'any standby'}")
    if view["scheduled_switchover"]:
        plan = view["scheduled_switchover"]
        lines.append(f"switchover planned for {_when(plan['at'])} by {plan['by']}: the leader then hands over to "
                     f"{plan['to'] or 'the standby of highest priority'}")
    if view["history"]:
        lines += ["", "recent leadership changes (newest first; more: ray-ha history):"]
        lines += history_table(view["history"])
    if view["local"]:
        lines += ["", "supervisors on this machine:"]
        lines += [f"  {s['node']} ({'pid ' + str(s['pid']) if s['pid'] else 'no process'}): {s['role']}"
                  + (f", epoch {s['epoch']}" if s["role"] in (Role.LEADER, Role.FOLLOWER) and s["epoch"] else "")
                  + (f", relay {s['relay']}" if s["relay"] else "")
                  + (", paused" if s.get("paused") else "")
                  + (f"; STUCK, Redis refuses it: {s['redis_refused']}" if s["redis_refused"] else "")
                  + (f"; not taken for a supervisor: {s['doubt']}" if s["doubt"] else "")
                  for s in view["local"]]
    return "\n".join(lines)


def pause_line(pause: dict[str, Any]) -> str:
    """The pause in one line: who, since when, until when (or that it has no end)."""
    end = f"until {_when(pause['until'])}" if pause["until"] else "with no end (until `ray-ha resume`)"
    why = f" ({pause['reason']})" if pause["reason"] else ""
    return f"PAUSED by {pause['by']} since {_when(pause['since'])}, {end}{why}: no automatic takeover"


def history_table(changes: list[dict[str, Any]]) -> list[str]:
    """Leadership changes as rows: the new leader, the one before and why its tenure ended, and for how
    long no head served (last renewal or release -> the new GCS serving)."""
    rows: list[tuple[str, ...]] = [("EPOCH", "LEADER", "SINCE", "GCS ADDRESS", "BEFORE", "ENDED BECAUSE",
                                    "NO HEAD FOR")]
    for change in changes:
        prev = change["previous"]
        before = "-" if prev is None else prev["node"] + (f" ({prev['epoch']})" if prev["epoch"] else "")
        reason = "-" if prev is None else end_reason(prev["reason"]).text
        gap = "-" if change["headless_s"] is None else f"{change['headless_s']:.1f}s"
        rows.append((str(change["epoch"]), change["node"], _when(change["since"]), change["gcs_address"], before,
                     reason, gap))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _when(stamp: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"
