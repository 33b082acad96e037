"""The cluster as Redis sees it, for `ray-ha status` and `ray-ha switchover`: leader, standbys, history.

Read-only except for the switchover request. The JSON view's layout is versioned by SCHEMA; fields
are only ever added within a version.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import redis

from raylaunch.lease import Holder, Keys, Record, Switchover, guarded, serving_record
from raylaunch.localstate import LocalSupervisor

SCHEMA = 1
HISTORY_SHOWN = 10


class SwitchoverError(Exception):
    """A switchover that cannot be asked for: no leader, no such standby, one already pending."""


def read_view(client: redis.Redis, keys: Keys, redis_display: str,
              local: list[LocalSupervisor]) -> dict[str, Any]:
    """Everything `ray-ha status` shows, as a JSON-ready dict (schema documented in the README)."""
    return guarded(lambda: _read_view(client, keys, redis_display, local), keys.lease)


def _read_view(client: redis.Redis, keys: Keys, redis_display: str,
               local: list[LocalSupervisor]) -> dict[str, Any]:
    pipe = client.pipeline(transaction=False)
    for name in (keys.lease, keys.epoch, keys.record, keys.switchover):
        pipe.get(name)
    pipe.pttl(keys.lease)
    pipe.lrange(keys.history, 0, HISTORY_SHOWN - 1)
    value, epoch, record_text, switchover, pttl, history = pipe.execute()
    leader = None
    if value:
        holder = Holder.decode(value)
        current = serving_record(value, epoch, record_text)
        leader = {"node": holder.node, "host": holder.host, "pid": holder.pid, "epoch": int(epoch or 0),
                  "gcs_address": current.gcs_address if current else None,
                  "since": current.since if current else None, "lease_left_s": max(0, pttl) / 1000}
    request = Switchover.decode(switchover)
    return {
        "schema": SCHEMA, "key": keys.lease, "redis": redis_display, "epoch": int(epoch or 0),
        "leader": leader,
        "standbys": [c for c in _candidates(client, keys) if not leader or c["node"] != leader["node"]],
        "followers": _followers(client, keys),
        "history": [vars(r) for r in map(Record.decode, history) if r is not None],
        "switchover": {"from": request.source, "to": request.target or None, "epoch": request.epoch}
        if request else None,
        "local": [_local(s) for s in local],
    }


def _candidates(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Standby heartbeats that have not expired, sorted by node."""
    return [{"node": str(data.get("node")), "host": data.get("host"), "pid": data.get("pid"),
             "role": data.get("role", "standby"), "since": data.get("since"), "expires_in_s": ttl}
            for data, ttl in _heartbeats(client, keys.candidate(""))]


def _followers(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """Follower (worker node) heartbeats that have not expired: whom each follows, by node."""
    return [{"node": str(data.get("node")), "host": data.get("host"), "pid": data.get("pid"),
             "epoch": data.get("epoch"), "leader": data.get("leader"), "gcs_address": data.get("gcs_address"),
             "since": data.get("since"), "expires_in_s": ttl}
            for data, ttl in _heartbeats(client, keys.follower(""))]


def _heartbeats(client: redis.Redis, prefix: str) -> list[tuple[dict[str, Any], float]]:
    """(record, seconds left) of every live JSON record under `prefix`, sorted by key."""
    found = []
    for name in sorted(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000)):
        text, ttl = client.get(name), client.pttl(name)
        try:
            data = json.loads(text or "")
        except ValueError:
            continue
        if isinstance(data, dict) and ttl > 0:
            found.append((data, ttl / 1000))
    return found


def _local(sup: LocalSupervisor) -> dict[str, Any]:
    state = sup.state
    role = state.get("role") if sup.running and sup.fresh() else ("stale" if sup.running else "gone")
    return {"node": sup.node, "pid": sup.pid, "role": role, "epoch": state.get("epoch"),
            "leader": state.get("leader"), "gcs_address": state.get("gcs_address"),
            "serving": bool(state.get("serving")) and sup.running,
            "redis_refused": state.get("redis_refused") if sup.running else None}


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


