"""Follow mode's decisions: a worker node that joins the current leader and re-joins after a failover.

The only place that decides for a follower, on an injectable monotonic clock. Each tick reads who
leads (through a LeaderSource) and returns a FollowStep the log and tests can read:

- no worker yet: wait for a serving leader, then start `ray start --address=<its GCS, or the relay> --block`;
- a new epoch at the *same* GCS address (a DNS name or VIP that moved): keep the worker, Ray's GCS
  fault tolerance reconnects it;
- a new epoch at a *different* address: point the relay there and keep the worker (the default), or,
  with no relay, stop the worker's tree and start it against the new address;
- between leaders: the relay refuses new connections (Ray backs off); the worker keeps running;
- the worker's own processes died: start again after a backoff that doubles up to a ceiling;
- the cluster was stopped (its last leader stopped by an operator, nobody leading since) for as long as
  Ray's raylet waits for its GCS: leave, as a stock worker's raylet would, so `ray down` of every head
  leaves nothing running on the workers either. A crashed leader is waited for without end.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from raylaunch.backoff import Backoff
from raylaunch.config import Role
from raylaunch.logs import report_leftovers
from raylaunch.outage import OUTAGES, Trouble
from raylaunch.proc.stopflag import StopSignal
from raylaunch.store.records import Record

log = logging.getLogger("ray-ha")

#: Grace for a worker stopped to join a new address (s): its old GCS is gone, so the raylet cannot
#: unregister and a longer drain only delays the re-join (measured: a raylet sat out a 10 s grace).
RESTART_GRACE = 1.0
#: How often a follower says again that it waits for a leader (s).
WAIT_LOG_EVERY = 60.0
#: How often a follower with a worker reads who leads while nobody serves (s): the worker waits on the
#: next leader, so it is looked for more often than the retry period, for the few seconds of a failover.
BETWEEN_POLL = 0.1


class LeaderSource(Protocol):
    """Who leads now (store.leader.LeaderReader in production); also tells Redis whom we follow."""

    lease_left: float  # at the last read, how long the lease runs without a renewal (0: nobody holds it)
    stopped: bool      # at the last read, nobody holds it and the last leader was stopped by an operator

    def current(self, following: Optional[Record]) -> Optional[Record]: ...


class Worker(Protocol):
    """The worker node's tree (follow.runtime.RayWorker, or RelayedWorker, in production)."""

    relayed: bool  # its processes dial a relay that retarget() points at the leader

    def start(self, address: str, epoch: int) -> None: ...
    def retarget(self, address: Optional[str]) -> None: ...
    def failure(self) -> Optional[str]: ...
    def stop(self, grace: float) -> list[int]: ...


class Decision(enum.Enum):
    KEEP = "keep"          # same GCS address: Ray reconnects the worker by itself
    RETARGET = "retarget"  # the GCS moved, the worker dials a relay: point the relay there
    RESTART = "restart"    # the GCS moved, the worker dials it directly: it must join the new address


def on_new_leader(following: Record, leader: Record, relayed: bool) -> Decision:
    """What a running worker does when the leader (epoch) changes."""
    if leader.gcs_address == following.gcs_address:
        return Decision.KEEP
    return Decision.RETARGET if relayed else Decision.RESTART


class FollowStep(enum.Enum):
    WAITING_LEADER = "waiting-leader"   # nobody serves yet; nothing started
    STARTED = "started"                 # the worker was started against the leader's GCS
    FOLLOWING = "following"             # the worker runs; the leader is the one it joined
    KEPT = "kept"                       # a new epoch at the same address; worker left alone
    RETARGETED = "retargeted"           # a new epoch at a new address; the relay forwards there, worker kept
    BETWEEN_LEADERS = "between-leaders"  # nobody serves; worker kept, the relay (if any) refuses connections
    RESTARTED = "restarted"             # a new epoch at a new address; worker stopped and started again
    WORKER_DIED = "worker-died"         # its processes died; a start is scheduled after a backoff
    BACKING_OFF = "backing-off"         # waiting out that backoff
    REDIS_DOWN = "redis-down"           # cannot read who leads; the worker (if any) keeps running
    REDIS_REFUSED = "redis-refused"     # Redis refuses until a setting changes; the worker keeps running
    STOPPED = "stopped"                 # stop requested; the tree is gone
    CLUSTER_STOPPED = "cluster-stopped"  # the cluster was stopped and stayed so; the tree is gone, we leave


@dataclass(frozen=True)
class FollowTiming:
    """The follower's clock settings, taken from the launcher's Timing."""

    poll: float          # how often to read who leads (the retry period)
    stop_grace: float    # a graceful worker stop before SIGKILL
    stopped_for: float = math.inf  # leave once the cluster has been stopped this long (Ray's reconnect timeout)


