"""The leader lease in Redis: acquire with a fencing epoch, renew, release, the leader's record.

No Ray and no processes here. Every write is a small Lua script that acts only while the key holds
our value, so a lease that changed hands is never extended or deleted by its old owner. "Not ours"
is a False; "Redis did not answer" is RedisUnavailable; anything Redis refuses is LeaseStoreError.
"""

from __future__ import annotations

import json
from functools import cached_property
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, TypeVar, cast

import redis

from raylaunch.stopflag import StopSignal

T = TypeVar("T")

# KEYS[1] lease key, KEYS[2] epoch key, KEYS[3] our candidate key, KEYS[4] switchover request,
# KEYS[5] the last grant (a hash: the holder's value and Redis's time in ms);
# ARGV[1] our value, ARGV[2] lease in ms, ARGV[3] our node name, ARGV[4] our candidate record,
# ARGV[5] the highest epoch we have seen.
# Takes the lease if nobody holds it and bumps the fencing epoch in the same step, above every epoch
# we have seen, so epochs keep rising even if Redis lost the epoch key (a restart without it). A pending
# switchover holds back the leader that asked to step down and every node it did not name.
# A loser refreshes its candidate record (TTL = lease), so standbys cost one command per try.
# Returns {1, new epoch} when won, else {0, holder value, current epoch, lease ms left}.
ACQUIRE = """
local held_back = false
local request = redis.call('GET', KEYS[4])
if request then
  local ok, r = pcall(cjson.decode, request)
  held_back = ok and type(r) == 'table' and (r['from'] == ARGV[3] or (r['to'] ~= '' and r['to'] ~= ARGV[3]))
end
if not held_back and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3], KEYS[4])
  local epoch = redis.call('INCR', KEYS[2])
  if epoch <= tonumber(ARGV[5]) then
    epoch = tonumber(ARGV[5]) + 1
    redis.call('SET', KEYS[2], epoch)
  end
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[5], 'value', ARGV[1], 'at', now[1] * 1000 + math.floor(now[2] / 1000))
  return {1, epoch}
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
return {0, redis.call('GET', KEYS[1]) or '', epoch, redis.call('PTTL', KEYS[1])}
"""

# KEYS[1] lease key, KEYS[2] epoch key, KEYS[3] the last grant; ARGV[1] our value, ARGV[2] lease in ms,
# ARGV[3] our epoch.
# Extends the lease while it holds our value, noting the grant's time (Redis's clock). If the key is
# gone while our last grant should still run, Redis lost it (a restart, a failover, a flush): take it
# again with an epoch above both the stored one and ours. If our grant simply ran out, or the last
# grant was someone else's or released, this is a late or stale renewal: it takes nothing.
# Returns the epoch we hold, or 0 if the lease is not ours.
RENEW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[3], 'value', ARGV[1], 'at', now)
  return tonumber(ARGV[3])
end
if holder then
  return 0
end
local last = redis.call('HMGET', KEYS[3], 'value', 'at')
local lost = (not last[1]) or (last[1] == ARGV[1] and now - tonumber(last[2]) < tonumber(ARGV[2]))
if not lost then
  return 0
end
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') or 0, tonumber(ARGV[3])) + 1
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], epoch)
redis.call('HSET', KEYS[3], 'value', ARGV[1], 'at', now)
return epoch
"""

# KEYS[1] lease key, KEYS[2] the last grant; ARGV[1] our value, ARGV[2] release channel.
# Deletes the lease only if ours, marks the grant released (so a late renewal cannot take it back)
# and wakes the standbys. Returns 1 if released, 0 if not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'value', '', 'at', 0)
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS[1] lease key, KEYS[2] record key, KEYS[3] history list; ARGV[1] our value, ARGV[2] record
# JSON, ARGV[3] history length. Publishes the leader's record only while the lease is ours, and
# prepends it to the bounded history of leaders. Returns 1 if written, 0 if not ours.
WRITE_RECORD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('LPUSH', KEYS[3], ARGV[2])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
  return 1
end
return 0
"""

