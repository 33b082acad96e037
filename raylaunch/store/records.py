"""What ray-ha keeps in Redis, as immutable records: the lease holder, the leader's record, a switchover
request, a pause, one acquisition attempt, how a tenure ended and the history of leadership changes.
Each decodes what it wrote and tolerates what it did not."""

from __future__ import annotations

import enum
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Optional

from raylaunch.proc.net import join_address, split_address


@dataclass(frozen=True)
class Holder:
    """A candidate as written into the lease: node name, host, pid and a per-process random token."""

    node: str
    host: str
    pid: int
    token: str

    @classmethod
    def me(cls, node: str, host: str) -> Holder:
        """This process as a candidate, with a fresh token so a restart never mistakes an old lease for ours."""
        return cls(node=node, host=host, pid=os.getpid(), token=secrets.token_hex(8))

    @cached_property
    def value(self) -> str:
        """The exact string stored in the lease key; renew and release compare against it."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Holder:
        """Parse a lease value; a foreign value is shown as its node name rather than failing."""
        try:
            data = json.loads(text)
            return cls(node=str(data["node"]), host=str(data["host"]), pid=int(data["pid"]),
                       token=str(data["token"]))
        except (ValueError, KeyError, TypeError):
            return cls(node=text[:64], host="?", pid=0, token="")


class EndReason(str, enum.Enum):
    """Why a tenure ended: said by the leader that released the lease, else by the next winner (expired)."""

    EXPIRED = "expired"                # nobody released it: a crash, a cut from Redis, a frozen leader
    SWITCHOVER = "switchover"
    STOP = "stop"
    RENEWAL_FAILED = "renewal-failed"  # no renewal within the renew deadline; released once Redis answered
    REFUSED = "refused"                # Redis refused the renewals (a setting, a permission)
    HEAD_DIED = "head-died"            # `ray start` ended
    GCS_DIED = "gcs-died"
    START_FAILED = "start-failed"
    INTERNAL_ERROR = "internal-error"
    REDIS_LOST = "redis-lost"          # Redis lost the lease key; its leader took it again in a new epoch
    UNKNOWN = "unknown"                # a release by an older ray-ha, or a grant Redis no longer had

    def __str__(self) -> str:
        return self.value

    @property
    def text(self) -> str:
        """The reason in words, for status and history."""
        return _END_TEXT[self]


_END_TEXT = {
    EndReason.EXPIRED: "lease expired unrenewed", EndReason.SWITCHOVER: "released by switchover",
    EndReason.STOP: "released by stop", EndReason.RENEWAL_FAILED: "renewal failed",
    EndReason.REFUSED: "refused by Redis", EndReason.HEAD_DIED: "head died", EndReason.GCS_DIED: "GCS died",
    EndReason.START_FAILED: "head did not start", EndReason.INTERNAL_ERROR: "internal error",
    EndReason.REDIS_LOST: "Redis lost the lease key", EndReason.UNKNOWN: "unknown",
}


def end_reason(text: Optional[str]) -> EndReason:
    """A stored reason; one this version does not know is UNKNOWN."""
    try:
        return EndReason(text or "unknown")
    except ValueError:
        return EndReason.UNKNOWN


@dataclass(frozen=True)
class Ending:
    """How the tenure before ours ended, as a winner finds it: who held it, which epoch, why, and the
    last renewal or the release by Redis's clock (ms; 0 if unknown)."""

    node: str
    epoch: int
    reason: EndReason
    ended_ms: int

    @classmethod
    def from_grant(cls, value: Optional[str], node: Optional[str], epoch: Optional[str], at: Optional[str],
                   reason: Optional[str]) -> Optional[Ending]:
        """The previous grant (store.scripts): released if its value is empty, else it expired; None if
        there was none (the first lease, or a Redis that lost it)."""
        if value is None:
            return None
        released = value == ""
        who = node or ("" if released else Holder.decode(value).node)
        return cls(node=who or "?", epoch=_int(epoch), reason=end_reason(reason) if released else EndReason.EXPIRED,
                   ended_ms=_int(at))

    def seconds_before(self, won_ms: int) -> Optional[float]:
        """From this end to a win at `won_ms` (both by Redis's clock); None where either is unknown."""
        return max(0, won_ms - self.ended_ms) / 1000 if won_ms and self.ended_ms else None

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "epoch": self.epoch, "reason": self.reason.value, "ended_ms": self.ended_ms}

    @classmethod
    def decode(cls, data: Any) -> Optional[Ending]:
        if not isinstance(data, dict):
            return None
        return cls(node=str(data.get("node") or "?"), epoch=_int(data.get("epoch")),
                   reason=end_reason(data.get("reason")), ended_ms=_int(data.get("ended_ms")))