class Follower:
    """One worker node following the leader."""

    def __init__(self, source: LeaderSource, worker: Worker, timing: FollowTiming, stop: StopSignal,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.worker, self.timing, self.stop, self.clock = source, worker, timing, stop, clock
        self.following: Optional[Record] = None   # the leader the running worker joined (None: no worker)
        self.started_at = 0.0
        self.next_start = 0.0
        self.backoff = Backoff()
        self.restarts = 0
        self.trouble = Trouble(lambda: Role.FOLLOWER.value, clock, note="; the worker, if any, keeps running")
        self._next_wait_log = 0.0
        self._relay_paused = False
        self._joined = False  # a worker was started in this follower's life
        self._stopped_since: Optional[float] = None  # when the cluster was first seen stopped

    def run(self, report: Callable[[FollowStep], None] = lambda step: None) -> FollowStep:
        """Tick until a stop is asked, telling `report` each step; the worker's tree is gone at the end."""
        while True:
            step = self.tick()
            report(step)
            if step in (FollowStep.STOPPED, FollowStep.CLUSTER_STOPPED):
                return step
            self.stop.wait(self.pause(step))

    def pause(self, step: FollowStep) -> float:
        """Until the next read: the retry period, BETWEEN_POLL between leaders, and never past the moment
        the leader's lease runs out unrenewed, so a crashed leader's successor is read at once (a leader
        that renews keeps more than a retry period on its lease, so this adds no reads)."""
        if step is FollowStep.BETWEEN_LEADERS:
            return min(self.timing.poll, BETWEEN_POLL)
        left = self.source.lease_left
        return min(self.timing.poll, left + BETWEEN_POLL) if left > 0 else self.timing.poll

    def tick(self) -> FollowStep:
        # 1. A stop request stops the worker's tree; nothing else is held.
        if self.stop.is_set():
            return self._stop_worker("stop requested")
        # 2. A worker whose processes died is started again, after a backoff.
        if self.following is not None:
            why = self.worker.failure()
            if why is not None:
                return self._worker_died(why)
        # 3. Read who leads (and tell Redis whom we follow); Redis trouble leaves the worker alone.
        try:
            leader = self.source.current(self.following)
        except OUTAGES as exc:
            self.trouble.failed(exc)  # a running worker is left alone either way
            return FollowStep.REDIS_REFUSED if self.trouble.refused else FollowStep.REDIS_DOWN
        self.trouble.recovered()
        # 4. The cluster was stopped long enough after we joined it: leave, as Ray's raylet would.
        if self._cluster_stopped(leader):
            return self._leave()
        # 5. No worker: start one once a leader serves and any backoff is over.
        if self.following is None:
            return self._maybe_start(leader)
        # 6. A worker runs: between leaders it waits; a new leader means keep, retarget or restart.
        if leader is None:
            return self._between_leaders()
        if leader.epoch == self.following.epoch:
            if self._relay_paused:  # the same leader again after a read that found none
                self._point_relay(self.following.gcs_address)
            return FollowStep.FOLLOWING
        return self._new_leader(leader)

    # -- the steps ------------------------------------------------------------------------------

    def _maybe_start(self, leader: Optional[Record]) -> FollowStep:
        if leader is None:
            self._log_waiting()
            return FollowStep.WAITING_LEADER
        if self.clock() < self.next_start:
            return FollowStep.BACKING_OFF
        self._start(leader)
        return FollowStep.STARTED

    def _new_leader(self, leader: Record) -> FollowStep:
        assert self.following is not None
        decision = on_new_leader(self.following, leader, self.worker.relayed)
        if decision is Decision.RESTART:
            log.info("leader is now %s (epoch %d) at %s, not %s; restarting the worker against it",
                     leader.node, leader.epoch, leader.gcs_address, self.following.gcs_address)
            report_leftovers(self.worker.stop(min(RESTART_GRACE, self.timing.stop_grace)))
            self.restarts += 1
            self._start(leader)
            return FollowStep.RESTARTED
        how = ("at the same GCS address %s; the worker stays" if decision is Decision.KEEP
               else "at %s; the relay forwards there now, the worker stays")
        log.info("leader is now %s (epoch %d) " + how, leader.node, leader.epoch, leader.gcs_address)
        self._point_relay(leader.gcs_address)
        self.following = leader
        return FollowStep.KEPT if decision is Decision.KEEP else FollowStep.RETARGETED

    def _between_leaders(self) -> FollowStep:
        if self.worker.relayed and not self._relay_paused:
            log.info("no leader serves; the relay refuses new GCS connections until one does, the worker stays")
            self._point_relay(None)
        return FollowStep.BETWEEN_LEADERS

    def _point_relay(self, address: Optional[str]) -> None:
        if self.worker.relayed:
            self.worker.retarget(address)
            self._relay_paused = address is None

    def _start(self, leader: Record) -> None:
        log.info("joining leader %s (epoch %d) at %s", leader.node, leader.epoch, leader.gcs_address)
        self.worker.start(leader.gcs_address, leader.epoch)
        self.following, self.started_at, self._joined = leader, self.clock(), True

    def _cluster_stopped(self, leader: Optional[Record]) -> bool:
        """True once the cluster we joined has stayed stopped for `stopped_for` (one that never served
        since we started is waited for: a worker may well start before its heads)."""
        if leader is not None or not self.source.stopped or not self._joined:
            self._stopped_since = None
            return False
        if self._stopped_since is None:
            self._stopped_since = self.clock()
        return self.clock() - self._stopped_since >= self.timing.stopped_for

    def _leave(self) -> FollowStep:
        log.info("the cluster was stopped: its last leader was stopped by an operator (ray down, ray stop or "
                 "ray-ha stop) and nobody has led for %gs; leaving, as Ray's raylet would", self.timing.stopped_for)
        self._stop_worker("the cluster was stopped")
        return FollowStep.CLUSTER_STOPPED

    def _worker_died(self, why: str) -> FollowStep:
        wait = self.backoff.after(self.clock() - self.started_at)
        log.error("worker: %s; starting it again in %.0fs", why, wait)
        report_leftovers(self.worker.stop(0.0))
        self.following, self.next_start = None, self.clock() + wait
        self.restarts += 1
        return FollowStep.WORKER_DIED

    def _stop_worker(self, why: str) -> FollowStep:
        if self.following is not None:
            log.info("%s; stopping the worker", why)
            report_leftovers(self.worker.stop(self.timing.stop_grace))
            self.following = None
        return FollowStep.STOPPED

    def _log_waiting(self) -> None:
        if self.clock() >= self._next_wait_log:
            self._next_wait_log = self.clock() + WAIT_LOG_EVERY
            log.info("waiting for a leader: no head serves yet")

