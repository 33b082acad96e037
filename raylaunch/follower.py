"""Follow mode's parts: who leads (from Redis), the worker's tree, and the foreground loop.

`ray-ha start --ha-follow [ray start options]` runs `ray start --address=<leader's GCS> --block` and
supervises it like a head (subreaper, whole-tree stop); raylaunch.follow decides when to start,
keep or restart it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Optional, cast

import redis

from raylaunch.follow import Follower, FollowStep, FollowTiming
from raylaunch.head import RAYLET_NAME
from raylaunch.lease import Keys, Record, guarded, serving_record
from raylaunch.localstate import StateFile
from raylaunch.logs import setup_logging
from raylaunch.raycmd import HeadCommand, with_address
from raylaunch.stopflag import StopFlag
from raylaunch.supervisor import ProcessTree, become_subreaper

if TYPE_CHECKING:
    from raylaunch.launcher import Plan

log = logging.getLogger("ray-ha")


class RedisLeaderSource:
    """Reads the serving leader's record and, in the same round trip, refreshes our follower record."""

    def __init__(self, client: redis.Redis, keys: Keys, node: str, ttl: float) -> None:
        self.client, self.keys, self.node, self.ttl_ms = client, keys, node, int(ttl * 1000)
        self.me = {"node": node, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}

    def current(self, following: Optional[Record]) -> Optional[Record]:
        """The leader that serves now (None between leaders); says which epoch we follow."""
        mine = {**self.me, "epoch": following.epoch if following else None,
                "leader": following.node if following else None,
                "gcs_address": following.gcs_address if following else None}

        def exchange() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for name in (self.keys.lease, self.keys.epoch, self.keys.record):
                pipe.get(name)
            pipe.set(self.keys.follower(self.node), json.dumps(mine, sort_keys=True), px=self.ttl_ms)
            return cast(list[Any], pipe.execute())

        value, epoch, record, _ = guarded(exchange, self.keys.lease)
        return serving_record(value, epoch, record)

    def forget(self) -> None:
        """Remove our follower record when we stop, so status stops listing us at once."""
        guarded(lambda: self.client.delete(self.keys.follower(self.node)), self.keys.lease)


class RayWorker:
    """`ray start --address=<GCS> --block <options>` under a ProcessTree, raylet watched and drained."""

    def __init__(self, command: HeadCommand) -> None:
        self.command = command
        self.tree: Optional[ProcessTree] = None

    def start(self, address: str, epoch: int) -> None:
        env = {**self.command.env, "RAY_HA_EPOCH": str(epoch), "RAY_HA_FOLLOWER": "1"}
        self.tree = ProcessTree(with_address(self.command.argv, address), env, watch_name=RAYLET_NAME,
                                drain_name=RAYLET_NAME)
        self.tree.start()

    def failure(self) -> Optional[str]:
        return self.tree.failure() if self.tree else None

    def stop(self, grace: float) -> list[int]:
        return self.tree.stop(grace) if self.tree else []


def follow(plan: Plan, state: StateFile) -> int:
    """Follow the leader in this process until a stop is asked; 0 once the worker's tree is gone."""
    from raylaunch.launcher import STOP_SIGNALS, connect_lease

    stop = StopFlag()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    follower: Optional[Follower] = None

    def context() -> dict[str, object]:
        following = follower.following if follower else None
        return {"role": "follower", "epoch": following.epoch if following else 0,
                "leader": following.node if following else None}

    setup_logging(plan.reporting.log_format, plan.identity.node_name, context)
    if not become_subreaper():
        log.warning("cannot become a child subreaper; orphaned worker processes may escape supervision")
    for warning in plan.command.warnings:
        log.warning("%s", warning)
    lease = connect_lease(plan, stop)
    source = RedisLeaderSource(lease.client, lease.keys, plan.identity.node_name,
                               ttl=max(plan.timing.lease_duration, 3 * plan.timing.retry_period))
    follower = Follower(source, RayWorker(plan.command), FollowTiming(plan.timing.retry_period,
                                                                      plan.timing.stop_grace), stop)
    log.info("following the leader of %s on %s", lease.key, plan.target.display)
    try:
        follower.run(report=lambda step: state.update(state_of(follower, step)))
    except Exception:
        log.exception("internal error; stopping the worker")
        return 1
    finally:
        follower.worker.stop(0.0)  # after an internal error too: no worker outlives its supervisor
        try:
            source.forget()
        except Exception as exc:  # the record expires by itself
            log.warning("could not remove the follower record: %s", exc)
        lease.close()
    return 0


def state_of(follower: Follower, step: FollowStep) -> dict[str, object]:
    """The state-file fields of a follower (read by status, health and a detached start)."""
    following = follower.following
    return {"role": "follower", "step": step.value, "joined": following is not None,
            "epoch": following.epoch if following else None, "leader": following.node if following else None,
            "gcs_address": following.gcs_address if following else None, "serving": False,
            "restarts": follower.restarts, "redis_refused": follower.trouble.refused}
