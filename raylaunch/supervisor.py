"""What every ray-ha supervisor process does, whichever mode it runs: hold this node's state file, turn
stop signals into a stop flag, log with the mode's context, adopt orphaned descendants, reach Redis
with a few quiet tries, and clean up in order. Head mode (head.runtime) and follow mode
(follow.runtime) each plug in as a Mode.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, TypeVar

from raylaunch.local.state import StateFile, SupervisorState
from raylaunch.logs import setup_logging
from raylaunch.plan import Plan
from raylaunch.proc.stopflag import StopFlag, StopSignal
from raylaunch.proc.tree import become_subreaper
from raylaunch.store.errors import RedisRefused, RedisUnavailable
from raylaunch.store.keyspace import Keyspace, open_keyspace

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CONNECT_ATTEMPTS = 3

log = logging.getLogger("ray-ha")


class RuntimeProblem(Exception):
    """Something outside the user's input went wrong before the supervisor got going (exit 1)."""


@dataclass(frozen=True)
class Supervision:
    """What a mode runs with: the stop flag its signals set, and its state file."""

    stop: StopFlag
    state: StateFile


class Mode(Protocol):
    """Head mode or follow mode, as the shared runtime drives it."""

    noun: str  # what its tree is, for messages: "head" or "worker"

    def context(self) -> Mapping[str, object]: ...
    def check_redis(self) -> None: ...
    def run(self, supervision: Supervision) -> int: ...


def supervise(plan: Plan, mode: Mode) -> int:
    """Run `mode` in this process until it ends; returns its exit code. The state file goes last."""
    stop = StopFlag()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    setup_logging(plan.reporting.log_format, plan.identity.node_name, mode.context)
    state = claim_state(plan)
    try:
        for warning in plan.command.warnings:
            log.warning("%s", warning)
        if not become_subreaper():
            log.warning("cannot become a child subreaper; orphaned %s processes may escape supervision", mode.noun)
        return mode.run(Supervision(stop, state))
    finally:
        state.close()


def base_state(plan: Plan) -> SupervisorState:
    """The state record's fixed part: who, which lease, which Redis, the timings, the endpoint."""
    r = plan.reporting
    return SupervisorState(node=plan.identity.node_name, key=plan.identity.key, redis=plan.target.display,
                           lease_duration=plan.timing.lease_duration, retry_period=plan.timing.retry_period,
                           stop_grace=plan.timing.stop_grace, started=time.time(), priority=plan.identity.priority,
                           http=f"{r.http_host}:{r.http_port}" if r.http_port is not None else None)


def claim_state(plan: Plan) -> StateFile:
    """This node's local state file, locked for our life (one supervisor per node and machine)."""
    state = StateFile(plan.state_dir, base_state(plan), heartbeat=plan.timing.retry_period)
    try:
        state.claim()
    except OSError as exc:
        raise RuntimeProblem(f"cannot keep state in {plan.state_dir} (set RAY_HA_RUN_DIR): "
                             f"{exc.strerror or exc}") from None
    return state


def connect(plan: Plan, stop: StopSignal, build: Callable[[Keyspace], T]) -> T:
    """`build` (which checks what it needs) on a new connection to the plan's Redis; Redis gets a few
    quiet tries, one second apart, before we give up. A refusal is not tried again."""
    target = plan.target
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        keyspace = None
        try:
            keyspace = open_keyspace(target, plan.identity.key, plan.timing.redis_timeout)
            return build(keyspace)
        except RedisUnavailable as exc:
            _close(keyspace)
            if attempt == CONNECT_ATTEMPTS or stop.is_set():
                raise RedisUnavailable(f"cannot reach Redis at {target.display}: {exc}") from None
            stop.wait(1.0)
        except RedisRefused as exc:
            _close(keyspace)
            raise RedisRefused(f"Redis at {target.display}: {exc}", exc.cause) from None
    raise AssertionError("unreachable")


def _close(keyspace: Optional[Keyspace]) -> None:
    if keyspace is not None:
        keyspace.close()