def render(view: dict[str, Any]) -> str:
    """The view as a readable table, like `patronictl list`."""
    lines = [f"lease {view['key']} on {view['redis']}, epoch {view['epoch']}", ""]
    rows: list[tuple[str, ...]] = [("NODE", "ROLE", "HOST", "PID", "EPOCH", "GCS ADDRESS", "SINCE", "LEASE LEFT")]
    if view["leader"]:
        lead = view["leader"]
        rows.append((lead["node"], "leader", lead["host"], str(lead["pid"]), str(lead["epoch"]),
                     lead["gcs_address"] or "(starting)", _when(lead["since"]), f"{lead['lease_left_s']:.1f}s"))
    for cand in view["standbys"]:
        rows.append((cand["node"], cand["role"], str(cand["host"]), str(cand["pid"]), "-", "-",
                     _when(cand["since"]), "-"))
    for fol in view["followers"]:
        rows.append((fol["node"], "follower", str(fol["host"]), str(fol["pid"]),
                     str(fol["epoch"]) if fol["epoch"] is not None else "-", fol["gcs_address"] or "(waiting)",
                     _when(fol["since"]), "-"))
    if len(rows) > 1:
        lines += _table(rows)
    if not view["leader"]:
        lines.append("no leader: nobody holds the lease")
    if view["switchover"]:
        sw = view["switchover"]
        lines.append(f"switchover pending: {sw['from']} -> {sw['to'] or 'any standby'}")
    if view["history"]:
        lines += ["", "recent leaders (newest first):"]
        lines += _table([("EPOCH", "NODE", "GCS ADDRESS", "SINCE")] + [
            (str(h["epoch"]), h["node"], h["gcs_address"], _when(h["since"])) for h in view["history"]])
    if view["local"]:
        lines += ["", "supervisors on this machine:"]
        lines += [f"  {s['node']} (pid {s['pid']}): {s['role']}"
                  + (f", epoch {s['epoch']}" if s["role"] in ("leader", "follower") and s["epoch"] else "")
                  + (f"; STUCK, Redis refuses it: {s['redis_refused']}" if s["redis_refused"] else "")
                  for s in view["local"]]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _when(stamp: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def request_switchover(client: redis.Redis, keys: Keys, target: Optional[str], ttl: float) -> Switchover:
    """Ask the current leader to hand over to `target` (any standby if None); checks it can happen."""
    view = read_view(client, keys, "", [])
    leader = view["leader"]
    if not leader:
        raise SwitchoverError("there is no leader to switch over from")
    standbys = [c["node"] for c in view["standbys"]]
    if target == leader["node"]:
        raise SwitchoverError(f"{target} already leads")
    if target and target not in standbys:
        raise SwitchoverError(f"no live standby named {target} (standbys: {', '.join(standbys) or 'none'})")
    if not standbys:
        raise SwitchoverError("there is no standby to take over")
    request = Switchover(source=leader["node"], target=target or "", epoch=leader["epoch"])
    if not guarded(lambda: client.set(keys.switchover, request.encode(), nx=True, px=int(ttl * 1000)), keys.lease):
        raise SwitchoverError("another switchover is already pending")
    return request


def await_switchover(client: redis.Redis, keys: Keys, request: Switchover,
                     timeout: float) -> Optional[dict[str, Any]]:
    """Wait for a new leader in a later epoch; returns its view entry, or None (request withdrawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = read_view(client, keys, "", [])["leader"]
        if leader and leader["epoch"] > request.epoch and leader["gcs_address"]:
            return leader
        time.sleep(0.1)
    guarded(lambda: client.delete(keys.switchover) if client.get(keys.switchover) == request.encode() else 0,
            keys.lease)
    return None
