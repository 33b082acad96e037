"""The cluster as Redis sees it: leader, standbys, followers, the history of leadership changes, a pending
switchover, a pause; and the writes an operator makes: the switchover request, pause and resume. Who
leads is read through store.leader."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, cast

from raylaunch.store.keyspace import Keyspace
from raylaunch.store.leader import Leadership, leadership_from, queue_leadership, read_leadership
from raylaunch.store.records import (
    Change,
    FollowerHeartbeat,
    Pause,
    Scheduled,
    StandbyHeartbeat,
    Switchover,
    SwitchoverError,
)

#: How many leadership changes `status` shows (`ray-ha history` shows more).
HISTORY_SHOWN = 5
M = TypeVar("M", StandbyHeartbeat, FollowerHeartbeat)


@dataclass(frozen=True)
class Live:
    """A heartbeat record with the seconds it has left."""

    record: Any  # StandbyHeartbeat or FollowerHeartbeat
    expires_in: float


@dataclass(frozen=True)
class ClusterView:
    """Everything Redis holds about one cluster, read in two round trips (plus a scan of heartbeats)."""

    key: str                     # the lease key
    leadership: Leadership
    standbys: tuple[Live, ...]   # live candidates other than the leader, by node
    followers: tuple[Live, ...]  # live follow-mode workers, by node
    history: tuple[Change, ...]  # recent leadership changes, newest first
    switchover: Optional[Switchover]
    pause: Optional[Pause] = None
    scheduled: Optional[Scheduled] = None

    @property
    def leader_node(self) -> Optional[str]:
        return self.leadership.holder.node if self.leadership.holder else None


def read_cluster(keyspace: Keyspace) -> ClusterView:
    """The whole view (status, switchover)."""
    return keyspace.guard(lambda: _read_cluster(keyspace))


def _read_cluster(keyspace: Keyspace) -> ClusterView:
    keys = keyspace.keys
    pipe = keyspace.client.pipeline(transaction=False)
    queue_leadership(pipe, keys)
    pipe.get(keys.switchover)
    pipe.lrange(keys.history, 0, HISTORY_SHOWN - 1)
    pipe.get(keys.pause)
    pipe.get(keys.scheduled)
    replies = pipe.execute()
    leadership = leadership_from(replies)
    leader = leadership.holder.node if leadership.holder else None
    standbys = [c for c in _heartbeats(keyspace, keys.candidate(""), StandbyHeartbeat) if c.record.node != leader]
    return ClusterView(key=keys.lease, leadership=leadership, standbys=tuple(standbys),
                       followers=tuple(_heartbeats(keyspace, keys.follower(""), FollowerHeartbeat)),
                       history=_changes(replies[5]), switchover=Switchover.decode(replies[4]),
                       pause=Pause.decode(replies[6]), scheduled=Scheduled.decode(replies[7]))


def follower_addresses(keyspace: Keyspace) -> Optional[frozenset[str]]:
    """The addresses of the machines whose follower's heartbeat is live; None if one names none (an older
    ray-ha: unknown)."""
    found: set[str] = set()
    for live in _heartbeats(keyspace, keyspace.keys.follower(""), FollowerHeartbeat):
        if not live.record.addresses:
            return None
        found.update(live.record.addresses)
    return frozenset(found)


def read_history(keyspace: Keyspace, count: int) -> tuple[Change, ...]:
    """The newest `count` leadership changes, newest first (Redis keeps store.scripts.HISTORY_LENGTH)."""
    keys = keyspace.keys
    return _changes(keyspace.guard(lambda: cast(list[str], keyspace.client.lrange(keys.history, 0, max(0, count - 1)))))


def _changes(entries: list[str]) -> tuple[Change, ...]:
    return tuple(c for c in map(Change.decode, entries) if c is not None)


def pause_cluster(keyspace: Keyspace, by: str, duration: Optional[float], reason: str = "") -> Pause:
    """Pause automatic takeovers for `duration` s (None: until resumed); replaces a pause that stands."""
    now = time.time()
    pause = Pause(by=by, since=now, until=now + duration if duration else None, reason=reason)
    keys = keyspace.keys
    keyspace.guard(lambda: keyspace.client.set(keys.pause, pause.encode(),
                                               px=max(1, int(duration * 1000)) if duration else None))
    return pause


def resume_cluster(keyspace: Keyspace) -> Optional[Pause]:
    """End the pause; returns the one that stood, or None if the cluster was not paused."""
    keys = keyspace.keys

    def exchange() -> Optional[str]:
        pipe = keyspace.client.pipeline(transaction=True)
        pipe.get(keys.pause)
        pipe.delete(keys.pause)
        return cast(Optional[str], pipe.execute()[0])
    return Pause.decode(keyspace.guard(exchange))


def _heartbeats(keyspace: Keyspace, prefix: str, kind: type[M]) -> list[Live]:
    """Every live record under `prefix`, sorted by key."""
    names = sorted(keyspace.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
    pipe = keyspace.client.pipeline(transaction=False)
    for name in names:
        pipe.get(name)
        pipe.pttl(name)
    replies = pipe.execute() if names else []
    found = []
    for text, ttl in zip(replies[::2], replies[1::2]):
        record = kind.decode(text)
        if record is not None and ttl > 0:
            found.append(Live(record, ttl / 1000))
    return found


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


def request_switchover(keyspace: Keyspace, target: Optional[str], ttl: float) -> Switchover:
    """Ask the current leader to hand over to `target` (if None, the live standby of highest priority);
    checks it can happen."""
    view = read_cluster(keyspace)
    holder = view.leadership.holder
    if holder is None:
        raise SwitchoverError("there is no leader to switch over from")
    priority = {live.record.node: live.record.priority for live in view.standbys}
    standbys = sorted(priority)
    if target == holder.node:
        raise SwitchoverError(f"{target} already leads")
    if target and target not in standbys:
        raise SwitchoverError(f"no live standby named {target} (standbys: {', '.join(standbys) or 'none'})")
    if target and priority[target] <= 0:
        raise SwitchoverError(f"{target} has priority 0: it never leads")
    if not standbys:
        raise SwitchoverError("there is no standby to take over")
    if not target:  # the best one: the highest priority, then the name, so the choice is repeatable
        target = min(standbys, key=lambda node: (-priority[node], node))
        if priority[target] <= 0:
            raise SwitchoverError(f"no standby may lead: {', '.join(standbys)} all have priority 0")
    request = Switchover(source=holder.node, target=target, epoch=view.leadership.epoch)
    keys = keyspace.keys
    if not keyspace.guard(lambda: keyspace.client.set(keys.switchover, request.encode(), nx=True, px=int(ttl * 1000))):
        raise SwitchoverError("another switchover is already pending")
    return request


def await_switchover(keyspace: Keyspace, request: Switchover, timeout: float) -> Optional[Leadership]:
    """Wait for a new leader serving in a later epoch; returns it, or None (the request is withdrawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read_leadership(keyspace)
        if now.serving is not None and now.epoch > request.epoch:
            return now
        time.sleep(0.1)
    keys = keyspace.keys
    keyspace.guard(lambda: keyspace.client.delete(keys.switchover)
                if keyspace.client.get(keys.switchover) == request.encode() else 0)
    return None


def schedule_switchover(keyspace: Keyspace, plan: Scheduled) -> Scheduled:
    """Plan a switchover for `plan.at`; refused if that is not in the future or one is already planned."""
    left = plan.at - time.time()
    if left <= 0:
        raise SwitchoverError(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(plan.at))} is not in the future")
    keys = keyspace.keys
    if not keyspace.guard(lambda: keyspace.client.set(keys.scheduled, plan.encode(), nx=True,
                                                      px=int((left + plan.window) * 1000))):
        raise SwitchoverError("a switchover is already scheduled (see ray-ha status; switchover --cancel)")
    return plan


