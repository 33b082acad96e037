"""The campaign: standby -> leader -> stepping down, on a monotonic clock. The only place that decides.

Each tick is one short step that returns a Step the log and the tests can read. Rules it keeps:
the head's tree is always gone before the lease is released; a leader that cannot confirm its lease
within the renew deadline kills its head while the lease still stands for the others; nothing is
started after a stop was asked for. After a loss it ends or stands by again (head.afterloss decides).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Callable, Optional

from raylaunch.config import Role, Timing
from raylaunch.head.afterloss import AfterLoss
from raylaunch.head.steps import HOLDING, Fence, Head, Lease, Outcome, Snapshot, Step, Watcher
from raylaunch.logs import report_leftovers
from raylaunch.outage import OUTAGES, Trouble
from raylaunch.proc.net import tcp_accepts
from raylaunch.proc.stopflag import StopSignal
from raylaunch.store.records import Attempt, describe

log = logging.getLogger("ray-ha")

#: How often a leader looks at its head between renewals (s).
HEAD_POLL = 0.1
#: A standby retries this long after the lease's remaining TTL, so it arrives just after expiry (s).
TTL_SLACK = 0.005
#: How often a leader waiting for the previous GCS says so, and a standby who leads (s).
WAIT_LOG_EVERY = QUIET_LOG_EVERY = 60.0


class Campaign:
    """One candidate's campaign for the lease, and its head while it leads."""

    def __init__(self, lease: Lease, head: Head, timing: Timing, stop: StopSignal,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 old_gcs_alive: Callable[[str], bool] = tcp_accepts, name: str = "",
                 watchers: Sequence[Watcher] = (), fence: Optional[Fence] = None,
                 stand_by_again: bool = False) -> None:
        self.lease, self.head, self.timing, self.stop = lease, head, timing, stop
        self.clock, self.wall, self.old_gcs_alive = clock, wall, old_gcs_alive
        self.name, self.watchers, self.fence = name, list(watchers), fence
        self.fenced_epoch = 0   # the epoch whose fence is up (older epochs locked out of Ray's storage)
        self.leader: Optional[str] = None
        self.gcs_address: Optional[str] = None
        self.transitions = self.renew_failures = 0
        self.acquired_at: Optional[float] = None
        self.led_since = 0.0     # when this candidate last won the lease (monotonic)
        self.takeover_seconds: Optional[float] = None
        self.rejoin = False      # stepping down for a switchover: stand by again afterwards
        self.after_loss = AfterLoss(stand_by_again)
        self.hold_until = 0.0    # a standby back from a loss tries nothing before this (monotonic)
        self._next_quiet_log = self._next_wait_log = 0.0
        self.role = Role.STANDBY
        self.outcome: Optional[Outcome] = None
        self.epoch = 0
        self.renewed_at = 0.0   # when the last confirmed acquisition/renewal was *sent* (monotonic)
        self.next_renew = self.acquired_wall = self.wait_until = self.stop_deadline = 0.0
        self.old_gcs: Optional[str] = None
        self.serving = False
        self.next_try = 0.0     # when a standby tries to acquire again (monotonic)
        self._seen_leader: Optional[tuple[str, int]] = None
        self.trouble = Trouble(lambda: self.role.value, clock)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Tick until the campaign ends; pauses wake early on a stop request or a release.

        An unexpected error still ends in the safe order: the tree dies, then the lease goes.
        """
        try:
            while self.outcome is None:
                step = self.tick()
                self._report(step)
                if step is not Step.ACQUIRED:
                    self._pause()
        except Exception:
            log.exception("internal error; stopping the head before releasing the lease")
            self._kill_all()
            self._release()
            self._report(self._finish(Outcome.FAILED, Step.STOPPED, "ended by an internal error"))
        assert self.outcome is not None  # the loop only ends once an outcome is set
        return self.outcome

    def snapshot(self, step: Step) -> Snapshot:
        """The campaign as the outside world may see it."""
        return Snapshot(node=self.name, role=self.role, epoch=self.epoch, leader=self.leader,
                        gcs_address=self.gcs_address, serving=self.serving and self.role is Role.LEADER,
                        transitions=self.transitions, renew_failures=self.renew_failures,
                        takeover_seconds=self.takeover_seconds, step=step, outcome=self.outcome,
                        redis_refused=self.trouble.refused,
                        lease_confirmed_at=self.renewed_at if self.role in HOLDING else None)

    def _report(self, step: Step) -> None:
        """Tell the watchers; a failing watcher is logged and never stops the campaign."""
        snapshot = self.snapshot(step)
        for watcher in self.watchers:
            try:
                watcher(snapshot)
            except Exception:
                log.exception("a status watcher failed; the campaign goes on")

    def tick(self) -> Step:
        """One step of the state machine for the current role."""
        return {Role.STANDBY: self._standby_step, Role.WAITING: self._waiting_step,
                Role.LEADER: self._leading_step, Role.STEPPING_DOWN: self._stepping_down_step,
                }.get(self.role, lambda: Step.STOPPED)()

    def _pause(self) -> None:
        if self.outcome is not None:
            return
        if self.role is Role.STANDBY and self.clock() < self.hold_until:
            self.stop.wait(self.hold_until - self.clock())
        elif self.role is Role.STANDBY:
            self.lease.wait_released(max(0.0, self.next_try - self.clock()), self.stop)
        elif self.role is Role.STEPPING_DOWN:
            time.sleep(HEAD_POLL)
        else:
            self.stop.wait(max(0.0, min(HEAD_POLL, self.next_renew - self.clock())))

    # -- the steps ------------------------------------------------------------------------------

    def _standby_step(self) -> Step:
        # 1. A standby holds nothing, so a stop request ends it at once.
        if self.stop.is_set():
            with suppress(*OUTAGES):  # else its heartbeat expires with the lease duration anyway
                self.lease.forget_candidate()
            return self._finish(Outcome.STOPPED, Step.STOPPED, "stopped while standing by")
        # 2. Back from a loss: wait out the backoff first.
        if self.clock() < self.hold_until:
            return Step.BACKING_OFF
        # 3. Try to take the lease; note who leads when we lose.
        sent = self.next_try = self.clock()
        self.next_try += self.timing.retry_period
        try:
            attempt = self.lease.try_acquire()
        except OUTAGES as exc:
            self.trouble.failed(exc)
            return Step.REDIS_REFUSED if self.trouble.refused else Step.REDIS_DOWN
        self.trouble.recovered()
        if not attempt.won:
            self._note_leader(attempt)
            self.head.prepare()  # standing by: get a takeover ready (a pre-warmed `ray start`, if asked)
            if attempt.ttl_ms > 0:  # Redis says when the lease runs out: try again right then
                self.next_try = min(self.next_try, self.clock() + attempt.ttl_ms / 1000 + TTL_SLACK)
            return Step.STANDING_BY
        # 4. Won. A stop that arrived meanwhile wins over starting anything.
        self._became_leader(attempt.epoch, sent)
        if self.stop.is_set():
            self._release()
            return self._finish(Outcome.STOPPED, Step.STOPPED, "stopped right after winning; released")
        return Step.ACQUIRED

    def _waiting_step(self) -> Step:
        # 1. Stop before anything started: release and go.
        if self.stop.is_set():
            self._release()
            return self._finish(Outcome.STOPPED, Step.STOPPED, "stopped before the head started; released")
        # 2. Keep the lease while we wait.
        kept = self._keep_lease()
        if kept in (Step.LEASE_LOST, Step.DEADLINE_PASSED):
            return self._lose(kept)
        # 3. With a fence, lock older epochs out of Ray's storage before anything of ours starts.
        if self.fence is not None and self.fenced_epoch != self.epoch and not self._lock_out():
            return Step.FENCING
        # 4. Wait (bounded) for the previous leader's GCS to stop accepting connections.
        if self.old_gcs and self.old_gcs_alive(self.old_gcs):
            if self.clock() < self.wait_until:
                self._log_waiting()
                return Step.WAITING_OLD_GCS
            log.warning("previous GCS %s still accepts connections after %.0fs; starting anyway",
                        self.old_gcs, self.timing.wait_old_gcs)
        # 5. Start the head.
        return self._start_head()

    def _lock_out(self) -> bool:
        """Raise the fence for our epoch; False on a Redis error, to try again next tick (lease kept)."""
        try:
            removed = self.fence.lock_out(self.epoch) if self.fence else []
        except OUTAGES as exc:
            log.warning("leader epoch %d: could not fence older epochs yet: %s", self.epoch, exc)
            return False
        self.fenced_epoch = self.epoch
        log.info("leader epoch %d: fenced; older GCS users removed: %s", self.epoch, ", ".join(removed) or "none")
        return True

    def _leading_step(self) -> Step:
        # 1. A stop request begins a graceful stop; the lease is kept until the tree is gone.
        if self.stop.is_set():
            self.rejoin = False
            return self._begin_stop("stop requested")
        # 2. The head died: its GCS is gone, nothing to drain. Kill the rest, then release.
        why = self.head.failure()
        if why is not None:
            return self._head_died(why)
        # 3. Renew when due; give up in time if the lease is lost or unconfirmed.
        kept = self._keep_lease()
        if kept in (Step.LEASE_LOST, Step.DEADLINE_PASSED):
            return self._lose(kept)
        # 4. Once the GCS serves, publish where it is.
        if not self.serving:
            return self._publish_record() or kept or Step.LEADING
        # 5. After a renewal, look for a planned handover away from us.
        if kept is Step.RENEWED and self._switchover_asked():
            return self._begin_stop("switchover requested; handing over")
        return kept or Step.LEADING

    def _stepping_down_step(self) -> Step:
        # 1. Losing the lease mid-stop cuts the grace short.
        kept = self._keep_lease()
        if kept in (Step.LEASE_LOST, Step.DEADLINE_PASSED):
            return self._lose(kept)
        # 2. When the graceful part is done or the grace is over: kill what is left, then release.
        if self.head.drained() or self.clock() >= self.stop_deadline:
            self._kill_all()
            self._release()
            if self.rejoin and not self.stop.is_set():  # a switchover: stand by again at once
                log.info("handed over from epoch %d; standing by again", self.epoch)
                self._stand_by(hold=0.0)
                return Step.REJOINED
            return self._finish(Outcome.STOPPED, Step.STOPPED, "head stopped; lease released")
        return Step.STOPPING

    # -- pieces of steps ------------------------------------------------------------------------

    def _begin_stop(self, why: str) -> Step:
        log.info("leader epoch %d: %s; stopping the head (grace %.0fs)", self.epoch, why, self.timing.stop_grace)
        self.head.terminate()
        self.role, self.stop_deadline = Role.STEPPING_DOWN, self.clock() + self.timing.stop_grace
        return Step.SWITCHOVER if self.rejoin else Step.STOPPING

    def _switchover_asked(self) -> bool:
        """True if a switchover asks this leader, in this epoch, to step down."""
        try:
            request = self.lease.switchover_request()
        except OUTAGES as exc:
            log.warning("could not read switchover requests: %s", exc)
            return False
        self.rejoin = bool(request and request.source == self.name and request.epoch == self.epoch)
        return self.rejoin

    def _stand_by(self, hold: float) -> None:
        """Hold nothing and stand by again, trying for the lease after `hold` seconds."""
        self.role, self.serving, self.rejoin = Role.STANDBY, False, False
        self.leader, self.gcs_address = None, None
        self.next_try = self.hold_until = self.clock() + hold

    def _became_leader(self, epoch: int, sent: float) -> None:
        self.epoch, self.renewed_at, self.led_since = epoch, sent, sent
        self.acquired_at, self.leader, self.gcs_address = sent, self.name, None
        self.transitions += 1
        self._seen_leader = None
        self.next_renew, self.acquired_wall = sent + self.timing.retry_period, self.wall()
        self.role, self.wait_until = Role.WAITING, self.clock() + self.timing.wait_old_gcs
        try:
            record = self.lease.read_record()
        except OUTAGES as exc:
            log.warning("could not read the previous leader's record: %s", exc)
            record = None
        self.old_gcs = record.gcs_address if record and record.epoch < epoch else None
        log.info("elected leader, epoch %d%s", epoch,
                 f" (previous GCS was {self.old_gcs})" if self.old_gcs else "")

    def _log_waiting(self) -> None:
        """Say once a minute that we hold the lease but wait for the old GCS, and for how long at most."""
        if self.clock() >= self._next_wait_log:
            self._next_wait_log = self.clock() + WAIT_LOG_EVERY
            log.warning("leader epoch %d: previous GCS %s still accepts connections; not starting a "
                        "second head beside it (waiting at most %.0fs more)", self.epoch, self.old_gcs,
                        self.wait_until - self.clock())

    def _start_head(self) -> Step:
        try:
            self.head.start(self.epoch)
        except OSError as exc:
            log.error("could not start the head: %s", exc)
            self._release()
            return self._finish(Outcome.FAILED, Step.START_FAILED, "head did not start; lease released")
        self.role = Role.LEADER
        log.info("leader epoch %d: head started", self.epoch)
        return Step.HEAD_STARTED

    def _publish_record(self) -> Optional[Step]:
        address = self.head.serving_address()
        if address is None:
            return None
        try:
            self.lease.write_record(address, self.epoch, self.acquired_wall)
        except OUTAGES as exc:
            log.warning("could not write the leader record (will retry): %s", exc)
            return None
        self.serving, self.gcs_address = True, address
        self.after_loss.settle()
        if self.acquired_at is not None:  # the first time this tenure: how long the takeover took
            self.takeover_seconds, self.acquired_at = self.clock() - self.acquired_at, None
        log.info("leader epoch %d: GCS serving at %s", self.epoch, address)
        return Step.SERVING

    def _keep_lease(self) -> Optional[Step]:
        """Renew when due; LEASE_LOST if someone else holds it, DEADLINE_PASSED if unconfirmed too long."""
        step = None
        if self.clock() >= self.next_renew:
            sent = self.clock()
            try:
                held = self.lease.renew(self.epoch)
                if not held:
                    return Step.LEASE_LOST
                step = Step.RENEWED if held == self.epoch else self._reacquired(held)
                self.renewed_at = sent
                self.trouble.recovered()
            except OUTAGES as exc:
                self._renewal_failed(exc)
                step = Step.RENEW_FAILED
            self.next_renew = sent + self.timing.retry_period
        if self.clock() - self.renewed_at >= self.timing.renew_deadline:
            return Step.DEADLINE_PASSED
        return step

    def _renewal_failed(self, exc: Exception) -> None:
        """A failed renewal, transient or refused alike: the renew deadline still protects the head."""
        self.renew_failures += 1
        self.trouble.failed(exc, logged=False)  # every failed renewal is logged here, once each
        log.log(logging.ERROR if self.trouble.refused else logging.WARNING,
                "leader epoch %d: renewal failed (%.1fs since the last one)%s: %s", self.epoch,
                self.clock() - self.renewed_at, "; Redis refuses until a setting changes" if self.trouble.refused
                else "", exc)

    def _reacquired(self, epoch: int) -> Step:
        """Redis had lost our lease key and we took it back: a new epoch, and the record again."""
        log.warning("leader epoch %d: the lease key was gone from Redis (restart, flush or failover?); "
                    "took it again as epoch %d, head unchanged", self.epoch, epoch)
        self.epoch, self.serving = epoch, False
        return Step.REACQUIRED

    def _lose(self, why: Step) -> Step:
        """Leadership is gone or unconfirmed: the tree dies while the lease still stands, then release."""
        left = self.renewed_at + self.timing.lease_duration - self.clock()
        grace = 0.0 if why is Step.LEASE_LOST else max(0.0, min(self.timing.stop_grace, left / 2))
        log.error("leader epoch %d: %s; killing the head (grace %.1fs, lease ends in %.1fs)",
                  self.epoch, "lease taken by another candidate" if why is Step.LEASE_LOST
                  else "no renewal within the renew deadline", grace, left)
        report_leftovers(self.head.stop(grace))
        if why is Step.DEADLINE_PASSED:
            self._release()
        return self._after_loss(why, Outcome.LOST, "leadership lost")

    def _head_died(self, why: str) -> Step:
        log.error("leader epoch %d: %s; killing what is left of the head", self.epoch, why)
        self._kill_all()
        self._release()
        return self._after_loss(Step.HEAD_DIED, Outcome.HEAD_DIED, "head died; lease released")

    def _after_loss(self, step: Step, outcome: Outcome, message: str) -> Step:
        """The tree is gone: end the campaign, or stand by again after a backoff (never silently drop out)."""
        hold = self.after_loss.hold(self.clock() - self.led_since, stopping=self.stop.is_set())
        if hold is None:
            return self._finish(outcome, step, message)
        log.warning("%s; standing by again in %.0fs", message, hold)
        self._stand_by(hold)
        return step

    def _kill_all(self) -> None:
        report_leftovers(self.head.kill())

    def _release(self) -> None:
        """Release (compare-and-set) so a standby takes over now; on failure the lease simply expires."""
        try:
            self.lease.release()
        except OUTAGES as exc:
            log.warning("could not release the lease (it expires within %.0fs): %s",
                        self.timing.lease_duration, exc)

    def _note_leader(self, attempt: Attempt) -> None:
        """Log each change of the observed leader, and otherwise a quiet line at most once a minute."""
        self.epoch = attempt.epoch
        if attempt.holder is None:
            self.leader = ""
            return
        self.after_loss.settle()
        seen = (attempt.holder.token, attempt.epoch)
        changed = seen != self._seen_leader
        if changed:
            self._seen_leader, self.leader, self.gcs_address = seen, attempt.holder.node, None
            self.transitions += 1
        if changed or self.clock() >= self._next_quiet_log:
            self._next_quiet_log = self.clock() + QUIET_LOG_EVERY
            log.info("standing by; leader is %s, epoch %d", describe(attempt.holder), attempt.epoch)

    def _finish(self, outcome: Outcome, step: Step, message: str) -> Step:
        self.outcome, self.role = outcome, Role.DONE
        log.info("%s (%s)", message, outcome.value)
        return step
