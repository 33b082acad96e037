"""The campaign's vocabulary: what it needs of the lease and the head (Protocols), its roles, the Step each
tick returns, how it ends, and the Snapshot its watchers read. No behaviour here."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from raylaunch.config import Role
from raylaunch.proc.stopflag import StopSignal
from raylaunch.store.records import Attempt, Record, Switchover


class Lease(Protocol):
    """What the campaign needs of the lease (store.lease.RedisLease in production)."""

    def try_acquire(self) -> Attempt: ...
    def renew(self, epoch: int) -> int: ...
    def release(self) -> bool: ...
    def read_record(self) -> Optional[Record]: ...
    def write_record(self, gcs_address: str, epoch: int, since: float) -> bool: ...
    def wait_released(self, timeout: float, stop: StopSignal) -> bool: ...
    def switchover_request(self) -> Optional[Switchover]: ...
    def forget_candidate(self) -> None: ...


class Head(Protocol):
    """What the campaign needs of the head (head.rayhead.RayHead in production)."""

    def start(self, epoch: int) -> None: ...
    def prepare(self) -> None: ...
    def failure(self) -> Optional[str]: ...
    def serving_address(self) -> Optional[str]: ...
    def terminate(self) -> None: ...
    def drained(self) -> bool: ...
    def kill(self) -> list[int]: ...
    def stop(self, grace: float) -> list[int]: ...


class Fence(Protocol):
    """Locks older epochs out of Ray's storage (store.fence.AclFence in production)."""

    def lock_out(self, epoch: int) -> list[str]: ...


#: A campaign's roles are config.Role's standby to done; in these it holds the lease (and may run a head).
HOLDING = frozenset({Role.WAITING, Role.LEADER, Role.STEPPING_DOWN})


class Step(enum.Enum):
    """What one tick did."""

    STANDING_BY = "standing-by"
    BACKING_OFF = "backing-off"        # back from a loss, a standby waits out its backoff
    REDIS_DOWN = "redis-down"          # a standby could not reach Redis; it tries again
    REDIS_REFUSED = "redis-refused"    # a standby is refused by Redis until a setting changes
    ACQUIRED = "acquired"
    FENCING = "fencing"
    WAITING_OLD_GCS = "waiting-old-gcs"
    HEAD_STARTED = "head-started"
    LEADING = "leading"
    RENEWED = "renewed"
    REACQUIRED = "reacquired"
    RENEW_FAILED = "renew-failed"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"
    LEASE_LOST = "lease-lost"
    DEADLINE_PASSED = "renew-deadline-passed"
    HEAD_DIED = "head-died"
    START_FAILED = "start-failed"
    SWITCHOVER = "switchover"
    REJOINED = "rejoined"


class Outcome(enum.Enum):
    """How the campaign ended; the CLI maps each to an exit code."""

    STOPPED = "stopped"
    LOST = "leadership-lost"
    HEAD_DIED = "head-died"
    FAILED = "failed"


@dataclass(frozen=True)
class Snapshot:
    """What a campaign looks like after a tick: read by the state file, metrics, hooks and logs."""

    node: str
    role: Role
    epoch: int
    leader: Optional[str]          # the leader's node name as last seen ("" while nobody holds the lease)
    gcs_address: Optional[str]     # our GCS once it serves
    serving: bool                  # we lead and our GCS accepts connections
    transitions: int               # leader changes seen by this candidate
    renew_failures: int
    takeover_seconds: Optional[float]  # our last lease acquisition -> GCS serving
    lease_confirmed_at: Optional[float]  # while we hold the lease: when its last confirmation was sent
    redis_refused: Optional[str]   # the permanent Redis refusal this node is stuck on, else None
    step: Step
    outcome: Optional[Outcome]


Watcher = Callable[[Snapshot], None]
