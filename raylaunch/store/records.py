"""What ray-ha keeps in Redis, as immutable records: the lease holder, the leader's record, a switchover
request, one acquisition attempt. Each decodes what it wrote and tolerates what it did not."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Attempt:
    """The outcome of one acquisition try: won with a new epoch, or who holds the lease now."""

    won: bool
    epoch: int
    holder: Optional[Holder] = None
    ttl_ms: int = 0


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


def serving_record(lease_value: Optional[str], epoch: Optional[str], record_text: Optional[str]) -> Optional[Record]:
    """The record of the leader that holds the lease now (same node, same epoch), else None.

    A record outlives its leader: after a crash it names the old GCS until the next leader serves.
    """
    record = Record.decode(record_text)
    if not lease_value or record is None or str(record.epoch) != str(epoch):
        return None
    return record if Holder.decode(lease_value).node == record.node else None


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

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[StandbyHeartbeat]:
        data = _json_object(text)
        return None if data is None else cls(node=str(data.get("node")), host=data.get("host"),
                                             pid=data.get("pid"), since=data.get("since"),
                                             role=str(data.get("role", "standby")))


@dataclass(frozen=True)
class FollowerHeartbeat:
    """A follow-mode worker's heartbeat: whom it follows (epoch, leader, GCS address; None while waiting)."""

    node: str
    host: Optional[str]
    pid: Optional[int]
    since: Optional[float]
    epoch: Optional[int] = None
    leader: Optional[str] = None
    gcs_address: Optional[str] = None

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional[FollowerHeartbeat]:
        data = _json_object(text)
        return None if data is None else cls(
            node=str(data.get("node")), host=data.get("host"), pid=data.get("pid"), since=data.get("since"),
            epoch=data.get("epoch"), leader=data.get("leader"), gcs_address=data.get("gcs_address"))


def _json_object(text: Optional[str]) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(text or "")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
