"""The campaign: standby -> leader -> stepping down, on a monotonic clock. The only place that decides.

Each tick is one short step that returns a Step the log and the tests can read. Rules it keeps:
the head's tree is always gone before the lease is released; a leader that cannot confirm its lease
within the renew deadline kills its head while the lease still stands for the others; nothing is
started after a stop was asked for. After a loss it ends or stands by again (head.afterloss decides).
While an operator's pause stands, a leader whose head dies keeps the lease and leaves the head down
(as Patroni leaves PostgreSQL alone in pause); the resume hands over as a head death would have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Callable, Optional

from raylaunch.config import Role, Timing
from raylaunch.head.afterloss import AfterLoss
from raylaunch.head.handover import raise_fence, say_waiting
from raylaunch.head.observed import PauseWatch, note_leader
from raylaunch.head.steps import HOLDING, Fence, Head, Lease, Outcome, Snapshot, Step, Tally, Tenure, Watch, Watcher
from raylaunch.logs import report_leftovers
from raylaunch.outage import OUTAGES, Trouble
from raylaunch.proc.net import tcp_accepts
from raylaunch.proc.raycmd import GCS_NAME
from raylaunch.proc.stopflag import StopSignal
from raylaunch.store.records import Attempt, Ending, EndReason, SwitchoverError

log = logging.getLogger("ray-ha")

#: How often a leader looks at its head between renewals (s).
HEAD_POLL = 0.1
#: A standby retries this long after the lease's remaining TTL, so it arrives just after expiry (s).
TTL_SLACK = 0.005


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
        self.after_loss = AfterLoss(stand_by_again)
        self.trouble = Trouble(lambda: self.role.value, clock)
        self.role = Role.STANDBY
        self.outcome: Optional[Outcome] = None
        self.tenure: Optional[Tenure] = None  # while we hold the lease (and after, until we stand by again)
        self.watch = Watch()
        self.tally = Tally()
        self.pause = PauseWatch(lease.paused)

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
                    self._idle()
        except Exception:
            log.exception("internal error; stopping the head before releasing the lease")
            report_leftovers(self.head.kill())
            self._release(EndReason.INTERNAL_ERROR)
            self._report(self._finish(Outcome.FAILED, Step.STOPPED, "ended by an internal error"))
        assert self.outcome is not None  # the loop only ends once an outcome is set
        return self.outcome

    def snapshot(self, step: Step) -> Snapshot:
        """The campaign as the outside world may see it."""
        held = self.tenure if self.role in HOLDING else None
        return Snapshot(node=self.name, role=self.role, epoch=self.watch.epoch, leader=self.watch.leader,
                        gcs_address=self.tenure.gcs_address if self.tenure else None,
                        serving=bool(held and held.serving and self.role is Role.LEADER),
                        transitions=self.tally.transitions, renew_failures=self.tally.renew_failures,
                        takeover_seconds=self.tally.takeover_seconds, step=step, outcome=self.outcome,
                        redis_refused=self.trouble.refused, lease_confirmed_at=held.confirmed_at if held else None,
                        won_wall=held.won_wall if held else None, paused=self.pause.paused,
                        switchover_pending=self.watch.switchover_pending, headless_seconds=self.tally.headless_seconds)

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

    @property
    def held(self) -> Tenure:
        """The tenure of a candidate that holds the lease (asked only in the roles that hold it)."""
        assert self.tenure is not None, "a tenure asked for while holding nothing"
        return self.tenure

    def _idle(self) -> None:
        """Wait until the next tick is due (a stop request or a release wakes it early)."""
        if self.outcome is not None:
            return
        if self.role is Role.STANDBY and self.clock() < self.watch.hold_until:
            self.stop.wait(self.watch.hold_until - self.clock())
        elif self.role is Role.STANDBY:
            self.lease.wait_released(max(0.0, self.watch.next_try - self.clock()), self.stop)
        elif self.role is Role.STEPPING_DOWN:
            time.sleep(HEAD_POLL)
        else:
            self.stop.wait(max(0.0, min(HEAD_POLL, self.held.next_renew - self.clock())))

    # -- the steps ------------------------------------------------------------------------------

    def _standby_step(self) -> Step:
        # 1. A standby holds nothing, so a stop request ends it at once.
        if self.stop.is_set():
            with suppress(*OUTAGES):  # else its heartbeat expires with the lease duration anyway
                self.lease.forget_candidate()
            return self._finish(Outcome.STOPPED, Step.STOPPED, "stopped while standing by")
        # 2. Back from a loss: wait out the backoff first.
        if self.clock() < self.watch.hold_until:
            return Step.BACKING_OFF
        # 3. Try to take the lease; note who leads when we lose.
        sent = self.clock()
        self.watch.next_try = sent + self.timing.retry_period
        try:
            attempt = self.lease.try_acquire()
        except OUTAGES as exc:
            self.trouble.failed(exc)
            return Step.REDIS_REFUSED if self.trouble.refused else Step.REDIS_DOWN
        self.trouble.recovered()
        self.pause.note(attempt.paused)
        if not attempt.won:
            self._note_leader(attempt)
            self.head.prepare()  # standing by: get a takeover ready (a pre-warmed `ray start`, if asked)
            if attempt.ttl_ms > 0:  # Redis says when the lease runs out: try again right then
                self.watch.next_try = min(self.watch.next_try, self.clock() + attempt.ttl_ms / 1000 + TTL_SLACK)
            return Step.STANDING_BY
        # 4. Won. A stop that arrived meanwhile wins over starting anything.
        self._became_leader(attempt, sent)
        if self.stop.is_set():
            self._release(EndReason.STOP)
            return self._finish(Outcome.STOPPED, Step.STOPPED, "stopped right after winning; released")
        return Step.ACQUIRED

    def _waiting_step(self) -> Step:
        # 1. Stop before anything started: release and go.
        if self.stop.is_set():
            self._release(EndReason.STOP)
            return self._finish(Outcome.STOPPED, Step.STOPPED, "stopped before the head started; released")
        # 2. Keep the lease while we wait.
        kept = self._keep_lease()
        if kept in (Step.LEASE_LOST, Step.DEADLINE_PASSED):
            return self._lose(kept)
        # 3. With a fence, lock older epochs out of Ray's storage before anything of ours starts.
        held = self.held
        if self.fence is not None and held.fenced_epoch != held.epoch and not raise_fence(self.fence, held):
            return Step.FENCING
        # 4. Wait (bounded) for the previous leader's GCS to stop accepting connections.
        if held.old_gcs and self.old_gcs_alive(held.old_gcs):
            if self.clock() < held.wait_until:
                say_waiting(held, self.clock())
                return Step.WAITING_OLD_GCS
            log.warning("previous GCS %s still accepts connections after %.0fs; starting anyway",
                        held.old_gcs, self.timing.wait_old_gcs)
        # 5. Start the head.
        return self._start_head()

    def _leading_step(self) -> Step:
        # 1. A stop request begins a graceful stop; the lease is kept until the tree is gone.
        if self.stop.is_set():
            self.held.rejoin = False
            return self._begin_stop("stop requested")
        # 2. The head died: its GCS is gone, nothing to drain. Kill the rest, then release (not while paused).
        why = self.held.head_down or self.head.failure()
        if why is not None and not self._paused_now():
            return self._head_died(why)
        # 3. Renew when due; give up in time if the lease is lost or unconfirmed.
        kept = self._keep_lease()
        if kept in (Step.LEASE_LOST, Step.DEADLINE_PASSED):
            return self._lose(kept)
        if kept is Step.RENEWED:
            self.pause.refresh()
        if why is not None:
            return self._head_down(why, kept)
        # 4. Once the GCS serves, publish where it is.
        if not self.held.serving:
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
        if self.head.drained() or self.clock() >= self.held.stop_deadline:
            report_leftovers(self.head.kill())
            self._release(EndReason.SWITCHOVER if self.held.rejoin else EndReason.STOP)
            if self.held.rejoin and not self.stop.is_set():  # a switchover: stand by again at once
                log.info("handed over from epoch %d; standing by again", self.held.epoch)
                self._stand_by(hold=0.0)
                return Step.REJOINED
            return self._finish(Outcome.STOPPED, Step.STOPPED, "head stopped; lease released")
        return Step.STOPPING

    # -- pieces of steps ------------------------------------------------------------------------

    def _begin_stop(self, why: str) -> Step:
        held = self.held
        log.info("leader epoch %d: %s; stopping the head (grace %.0fs)", held.epoch, why, self.timing.stop_grace)
        self.head.terminate()
        self.role, held.stop_deadline = Role.STEPPING_DOWN, self.clock() + self.timing.stop_grace
        return Step.SWITCHOVER if held.rejoin else Step.STOPPING

    def _switchover_asked(self) -> bool:
        """True if a switchover asks this leader, in this epoch, to step down."""
        try:
            request = self.lease.switchover_request()
        except (*OUTAGES, SwitchoverError) as exc:  # Redis trouble, or a due scheduled one that cannot happen
            log.warning("no switchover this renewal: %s", exc)
            return False
        self.watch.switchover_pending = request is not None
        held = self.held
        held.rejoin = bool(request and request.source == self.name and request.epoch == held.epoch)
        return held.rejoin

    def _paused_now(self) -> bool:
        """Whether a pause stands: read afresh when the head has just died; once it is down, as each
        renewal reads it."""
        return self.pause.refresh() if self.held.head_down is None else self.pause.paused

    def _head_down(self, why: str, kept: Optional[Step]) -> Step:
        """Paused and our head died: kill what is left, keep the lease (nobody takes over), start nothing;
        a switchover, an explicit act, still hands over."""
        held = self.held
        if held.head_down is None:
            held.head_down, held.serving = why, False
            log.error("leader epoch %d: %s while paused; keeping the lease and leaving the head down "
                      "(no failover until `ray-ha resume`, which then hands over)", held.epoch, why)
            report_leftovers(self.head.kill())
        if kept is Step.RENEWED and self._switchover_asked():
            return self._begin_stop("switchover requested while the head is down; handing over")
        return Step.HEAD_DOWN_PAUSED

    def _stand_by(self, hold: float) -> None:
        """Hold nothing and stand by again, trying for the lease after `hold` seconds."""
        self.role, self.tenure, self.watch.leader = Role.STANDBY, None, None
        self.watch.next_try = self.watch.hold_until = self.clock() + hold

    def _became_leader(self, attempt: Attempt, sent: float) -> None:
        try:
            record = self.lease.read_record()
        except OUTAGES as exc:
            log.warning("could not read the previous leader's record: %s", exc)
            record = None
        epoch = attempt.epoch
        old_gcs = record.gcs_address if record and record.epoch < epoch else None
        self.tenure = Tenure(epoch, won_at=sent, won_wall=self.wall(), old_gcs=old_gcs,
                             wait_until=self.clock() + self.timing.wait_old_gcs, previous=attempt.previous,
                             won_ms=attempt.won_ms)
        self.tenure.next_renew = sent + self.timing.retry_period
        self.role, self.watch = Role.WAITING, Watch(epoch=epoch, leader=self.name)
        self.tally.transitions += 1
        log.info("elected leader, epoch %d%s", epoch, f" (previous GCS was {old_gcs})" if old_gcs else "")

    def _start_head(self) -> Step:
        try:
            self.head.start(self.held.epoch)
        except OSError as exc:
            log.error("could not start the head: %s", exc)
            self._release(EndReason.START_FAILED)
            return self._finish(Outcome.FAILED, Step.START_FAILED, "head did not start; lease released")
        self.role = Role.LEADER
        log.info("leader epoch %d: head started", self.held.epoch)
        return Step.HEAD_STARTED

    def _publish_record(self) -> Optional[Step]:
        address = self.head.serving_address()
        if address is None:
            return None
        held = self.held
        try:
            self.lease.write_record(address, held.epoch, held.won_wall, self.head.client_ports(), held.previous)
        except OUTAGES as exc:
            log.warning("could not write the leader record (will retry): %s", exc)
            return None
        held.serving, held.gcs_address = True, address
        self.after_loss.settle()
        if not held.measured:  # the first time this tenure: how long the takeover took, and no head served
            took = self.tally.takeover_seconds = self.clock() - held.won_at
            before = held.previous.seconds_before(held.won_ms) if held.previous else None
            self.tally.headless_seconds, held.measured = None if before is None else before + took, True
        log.info("leader epoch %d: GCS serving at %s", held.epoch, address)
        return Step.SERVING

    def _keep_lease(self) -> Optional[Step]:
        """Renew when due; LEASE_LOST if someone else holds it, DEADLINE_PASSED if unconfirmed too long."""
        step, held = None, self.held
        if self.clock() >= held.next_renew:
            sent = self.clock()
            try:
                epoch = self.lease.renew(held.epoch)
                if not epoch:
                    return Step.LEASE_LOST
                step = Step.RENEWED if epoch == held.epoch else self._reacquired(epoch)
                held.confirmed_at = sent
                self.trouble.recovered()
            except OUTAGES as exc:
                self._renewal_failed(exc)
                step = Step.RENEW_FAILED
            held.next_renew = sent + self.timing.retry_period
        if self.clock() - held.confirmed_at >= self.timing.renew_deadline:
            return Step.DEADLINE_PASSED
        return step

    def _renewal_failed(self, exc: Exception) -> None:
        """A failed renewal, transient or refused alike: the renew deadline still protects the head."""
        self.tally.renew_failures += 1
        self.trouble.failed(exc, logged=False)  # every failed renewal is logged here, once each
        log.log(logging.ERROR if self.trouble.refused else logging.WARNING,
                "leader epoch %d: renewal failed (%.1fs since the last one)%s: %s", self.held.epoch,
                self.clock() - self.held.confirmed_at, "; Redis refuses until a setting changes" if self.trouble.refused
                else "", exc)

    def _reacquired(self, epoch: int) -> Step:
        """Redis had lost our lease key and we took it back: a new epoch, and the record again."""
        log.warning("leader epoch %d: the lease key was gone from Redis (restart, flush or failover?); "
                    "took it again as epoch %d, head unchanged", self.held.epoch, epoch)
        held = self.held
        held.previous = Ending(node=self.name, epoch=held.epoch, reason=EndReason.REDIS_LOST, ended_ms=0)
        held.epoch, held.serving, self.watch.epoch = epoch, False, epoch
        return Step.REACQUIRED

    def _lose(self, why: Step) -> Step:
        """Leadership is gone or unconfirmed: the tree dies while the lease still stands, then release."""
        left = self.held.confirmed_at + self.timing.lease_duration - self.clock()
        grace = 0.0 if why is Step.LEASE_LOST else max(0.0, min(self.timing.stop_grace, left / 2))
        log.error("leader epoch %d: %s; killing the head (grace %.1fs, lease ends in %.1fs)",
                  self.held.epoch, "lease taken by another candidate" if why is Step.LEASE_LOST
                  else "no renewal within the renew deadline", grace, left)
        report_leftovers(self.head.stop(grace))
        if why is Step.DEADLINE_PASSED:
            self._release(EndReason.REFUSED if self.trouble.refused else EndReason.RENEWAL_FAILED)
        return self._after_loss(why, Outcome.LOST, "leadership lost")

    def _head_died(self, why: str) -> Step:
        log.error("leader epoch %d: %s; killing what is left of the head", self.held.epoch, why)
        report_leftovers(self.head.kill())
        self._release(EndReason.GCS_DIED if why.startswith(GCS_NAME) else EndReason.HEAD_DIED)
        return self._after_loss(Step.HEAD_DIED, Outcome.HEAD_DIED, "head died; lease released")

    def _after_loss(self, step: Step, outcome: Outcome, message: str) -> Step:
        """The tree is gone: end the campaign, or stand by again after a backoff (never silently drop out)."""
        hold = self.after_loss.hold(self.clock() - self.held.won_at, stopping=self.stop.is_set())
        if hold is None:
            return self._finish(outcome, step, message)
        log.warning("%s; standing by again in %.0fs", message, hold)
        self._stand_by(hold)
        return step

    def _release(self, reason: EndReason) -> None:
        """Release (compare-and-set), saying why, so a standby takes over now; on failure the lease simply
        expires."""
        try:
            self.lease.release(reason)
        except OUTAGES as exc:
            log.warning("could not release the lease (it expires within %.0fs): %s",
                        self.timing.lease_duration, exc)

    def _note_leader(self, attempt: Attempt) -> None:
        if attempt.holder is not None:
            self.after_loss.settle()  # stood by under a leader
        if note_leader(self.watch, attempt, self.clock()):
            self.tenure = None
            self.tally.transitions += 1

    def _finish(self, outcome: Outcome, step: Step, message: str) -> Step:
        self.outcome, self.role = outcome, Role.DONE
        log.info("%s (%s)", message, outcome.value)
        return step
