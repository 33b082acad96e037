"""Follow mode: the follower's decisions (follow.follower) wired to Redis and the worker's process tree.

`ray-ha start --ha-follow [ray start options]` runs `ray start --address=<leader's GCS> --block` and
supervises it like a head (subreaper, whole-tree stop) under the shared runtime (raylaunch.supervisor).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping, Optional

from raylaunch.follow.follower import Follower, FollowStep, FollowTiming
from raylaunch.local.state import SupervisorState
from raylaunch.plan import Plan
from raylaunch.proc.raycmd import RAYLET_NAME, RayCommand, with_address
from raylaunch.proc.stopflag import StopFlag, StopSignal
from raylaunch.proc.tree import ProcessTree
from raylaunch.store.leader import LeaderSource
from raylaunch.store.redisstore import RedisStore
from raylaunch.supervisor import Session, connect

log = logging.getLogger("ray-ha")


class RayWorker:
    """`ray start --address=<GCS> --block <options>` under a ProcessTree, raylet watched and drained."""

    def __init__(self, command: RayCommand) -> None:
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


def follow_state(base: SupervisorState, follower: Follower, step: FollowStep) -> SupervisorState:
    """The state record of a follower after a tick (read by status, health and a detached start)."""
    following = follower.following
    return replace(base, role="follower", step=step.value, joined=following is not None,
                   epoch=following.epoch if following else None, leader=following.node if following else None,
                   gcs_address=following.gcs_address if following else None, serving=False,
                   restarts=follower.restarts, redis_refused=follower.trouble.refused)


class FollowMode:
    """A worker node that follows whoever leads."""

    noun = "worker"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.follower: Optional[Follower] = None

    def context(self) -> Mapping[str, object]:
        following = self.follower.following if self.follower else None
        return {"role": "follower", "epoch": following.epoch if following else 0,
                "leader": following.node if following else None}

    def check_redis(self) -> None:
        """Reach Redis once and check the lease's keys (before detaching)."""
        connect_store(self.plan, StopFlag()).close()

    def run(self, session: Session) -> int:
        """Follow the leader until a stop is asked; 0 once the worker's tree is gone."""
        plan = self.plan
        store = connect_store(plan, session.stop)
        source = LeaderSource(store, plan.identity.node_name,
                              ttl=max(plan.timing.lease_duration, 3 * plan.timing.retry_period))
        self.follower = follower = Follower(source, RayWorker(plan.command),
                                            FollowTiming(plan.timing.retry_period, plan.timing.stop_grace),
                                            session.stop)
        log.info("following the leader of %s on %s", store.keys.lease, plan.target.display)
        try:
            follower.run(report=lambda step: session.state.update(follow_state(session.state.base, follower, step)))
        except Exception:
            log.exception("internal error; stopping the worker")
            return 1
        finally:
            follower.worker.stop(0.0)  # after an internal error too: no worker outlives its supervisor
            try:
                source.forget()
            except Exception as exc:  # the record expires by itself
                log.warning("could not remove the follower record: %s", exc)
            store.close()
        return 0


def connect_store(plan: Plan, stop: StopSignal) -> RedisStore:
    """A checked connection to the lease's Redis (a few quiet tries)."""
    def build(store: RedisStore) -> RedisStore:
        store.check()
        return store
    return connect(plan, stop, build)
