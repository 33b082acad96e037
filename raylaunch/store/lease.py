"""The leader lease in Redis: acquire with a fencing epoch, renew, release, the leader's record.

No Ray and no processes here. Every write is one of the Lua scripts in store.scripts. "Not ours" is
a False; Redis trouble is RedisUnavailable (transient) or RedisRefused (permanent), judged by
store.errors. Public methods translate Redis errors; their _do_ twins talk to Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Callable, Optional, TypeVar, cast

import redis

from raylaunch.proc.stopflag import StopSignal
from raylaunch.store.connect import on_slot_owner
from raylaunch.store.errors import ReplicasBehind
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.records import Attempt, Change, Ending, EndReason, Holder, Record, StandbyHeartbeat, Switchover
from raylaunch.store.scripts import ACQUIRE, HISTORY_LENGTH, RELEASE, RENEW, WRITE_IF_OURS, WRITE_RECORD
from raylaunch.store.view import follower_addresses, pending_switchover

T = TypeVar("T")


class RedisLease:
    """One candidate's view of the lease key of `keyspace` (epoch, record and channel live beside it)."""

    def __init__(self, keyspace: Keyspace, me: Holder, lease_duration: float,
                 min_replicas: int = 0, wait_timeout: float = 1.0, priority: int = 1,
                 priority_yield: float = 4.0) -> None:
        self.keyspace, self.me = keyspace, me
        self.priority, self.yield_ms = priority, max(1, int(priority_yield * 1000))
        client, keys = keyspace.client, keyspace.keys
        self.client, self.keys = client, keys
        self.key = keys.lease
        self.min_replicas, self.wait_ms = min_replicas, max(1, int(wait_timeout * 1000))
        self.ttl_ms = max(1, int(lease_duration * 1000))
        self.started = time.time()
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._write_record = client.register_script(WRITE_RECORD)
        self._write_if_ours = client.register_script(WRITE_IF_OURS)
        self._pubsub: Optional[redis.client.PubSub] = None
        self.seen_epoch = 0  # the highest epoch any reply has shown us: a floor for the next one we take

    def check(self) -> None:
        """Fail early on what would fail later: the keyspace's checks, and Lua scripts that will not load."""
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

    def release(self, reason: EndReason = EndReason.UNKNOWN) -> bool:
        """Delete our lease, saying why for the history, and notify standbys; False if it was not ours
        (nothing is touched)."""
        return self._guard(lambda: self._do_release(reason))

    def write_record(self, gcs_address: str, epoch: int, since: float, ports: Mapping[str, int],
                     previous: Optional[Ending] = None) -> bool:
        """Publish our GCS address, epoch and client ports next to the lease, and add the change (with how
        the tenure before ended) to the history; False if the lease is not ours."""
        record = Record(node=self.me.node, host=self.me.host, gcs_address=gcs_address,
                        epoch=epoch, since=since, ports=dict(ports))
        text, entry = json.dumps(asdict(record), sort_keys=True), Change.entry(record, previous)
        return self._guard(lambda: bool(self._write_record(keys=[self.key, self.keys.record, self.keys.history],
                                                           args=[self.me.value, text, HISTORY_LENGTH, entry]) == 1))

    def paused(self) -> bool:
        """Whether an operator's pause holds automatic takeovers back (the leader reads it as it renews)."""
        return self._guard(lambda: bool(self.client.exists(self.keys.pause)))

    def read_record(self) -> Optional[Record]:
        """The last leader's record, or None if none was written."""
        return Record.decode(self._guard(lambda: cast(Optional[str], self.client.get(self.keys.record))))

    def write_provider_nodes(self, text: str) -> bool:
        """Keep the local node provider's worker list (JSON) for the next leader; False if not ours."""
        return self._guard(lambda: bool(self._write_if_ours(keys=[self.key, self.keys.provider],
                                                            args=[self.me.value, text]) == 1))

    def read_provider_nodes(self) -> Optional[str]:
        """The worker list the last leader kept, or None."""
        return self._guard(lambda: cast(Optional[str], self.client.get(self.keys.provider)))

    def follower_addresses(self) -> Optional[frozenset[str]]:
        """The addresses of the machines that run a live follower now; None if one does not say (older)."""
        return self._guard(lambda: follower_addresses(self.keyspace))

    def switchover_request(self) -> Optional[Switchover]:
        """The pending planned handover, if any, a scheduled one made pending once due (the leader checks
        once per renewal); SwitchoverError if a due one cannot happen."""
        return pending_switchover(self.keyspace, time.time())

    def forget_candidate(self) -> None:
        """Remove our standby heartbeat and priority when we leave, so status stops listing us and nobody
        yields to us."""
        def exchange() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.keys.candidate(self.me.node))
            pipe.hdel(self.keys.priorities, self.me.node)
            pipe.execute()
        self._guard(exchange)

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
        self.keyspace.check()
        for script in (self._acquire, self._renew, self._release, self._write_record, self._write_if_ours):
            self.client.script_load(script.script)  # fails here, not mid-campaign, without Lua

    def _do_try_acquire(self) -> Attempt:
        candidate = StandbyHeartbeat(node=self.me.node, host=self.me.host, pid=self.me.pid, since=self.started,
                                     priority=self.priority).encode()
        keys = self.keys
        reply = self._acquire(keys=[self.key, keys.epoch, keys.candidate(self.me.node), keys.switchover, keys.grant,
                                    keys.pause, keys.priorities, keys.vacant],
                              args=[self.me.value, self.ttl_ms, self.me.node, candidate, self.seen_epoch,
                                    self.priority, self.yield_ms])
        if int(reply[0]) == 1:
            self._drop_pubsub()  # a leader has no use for release notifications
            try:
                self._replicated(True)
            except ReplicasBehind:
                self._do_release(EndReason.REFUSED)
                raise
            return Attempt(won=True, epoch=self._saw(int(reply[1])), holder=self.me, ttl_ms=self.ttl_ms,
                           previous=Ending.from_grant(*reply[2:7]), won_ms=int(reply[7]))
        holder = Holder.decode(reply[1]) if reply[1] else None
        return Attempt(won=False, epoch=self._saw(int(reply[2])), holder=holder, ttl_ms=int(reply[3]),
                       paused=int(reply[4]) == 1, yielding_to=reply[5] or None)

    def _do_release(self, reason: EndReason) -> bool:
        return bool(self._release(keys=[self.key, self.keys.grant],
                                  args=[self.me.value, self.keys.channel, reason.value]) == 1)

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
        return self.keyspace.guard(call)