@dataclass(frozen=True)
class Attempt:
    """The outcome of one acquisition try: won with a new epoch (and how the tenure before ended), or who
    holds the lease now; and whether a pause holds automatic takeovers back."""

    won: bool
    epoch: int
    holder: Optional[Holder] = None
    ttl_ms: int = 0
    previous: Optional[Ending] = None
    paused: bool = False
    yielding_to: Optional[str] = None  # the lease is free, but we yield it to this live better candidate
    won_ms: int = 0                    # a win: when, by Redis's clock


@dataclass(frozen=True)
class Record:
    """The leader's record, kept next to the lease so others find its GCS and epoch."""

    node: str
    host: str
    gcs_address: str
    epoch: int
    since: float
    ports: Mapping[str, int] = field(default_factory=dict, hash=False)  # what else the head serves clients on

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[Record]:
        """Parse a stored record; a missing or unreadable one is None (one of an older ray-ha has no ports)."""
        try:
            data = json.loads(text or "")
            ports = data.get("ports") or {}
            return cls(node=str(data["node"]), host=str(data["host"]),
                       gcs_address=str(data["gcs_address"]), epoch=int(data["epoch"]),
                       since=float(data["since"]), ports={str(k): int(v) for k, v in dict(ports).items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def port(self, service: str) -> Optional[int]:
        """The port of `service` ("gcs", "dashboard", "client") on this leader, None if it serves none."""
        return split_address(self.gcs_address)[1] if service == "gcs" else self.ports.get(service)

    def address(self, service: str) -> Optional[str]:
        """host:port of `service` on this leader, None if it serves none."""
        port = self.port(service)
        return None if port is None else join_address(split_address(self.gcs_address)[0], port)


@dataclass(frozen=True)
class Change:
    """One leadership change in the history: the new leader's record, how the tenure before ended, and
    when the new GCS served by Redis's clock (ms). Entries of an older ray-ha have only the record."""

    record: Record
    previous: Optional[Ending] = None
    serving_ms: int = 0

    @property
    def headless_seconds(self) -> Optional[float]:
        """From the last renewal (or the release) of the tenure before to this GCS serving; None if unknown."""
        if self.previous is None or not self.previous.ended_ms or not self.serving_ms:
            return None
        return max(0, self.serving_ms - self.previous.ended_ms) / 1000

    @staticmethod
    def entry(record: Record, previous: Optional[Ending]) -> str:
        """The history entry's JSON, without `serving_ms` (the script adds it by Redis's clock): the
        record's fields, so an older ray-ha reads it as a Record, and `previous`."""
        data = {**asdict(record), "previous": previous.as_dict() if previous else None}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[Change]:
        record = Record.decode(text)
        if record is None:
            return None
        data = _json_object(text) or {}
        return cls(record=record, previous=Ending.decode(data.get("previous")), serving_ms=_int(data.get("serving_ms")))


@dataclass(frozen=True)
class Pause:
    """Maintenance mode: no candidate takes the lease by itself until `until` (wall clock; None: until
    `ray-ha resume`). The leader keeps renewing; a switchover still works."""

    by: str
    since: float
    until: Optional[float] = None
    reason: str = ""

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[Pause]:
        data = _json_object(text)
        if data is None:
            return None
        until = data.get("until")
        return cls(by=str(data.get("by") or "?"), since=float(data.get("since") or 0),
                   until=float(until) if until is not None else None, reason=str(data.get("reason") or ""))


def serving_record(lease_value: Optional[str], epoch: Optional[str], record_text: Optional[str]) -> Optional[Record]:
    """The record of the leader that holds the lease now (same node, same epoch), else None.

    A record outlives its leader: after a crash it names the old GCS until the next leader serves.
    """
    record = Record.decode(record_text)
    if not lease_value or record is None or str(record.epoch) != str(epoch):
        return None
    return record if Holder.decode(lease_value).node == record.node else None


class SwitchoverError(Exception):
    """A switchover that cannot be asked for: no leader, no such standby, one already pending (store.view)."""


@dataclass(frozen=True)
class Switchover:
    """A planned handover: `source` (node name) steps down from `epoch`; `target` ('' for any) takes over."""

    source: str
    target: str
    epoch: int

    def encode(self) -> str:
        return json.dumps({"from": self.source, "to": self.target, "epoch": self.epoch}, sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[Switchover]:
        try:
            data = json.loads(text or "")
            return cls(source=str(data["from"]), target=str(data["to"]), epoch=int(data["epoch"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Scheduled:
    """A switchover planned for `at` (wall clock): the leader of that moment hands over to `target` ('' for
    the best standby then). Redis drops it `window` s after `at` if nobody acted on it."""

    target: str
    at: float
    by: str
    window: float

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[Scheduled]:
        data = _json_object(text)
        try:
            return None if data is None else cls(target=str(data.get("target") or ""), at=float(data["at"]),
                                                 by=str(data.get("by") or "?"), window=float(data["window"]))
        except (KeyError, TypeError, ValueError):
            return None


def describe(holder: Optional[Holder]) -> str:
    """A short `node (host pid)` for log lines."""
    if holder is None:
        return "nobody"
    return f"{holder.node} ({holder.host} pid {holder.pid})"


@dataclass(frozen=True)
class StandbyHeartbeat:
    """A standby's heartbeat, refreshed by each acquisition try (TTL = the lease)."""

    node: str
    host: Optional[str]
    pid: Optional[int]
    since: Optional[float]
    role: str = "standby"
    priority: int = 1

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[StandbyHeartbeat]:
        data = _json_object(text)
        return None if data is None else cls(node=str(data.get("node")), host=data.get("host"),
                                             pid=data.get("pid"), since=data.get("since"),
                                             role=str(data.get("role", "standby")),
                                             priority=_int(data.get("priority", 1)))


@dataclass(frozen=True)
class FollowerHeartbeat:
    """A follow-mode worker's heartbeat: whom it follows (epoch, leader, GCS address; None while waiting) and
    its machine's addresses (none from an older ray-ha: unknown)."""

    node: str
    host: Optional[str]
    pid: Optional[int]
    since: Optional[float]
    epoch: Optional[int] = None
    leader: Optional[str] = None
    gcs_address: Optional[str] = None
    addresses: tuple[str, ...] = ()

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[FollowerHeartbeat]:
        data = _json_object(text)
        return None if data is None else cls(
            node=str(data.get("node")), host=data.get("host"), pid=data.get("pid"), since=data.get("since"),
            epoch=data.get("epoch"), leader=data.get("leader"), gcs_address=data.get("gcs_address"),
            addresses=tuple(str(a) for a in data.get("addresses") or () if isinstance(a, str)))


def _int(value: Any) -> int:
    """A stored integer; anything else is 0 (unknown)."""
    try:
        return int(value or 0)
    except (ValueError, TypeError):
        return 0


def _json_object(text: Optional[str]) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(text or "")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
