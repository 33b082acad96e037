"""The leader lease in Redis: acquire with a fencing epoch, renew, release, the leader's record.

No Ray and no processes here. Every write is a small Lua script that acts only while the key holds
our value, so a lease that changed hands is never extended or deleted by its old owner. All keys of
one lease share a hash tag (Keys), so a cluster-mode Redis runs the scripts on one shard. "Not ours"
is a False; a Redis that did not answer, or is busy or failing over, is RedisUnavailable (transient);
a refusal that goes on until someone changes a setting is LeaseStoreError (permanent).
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, TypeVar, cast

import redis

from raylaunch.config import check_key_name
from raylaunch.redisconn import drop_connections, on_slot_owner
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

# KEYS: ray-ha's keys of one lease, the last a name it never sets. Returns the type of each key but the
# last, after one harmless write (DEL of that last key): a read-only replica refuses the write, a
# cluster refuses keys in different hash slots, an ACL user without access to them is refused. The
# start check runs it, so none of these refusals first shows mid-campaign.
CHECK = """
local types = {}
for i = 1, #KEYS - 1 do
  types[i] = redis.call('TYPE', KEYS[i])['ok']
end
redis.call('DEL', KEYS[#KEYS])
return types
"""

#: How many leader records the history list keeps.
HISTORY_LENGTH = 50


class RedisUnavailable(Exception):
    """Transient: Redis could not be reached, did not answer within the Redis timeout, or is busy
    (loading, failing over, out of memory); trying again may succeed."""


class ReplicasBehind(RedisUnavailable):
    """Redis took a lease write, but fewer replicas than required confirmed it in time."""


class LeaseStoreError(Exception):
    """Permanent: Redis answered and refuses, and goes on refusing until someone changes a setting.

    `cause` names which refusal (credentials, permission, wrong-type, crossslot, readonly, moved, no-lua,
    unknown-command, old-layout, other); the message says what to do. At start this is a
    configuration error (exit 2); while running a leader counts it as a failed renewal, and a standby
    or follower reports itself stuck on it.
    """

    def __init__(self, message: str, cause: str = "other") -> None:
        super().__init__(message)
        self.cause = cause


#: Refusals by the start of Redis's error reply: (cause, what it means and what to do). {key} is the
#: lease key.
REFUSALS: dict[str, tuple[str, str]] = {
    "NOAUTH": ("credentials", "Redis wants a password: set --redis-password or RAY_REDIS_PASSWORD"),
    "WRONGPASS": ("credentials", "Redis refused the credentials: check --redis-password / "
                                 "RAY_REDIS_PASSWORD and --redis-username"),
    "NOPERM": ("permission", "the Redis user may not run what ray-ha needs: give it the keys and channels "
                             "{key}* and the commands it runs on them (for example ACL SETUSER <user> "
                             "resetchannels ~{key}* &{key}* +@all)"),
    "WRONGTYPE": ("wrong-type", "a key of lease {key} holds a value of the wrong type: delete it or "
                                "choose another --ha-key"),
    "CROSSSLOT": ("crossslot", "Redis refused keys in different hash slots; every key of ray-ha's "
                               "shares the hash tag of {key}, so something between ray-ha and Redis "
                               "(a proxy?) changes them"),
    "READONLY": ("readonly", "RAY_REDIS_ADDRESS reaches a read-only replica: point it at the master "
                             "(or at a Sentinel that watches it)"),
    "MOVED": ("moved", "RAY_REDIS_ADDRESS is a Redis Cluster node, but ray-ha could not tell (is INFO "
                       "denied to its user?): allow INFO"),
    "NOSCRIPT": ("no-lua", "Redis does not run Lua scripts, which ray-ha needs: enable EVAL, EVALSHA "
                           "and SCRIPT"),
}
#: Error replies that pass by themselves: Redis starting, busy, failing over, short of memory or disk.
PASSING = ("LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "OOM", "MISCONF", "NOREPLICAS", "ASK")
#: redis-py strips the error code off the reply and names it by class instead (which classes exist
#: depends on the release); the code is put back before the reply is judged.
CODE_CLASSES = (("ReadOnlyError", "READONLY"), ("NoPermissionError", "NOPERM"), ("NoScriptError", "NOSCRIPT"),
                ("ClusterCrossSlotError", "CROSSSLOT"), ("MovedError", "MOVED"), ("AskError", "ASK"),
                ("TryAgainError", "TRYAGAIN"), ("ClusterDownError", "CLUSTERDOWN"),
                ("MasterDownError", "MASTERDOWN"), ("OutOfMemoryError", "OOM"))


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
    """Every Redis name of one cluster's lease, from its name (`--ha-key`, braces not allowed).

    Each key carries the hash tag `{name}`, so all fall in one hash slot: a cluster-mode Redis runs
    ray-ha's multi-key scripts on the one shard that owns it. The ACL fence's users are not keys and
    carry no tag.
    """

    name: str

    def __post_init__(self) -> None:
        check_key_name(self.name)  # a ConfigError (a ValueError) otherwise

    @property
    def lease(self) -> str:
        return "{" + self.name + "}"

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

    @property
    def probe(self) -> str:
        """A name ray-ha never sets: the start check's harmless write."""
        return f"{self.lease}:probe"

    def candidate(self, node: str) -> str:
        return f"{self.lease}:candidate:{node}"

    def follower(self, node: str) -> str:
        return f"{self.lease}:follower:{node}"

    @property
    def gcs_user_prefix(self) -> str:
        """The ACL fence's per-epoch GCS users are this prefix and the epoch."""
        return f"{self.name}:gcs:e"

    @property
    def legacy_lease(self) -> str:
        """Where ray-ha before 0.2 kept this lease (no hash tag): checked at start, never written."""
        return self.name

    def types(self) -> dict[str, str]:
        """The keys ray-ha keeps, each with the Redis type it must have if it exists."""
        return {self.lease: "string", self.epoch: "string", self.record: "string", self.history: "list",
                self.switchover: "string", self.grant: "hash"}


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

    def __init__(self, client: redis.Redis, keys: Keys, me: Holder, lease_duration: float,
                 min_replicas: int = 0, wait_timeout: float = 1.0) -> None:
        self.client, self.keys, self.me = client, keys, me
        self.key = keys.lease
        self.min_replicas, self.wait_ms = min_replicas, max(1, int(wait_timeout * 1000))
        self.ttl_ms = max(1, int(lease_duration * 1000))
        self.started = time.time()
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._write_record = client.register_script(WRITE_RECORD)
        self._check = client.register_script(CHECK)
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
        for script in (self._acquire, self._renew, self._release, self._write_record, self._check):
            self.client.script_load(script.script)  # fails here, not mid-campaign, without Lua
        expected = self.keys.types()
        found = self._check(keys=[*expected, self.keys.probe])
        for (key, wanted), kind in zip(expected.items(), found):
            if str(kind) not in ("none", wanted):
                raise LeaseStoreError(f"{'lease key' if key == self.key else 'key'} {key!r} holds a {kind}, "
                                      f"not what ray-ha keeps there; delete it or choose another --ha-key",
                                      "wrong-type")
        self._refuse_legacy_lease()

    def _refuse_legacy_lease(self) -> None:
        """A lease held on the layout before 0.2 means candidates of an older ray-ha run: two heads."""
        legacy = self.keys.legacy_lease
        try:
            if str(self.client.type(legacy)) != "string" or int(self.client.pttl(legacy)) <= 0:
                return
        except redis.exceptions.NoPermissionError:
            return  # a user given only the new layout's keys (as advised) cannot see the old one
        holder = Holder.decode(str(self.client.get(legacy) or ""))
        if holder.token:
            raise LeaseStoreError(
                f"{holder.node} holds this cluster's lease on the key layout of ray-ha before 0.2 ({legacy!r}); "
                "stop every candidate of this cluster, then start them all with this version", "old-layout")

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
            confirmed = int(on_slot_owner(self.client, self.key, "WAIT", self.min_replicas, self.wait_ms))
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
        try:
            return guarded(call, self.key)
        except LeaseStoreError as exc:
            if exc.cause == "readonly":  # a name that moved to a new master is looked up again next time
                drop_connections(self.client)
            raise


def guarded(call: Callable[[], T], key: str) -> T:
    """Run one Redis exchange, turning redis-py's errors into RedisUnavailable (transient) or
    LeaseStoreError (permanent, with what to do)."""
    try:
        return call()
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        raise LeaseStoreError(f"{REFUSALS['WRONGPASS'][1]} ({exc})", "credentials") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"Redis did not answer: {exc}") from None
    except redis.ResponseError as exc:
        raise refusal(error_reply(exc), key) from None
    except redis.exceptions.RedisClusterException as exc:
        if "same key slot" in str(exc) or "CROSSSLOT" in str(exc):
            raise refusal(f"CROSSSLOT {exc}", key) from None
        raise RedisUnavailable(f"Redis Cluster: {exc}") from None


#: How Redis 6.2 wraps an error raised inside a script: taken off, so the reply reads as the error itself.
_SCRIPT_WRAPPER = re.compile(r"^(?:ERR )?Error running script \(call to f_\w+\): (?:@user_script: ?\d+: )*-?")


def error_reply(exc: Exception) -> str:
    """Redis's error reply as Redis sent it, its code first (redis-py may have taken it off), and
    unwrapped from Redis 6.2's script error."""
    text = str(exc).strip()
    code = getattr(exc, "status_code", None) or next(
        (code for name, code in CODE_CLASSES if isinstance(exc, getattr(redis.exceptions, name, ()))), None)
    return _SCRIPT_WRAPPER.sub("", f"{code} {text}" if code and not text.startswith(code) else text)


def _has_code(reply: str, code: str) -> bool:
    """True if `reply` is, or wraps, an error with this code (Redis 6.2 wraps a script's errors in ERR:
    `ERR Error running script ...: @user_script:21: WRONGTYPE ...` or `...: -READONLY ...`)."""
    return re.search(rf"(?:^|[\s:-]){code}(?:\s|$)", reply) is not None


def refusal(reply: str, key: str) -> Exception:
    """The exception for one error reply of Redis: LeaseStoreError if it will not pass by itself."""
    if any(_has_code(reply, code) for code in PASSING):
        return RedisUnavailable(f"Redis is busy or failing over: {reply}")
    reply = reply.split(", with args beginning with")[0]  # Redis quotes a script's text there
    lowered = reply.lower()
    prefix = next((code for code in REFUSALS if _has_code(reply, code)), "")
    if not prefix and "unknown command" in lowered:
        if not any(f"{q}{name}{q}" in lowered for name in ("eval", "evalsha", "script") for q in "'`"):
            return LeaseStoreError(f"Redis does not know a command ray-ha needs ({reply})", "unknown-command")
        prefix = "NOSCRIPT"
    if not prefix and ("AUTH" in reply or "invalid username-password" in lowered or "invalid password" in lowered):
        prefix = "WRONGPASS"
    if prefix:
        cause, advice = REFUSALS[prefix]
        return LeaseStoreError(f"{advice.format(key=key)} ({reply})", cause)
    return LeaseStoreError(f"Redis refused: {reply}")


def describe(holder: Optional[Holder]) -> str:
    """A short `node (host pid)` for log lines."""
    if holder is None:
        return "nobody"
    return f"{holder.node} ({holder.host} pid {holder.pid})"