def cancel_switchover(keyspace: Keyspace) -> tuple[Optional[Scheduled], Optional[Switchover]]:
    """Withdraw the planned switchover and the pending request; returns what there was."""
    keys = keyspace.keys

    def exchange() -> list[Optional[str]]:
        pipe = keyspace.client.pipeline(transaction=True)
        pipe.get(keys.scheduled)
        pipe.get(keys.switchover)
        pipe.delete(keys.scheduled, keys.switchover)
        return cast(list[Optional[str]], pipe.execute()[:2])
    scheduled, request = keyspace.guard(exchange)
    return Scheduled.decode(scheduled), Switchover.decode(request)


def pending_switchover(keyspace: Keyspace, now: float) -> Optional[Switchover]:
    """For the leader, after a renewal: the pending request; else a planned one, made a request (to the
    standby it names, or the best one then) once due, or shown as not yet asked of anyone (source '')
    before. SwitchoverError if a due one cannot happen (it is dropped)."""
    keys = keyspace.keys

    def exchange() -> list[Optional[str]]:
        pipe = keyspace.client.pipeline(transaction=False)
        pipe.get(keys.switchover)
        pipe.get(keys.scheduled)
        return cast(list[Optional[str]], pipe.execute())
    request_text, planned_text = keyspace.guard(exchange)
    request, planned = Switchover.decode(request_text), Scheduled.decode(planned_text)
    if request is not None or planned is None:
        return request
    if planned.at > now:
        return Switchover(source="", target=planned.target, epoch=0)
    keyspace.guard(lambda: keyspace.client.delete(keys.scheduled))
    return request_switchover(keyspace, planned.target or None, ttl=planned.window)