#: How many leader records the history list keeps.
HISTORY_LENGTH = 50


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer within the Redis timeout."""


class ReplicasBehind(RedisUnavailable):
    """Redis took a lease write, but fewer replicas than required confirmed it in time."""


class LeaseStoreError(Exception):
    """Redis answered but refused: wrong credentials, a key of the wrong type, no Lua scripting."""


@dataclass(frozen=True)
class Holder:
    """A candidate as written into the lease: node name, host, pid and a per-process random token."""

    node: str
    host: str
    pid: int
    token: str

    @classmethod
    def me(cls, node: str, host: str) -> "Holder":
        """This process as a candidate, with a fresh token so a restart never mistakes an old lease for ours."""
        return cls(node=node, host=host, pid=os.getpid(), token=secrets.token_hex(8))

    @cached_property
    def value(self) -> str:
        """The exact string stored in the lease key; renew and release compare against it."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "Holder":
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

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional["Record"]:
        """Parse a stored record; a missing or unreadable one is None."""
        try:
            data = json.loads(text or "")
            return cls(node=str(data["node"]), host=str(data["host"]),
                       gcs_address=str(data["gcs_address"]), epoch=int(data["epoch"]),
                       since=float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


def serving_record(lease_value: Optional[str], epoch: Optional[str], record_text: Optional[str]) -> Optional[Record]:
    """The record of the leader that holds the lease now (same node, same epoch), else None.

    A record outlives its leader: after a crash it names the old GCS until the next leader serves.
    """
    record = Record.decode(record_text)
    if not lease_value or record is None or str(record.epoch) != str(epoch):
        return None
    return record if Holder.decode(lease_value).node == record.node else None


@dataclass(frozen=True)
class Keys:
    """The Redis names that live beside one lease key."""

    lease: str

    @property
    def epoch(self) -> str:
        return f"{self.lease}:epoch"

    @property
    def record(self) -> str:
        return f"{self.lease}:record"

    @property
    def history(self) -> str:
        return f"{self.lease}:history"

    @property
    def switchover(self) -> str:
        return f"{self.lease}:switchover"

    @property
    def grant(self) -> str:
        return f"{self.lease}:grant"

    @property
    def channel(self) -> str:
        return f"{self.lease}:released"

    def candidate(self, node: str) -> str:
        return f"{self.lease}:candidate:{node}"

    def follower(self, node: str) -> str:
        return f"{self.lease}:follower:{node}"


@dataclass(frozen=True)
class Switchover:
    """A planned handover: `source` (node name) steps down from `epoch`; `target` ('' for any) takes over."""

    source: str
    target: str
    epoch: int

    def encode(self) -> str:
        return json.dumps({"from": self.source, "to": self.target, "epoch": self.epoch}, sort_keys=True)

    @classmethod
    def decode(cls, text: Optional[str]) -> Optional["Switchover"]:
        try:
            data = json.loads(text or "")
            return cls(source=str(data["from"]), target=str(data["to"]), epoch=int(data["epoch"]))
        except (ValueError, KeyError, TypeError):
            return None


class RedisLease:
    """One candidate's view of the lease key `key` (epoch, record and channel live beside it)."""

    def __init__(self, client: redis.Redis, key: str, me: Holder, lease_duration: float,
                 min_replicas: int = 0, wait_timeout: float = 1.0) -> None:
        self.client, self.key, self.me = client, key, me
        self.min_replicas, self.wait_ms = min_replicas, max(1, int(wait_timeout * 1000))
        self.keys = Keys(key)
        self.ttl_ms = max(1, int(lease_duration * 1000))
        self.started = time.time()
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._write_record = client.register_script(WRITE_RECORD)
        self._pubsub: Optional[redis.client.PubSub] = None
        self.seen_epoch = 0  # the highest epoch any reply has shown us: a floor for the next one we take

    # Public methods translate Redis errors; their _do_ twins talk to Redis.

    def check(self) -> None:
        """Fail early on what would fail later: no answer, bad credentials, no Lua, wrong key type."""
        self._guard(self._do_check)

    def try_acquire(self) -> Attempt:
        """Take the lease if it is free (SET NX PX); a win increments the fencing epoch atomically."""
        return self._guard(self._do_try_acquire)

    def renew(self, epoch: int) -> int:
        """Extend our lease of `epoch` by the full duration; returns the epoch we hold, 0 if not ours.

        A higher epoch than ours means Redis had lost the key and we took it again.
        """
        return self._guard(lambda: self._replicated(self._saw(int(self._renew(
            keys=[self.key, self.keys.epoch, self.keys.grant], args=[self.me.value, self.ttl_ms, epoch])))))

    def release(self) -> bool:
        """Delete our lease and notify standbys; False if it was not ours (nothing is touched)."""
        return self._guard(
            lambda: self._release(keys=[self.key, self.keys.grant], args=[self.me.value, self.keys.channel]) == 1)

    def write_record(self, gcs_address: str, epoch: int, since: float) -> bool:
        """Publish our GCS address and epoch next to the lease; False if the lease is not ours."""
        record = Record(node=self.me.node, host=self.me.host, gcs_address=gcs_address,
                        epoch=epoch, since=since)
        text = json.dumps(asdict(record), sort_keys=True)
        return self._guard(lambda: self._write_record(keys=[self.key, self.keys.record, self.keys.history],
                                                      args=[self.me.value, text, HISTORY_LENGTH]) == 1)

    def read_record(self) -> Optional[Record]:
        """The last leader's record, or None if none was written."""
        return Record.decode(self._guard(lambda: cast(Optional[str], self.client.get(self.keys.record))))

    def switchover_request(self) -> Optional[Switchover]:
        """The pending planned handover, if any (the leader checks it once per renewal)."""
        return Switchover.decode(self._guard(lambda: cast(Optional[str], self.client.get(self.keys.switchover))))

    def forget_candidate(self) -> None:
        """Remove our standby heartbeat when we leave, so status stops listing us at once."""
        self._guard(lambda: self.client.delete(self.keys.candidate(self.me.node)))

    def wait_released(self, timeout: float, stop: StopSignal) -> bool:
        """Wait up to `timeout` s for a release notification; returns early (False) when `stop` is set.

        A broken subscription falls back to plain waiting: polling still finds a free lease.
        """
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._do_wait_message(min(left, 0.2), stop):
                return True
        return False

    def close(self) -> None:
        """Drop the subscription and the connection pool."""
        self._drop_pubsub()
        self.client.close()

    def _do_check(self) -> None:
        self.client.ping()
        for script in (self._acquire, self._renew, self._release, self._write_record):
            self.client.script_load(script.script)  # fails here, not mid-campaign, without Lua
        expected = {self.key: "string", self.keys.epoch: "string", self.keys.record: "string",
                    self.keys.history: "list", self.keys.switchover: "string", self.keys.grant: "hash"}
        for key, wanted in expected.items():
            kind = str(self.client.type(key))
            if kind not in ("none", wanted):
                raise LeaseStoreError(f"{'lease key' if key == self.key else 'key'} {key!r} holds a {kind}, "
                                      f"not what ray-ha keeps there; delete it or choose another --ha-key")

    def _do_try_acquire(self) -> Attempt:
        candidate = json.dumps({"node": self.me.node, "host": self.me.host, "pid": self.me.pid,
                                "role": "standby", "since": self.started}, sort_keys=True)
        reply = self._acquire(keys=[self.key, self.keys.epoch, self.keys.candidate(self.me.node),
                                    self.keys.switchover, self.keys.grant],
                              args=[self.me.value, self.ttl_ms, self.me.node, candidate, self.seen_epoch])
        if int(reply[0]) == 1:
            self._drop_pubsub()  # a leader has no use for release notifications
            try:
                self._replicated(True)
            except ReplicasBehind:
                self._release(keys=[self.key, self.keys.grant], args=[self.me.value, self.keys.channel])
                raise
            return Attempt(won=True, epoch=self._saw(int(reply[1])), holder=self.me, ttl_ms=self.ttl_ms)
        holder = Holder.decode(reply[1]) if reply[1] else None
        return Attempt(won=False, epoch=self._saw(int(reply[2])), holder=holder, ttl_ms=int(reply[3]))

    def _replicated(self, result: T) -> T:
        """With min_replicas, `result` stands only once WAIT confirms our writes on that many replicas.

        A lease write that a Redis failover could lose is no lease: ReplicasBehind, like no answer.
        WAIT gets half the Redis timeout so it returns before the socket gives up.
        """
        if self.min_replicas and result:
            confirmed = int(self.client.wait(self.min_replicas, self.wait_ms))
            if confirmed < self.min_replicas:
                raise ReplicasBehind(f"only {confirmed} of {self.min_replicas} required replica(s) confirmed "
                                     f"the lease write within {self.wait_ms} ms")
        return result

    def _saw(self, epoch: int) -> int:
        """Remember the highest epoch seen; returns `epoch`."""
        self.seen_epoch = max(self.seen_epoch, epoch)
        return epoch

    def _do_wait_message(self, timeout: float, stop: StopSignal) -> bool:
        try:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self.keys.channel)
            message = self._pubsub.get_message(timeout=timeout)
            return bool(message and message.get("type") == "message")
        except (redis.RedisError, OSError):
            self._drop_pubsub()
            stop.wait(timeout)
            return False

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (redis.RedisError, OSError):
                pass
            self._pubsub = None

    def _guard(self, call: Callable[[], T]) -> T:
        return guarded(call, self.key)


def guarded(call: Callable[[], T], key: str) -> T:
    """Run one Redis exchange, turning redis-py's errors into this module's two exception types."""
    try:
        return call()
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        raise LeaseStoreError(f"Redis refused the credentials ({exc})") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"Redis did not answer: {exc}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise LeaseStoreError(f"the Redis user may not run what ray-ha needs ({exc})") from None
    except redis.ResponseError as exc:
        raise LeaseStoreError(_explain(str(exc), key)) from None


def _explain(message: str, key: str) -> str:
    """One readable line for a Redis error reply."""
    if "NOAUTH" in message or "WRONGPASS" in message or "AUTH" in message:
        return f"Redis refused the credentials ({message})"
    if "WRONGTYPE" in message:
        return f"lease key {key!r} (or its :epoch/:record keys) holds a value of the wrong type"
    if "unknown command" in message.lower() or "NOSCRIPT" in message:
        return f"Redis does not run Lua scripts, which ray-ha needs ({message})"
    return f"Redis error: {message}"


def describe(holder: Optional[Holder]) -> str:
    """A short `node (host pid)` for log lines."""
    if holder is None:
        return "nobody"
    return f"{holder.node} ({holder.host} pid {holder.pid})"

