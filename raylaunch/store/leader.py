"""The one reader of "who leads": the lease holder, the epoch, and the holder's record once its GCS
serves. Status, switchover and follow mode all read it here, in one round trip."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Optional

from raylaunch.store.keys import Keys
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.records import EndReason, FollowerHeartbeat, Holder, Record, serving_record


@dataclass(frozen=True)
class Leadership:
    """The lease as Redis holds it now."""

    holder: Optional[Holder]   # who holds the lease; None while nobody does
    epoch: int                 # the fencing epoch (the last one taken, if nobody holds the lease)
    serving: Optional[Record]  # the holder's record once its GCS serves; None before (or between leaders)
    lease_left: float          # seconds the lease runs without renewal (0 if nobody holds it)


def queue_leadership(pipe: Any, keys: Keys) -> None:
    """Add the reads of a Leadership to a pipeline (four replies, for leadership_from)."""
    for name in (keys.lease, keys.epoch, keys.record):
        pipe.get(name)
    pipe.pttl(keys.lease)


def leadership_from(replies: list[Any]) -> Leadership:
    value, epoch, record, pttl = replies[:4]
    return Leadership(holder=Holder.decode(value) if value else None, epoch=int(epoch or 0),
                      serving=serving_record(value, epoch, record),
                      lease_left=max(0, int(pttl)) / 1000 if value else 0.0)


def read_leadership(keyspace: Keyspace) -> Leadership:
    """Who leads now, in one round trip."""
    def exchange() -> Leadership:
        pipe = keyspace.client.pipeline(transaction=False)
        queue_leadership(pipe, keyspace.keys)
        return leadership_from(pipe.execute())
    return keyspace.guard(exchange)


class LeaderReader:
    """Follow mode's view: the serving leader, while refreshing our follower heartbeat in the same round trip."""

    def __init__(self, keyspace: Keyspace, node: str, ttl: float, addresses: tuple[str, ...] = ()) -> None:
        self.keyspace, self.node, self.ttl_ms = keyspace, node, int(ttl * 1000)
        self.lease_left = 0.0  # from the last read
        self.stopped = False   # from the last read: nobody leads, and the last leader was stopped (released by stop)
        self.me = FollowerHeartbeat(node=node, host=socket.gethostname(), pid=os.getpid(), since=time.time(),
                                    addresses=addresses)

    def current(self, following: Optional[Record]) -> Optional[Record]:
        """The leader that serves now (None between leaders); says which epoch we follow."""
        mine = replace(self.me, epoch=following.epoch if following else None,
                       leader=following.node if following else None,
                       gcs_address=following.gcs_address if following else None)

        def exchange() -> tuple[Leadership, Optional[str]]:
            pipe = self.keyspace.client.pipeline(transaction=False)
            queue_leadership(pipe, self.keyspace.keys)
            pipe.set(self.keyspace.keys.follower(self.node), mine.encode(), px=self.ttl_ms)
            pipe.hget(self.keyspace.keys.grant, "reason")
            replies = pipe.execute()
            return leadership_from(replies), replies[-1]

        leadership, ended = self.keyspace.guard(exchange)
        self.lease_left = leadership.lease_left
        self.stopped = leadership.holder is None and ended == EndReason.STOP.value
        return leadership.serving

    def forget(self) -> None:
        """Remove our follower record when we stop, so status stops listing us at once."""
        self.keyspace.guard(lambda: self.keyspace.client.delete(self.keyspace.keys.follower(self.node)))
