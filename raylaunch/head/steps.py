"""The campaign's vocabulary: what it needs of the lease and the head (Protocols), its roles, the Step each
tick returns, how it ends, the Snapshot its watchers read, and its memory grouped by what it is for
(Tenure, Watch, Tally). No behaviour here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from raylaunch.config import Role
from raylaunch.proc.stopflag import StopSignal
from raylaunch.store.records import Attempt, Ending, EndReason, Record, Switchover


class Lease(Protocol):
    """What the campaign needs of the lease (store.lease.RedisLease in production)."""

    def try_acquire(self) -> Attempt: ...
    def renew(self, epoch: int) -> int: ...
    def release(self, reason: EndReason = EndReason.UNKNOWN) -> bool: ...
    def read_record(self) -> Optional[Record]: ...
    def write_record(self, gcs_address: str, epoch: int, since: float, ports: Mapping[str, int],
                     previous: Optional[Ending] = None) -> bool: ...
    def wait_released(self, timeout: float, stop: StopSignal) -> bool: ...
    def switchover_request(self) -> Optional[Switchover]: ...
    def paused(self) -> bool: ...
    def forget_candidate(self) -> None: ...


class Head(Protocol):
    """What the campaign needs of the head (head.rayhead.RayHead in production)."""

    def start(self, epoch: int) -> None: ...
    def prepare(self) -> None: ...
    def failure(self) -> Optional[str]: ...
    def serving_address(self) -> Optional[str]: ...
    def client_ports(self) -> Mapping[str, int]: ...
    def terminate(self) -> None: ...
    def drained(self) -> bool: ...
    def kill(self) -> list[int]: ...
    def stop(self, grace: float) -> list[int]: ...


class Fence(Protocol):
    """Locks older epochs out of Ray's storage (store.fence.AclFence in production)."""

    def lock_out(self, epoch: int) -> list[str]: ...


#: A campaign's roles are config.Role's standby to done; in these it holds the lease (and may run a head).
HOLDING = frozenset({Role.WAITING, Role.LEADER, Role.STEPPING_DOWN})
#: In these it leads: its head runs, or is being stopped.
LEADING_ROLES = frozenset({Role.LEADER, Role.STEPPING_DOWN})


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
    HEAD_DOWN_PAUSED = "head-down-paused"  # paused: the head died, the lease is kept, nothing restarts it


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
    won_wall: Optional[float] = None  # while we hold the lease: when we won it, by the wall clock
    paused: bool = False           # an operator's pause holds automatic takeovers back (as last read)
    switchover_pending: bool = False  # leading: a switchover is asked for or scheduled (as last read)
    headless_seconds: Optional[float] = None  # our last takeover: the tenure before's end -> our GCS serving


Watcher = Callable[[Snapshot], None]


@dataclass
class Tenure:
    """One hold of the lease, from the win until we stand by again. Times are monotonic unless named wall."""

    epoch: int                     # ours (a new one if Redis lost the key and we took it back)
    won_at: float                  # when the winning attempt was sent
    won_wall: float                # the same moment by the wall clock: the record's `since`
    old_gcs: Optional[str]         # the previous leader's GCS, which may still run
    wait_until: float              # start beside a still-live old GCS no later than this
    confirmed_at: float = field(init=False)  # when the last confirmed acquisition or renewal was sent
    next_renew: float = 0.0
    fenced_epoch: int = 0          # the epoch whose fence is up (older ones locked out of Ray's storage)
    gcs_address: Optional[str] = None  # our GCS, once it serves
    serving: bool = False          # the record names our serving GCS in this epoch
    measured: bool = False         # the takeover (win -> serving) of this tenure has been measured
    previous: Optional[Ending] = None  # how the tenure before ours ended, for the history
    won_ms: int = 0                # when we won, by Redis's clock (0 if unknown)
    head_down: Optional[str] = None  # paused: why our head is down (the lease is kept)
    rejoin: bool = False           # stepping down for a switchover: stand by again afterwards
    stop_deadline: float = 0.0     # stepping down: the grace ends here
    next_wait_log: float = 0.0

    def __post_init__(self) -> None:
        self.confirmed_at = self.won_at


@dataclass
class Watch:
    """A standby's view of who leads, and when it tries again (monotonic)."""

    epoch: int = 0                 # the last epoch seen (ours, while we lead)
    leader: Optional[str] = None   # that epoch's holder ("" while nobody holds the lease)
    logged: Optional[tuple[str, int]] = None  # (holder token, epoch) last logged
    next_try: float = 0.0
    hold_until: float = 0.0        # back from a loss, nothing is tried before this
    next_quiet_log: float = 0.0
    switchover_pending: bool = False  # leading: read after each renewal


@dataclass
class Tally:
    """What a campaign counts over its life, for status and metrics."""

    transitions: int = 0           # leader changes seen
    renew_failures: int = 0
    takeover_seconds: Optional[float] = None  # our last win -> GCS serving
    headless_seconds: Optional[float] = None  # the tenure before's last renewal or release -> our GCS serving
