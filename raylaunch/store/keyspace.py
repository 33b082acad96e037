"""One cluster's keys in one Redis: the client, the key layout, and access checked before anything is held.

Everything else in store/ (the lease, the fence, the leader reader, the cluster view) works through
a Keyspace, so each Redis exchange is judged the same way (store.errors) and one key layout is used.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import redis

from raylaunch.store.connect import RedisTarget, connect, drop_connections
from raylaunch.store.errors import RedisRefused, guarded
from raylaunch.store.keys import Keys
from raylaunch.store.records import Holder
from raylaunch.store.scripts import CHECK

T = TypeVar("T")


class Keyspace:
    """The client and key layout of one lease; `display` names the Redis in messages (no credentials)."""

    def __init__(self, client: redis.Redis, keys: Keys, display: str = "") -> None:
        self.client, self.keys, self.display = client, keys, display
        self._check = client.register_script(CHECK)

    def guard(self, call: Callable[[], T]) -> T:
        """Run one exchange, judging its errors; a read-only refusal drops the pool so a moved master
        is looked up again next time."""
        try:
            return guarded(call, self.keys.lease)
        except RedisRefused as exc:
            if exc.cause == "readonly":
                drop_connections(self.client)
            raise

    def check(self) -> None:
        """Fail at start, not mid-campaign: no answer, bad credentials, no Lua, a read-only replica,
        keys in different slots, a key of the wrong type, or a lease held on the old key layout."""
        self.guard(self._do_check)

    def close(self) -> None:
        self.client.close()

    def _do_check(self) -> None:
        self.client.ping()
        self.client.script_load(CHECK)
        expected = self.keys.types()
        found = self._check(keys=[*expected, self.keys.probe])
        for (key, wanted), kind in zip(expected.items(), found):
            if str(kind) not in ("none", wanted):
                raise RedisRefused(f"{'lease key' if key == self.keys.lease else 'key'} {key!r} holds a "
                                      f"{kind}, not what ray-ha keeps there; delete it or choose another --ha-key",
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
            raise RedisRefused(
                f"{holder.node} holds this cluster's lease on the key layout of ray-ha before 0.2 ({legacy!r}); "
                "stop every candidate of this cluster, then start them all with this version", "old-layout")


def open_keyspace(target: RedisTarget, key: str, timeout: float) -> Keyspace:
    """Connect to the Redis of `target` for lease `key` (nothing checked or held yet)."""
    keys = Keys(key)
    return Keyspace(guarded(lambda: connect(target, timeout), keys.lease), keys, target.display)
