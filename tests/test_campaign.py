"""The campaign state machine, step by step on a fake clock with fakes of our own seams (lease, head).

One test at the end runs a real campaign against a real Redis to check the release wake-up.
"""

import logging
import threading
import time
from typing import Optional

import pytest

from conftest import Clock, subscribers, wait_for
from raylaunch.head.campaign import Campaign

from raylaunch.head.steps import Outcome, Role, Step
from raylaunch.config import Timing
from raylaunch.store.errors import RedisRefused, RedisUnavailable
from raylaunch.store.keys import Keys
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.lease import RedisLease
from raylaunch.store.records import Attempt, EndReason, Ending, Holder, Record, Switchover
from raylaunch.store.connect import RedisTarget, connect

OTHER = Holder(node="other", host="h2", pid=7, token="t2")
TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2, redis_timeout=2,
                stop_grace=10, wait_old_gcs=30)


class FakeLease:
    """An in-memory lease for one candidate; `events` records the order of side effects."""

    def __init__(self, events: list, holder: Optional[Holder] = None, epoch: int = 0) -> None:
        self.events, self.holder, self.epoch = events, holder, epoch
        self.renew_result: object = True
        self.record: Optional[Record] = None
        self.acquire_error: Optional[Exception] = None
        self.ttl_ms = 5000
        self.switchover: Optional[Switchover] = None
        self.reasons: list = []  # why each release was made
        self.pause = False
        self.previous: Optional[Ending] = None  # how the tenure before a win ended
        self.won_ms = 0  # when a win happened, by "Redis's" clock

    def try_acquire(self) -> Attempt:
        if self.acquire_error:
            raise self.acquire_error
        if self.holder is None:
            self.holder, self.epoch = Holder("me", "h1", 1, "t1"), self.epoch + 1
            self.events.append(("acquired", self.epoch))
            return Attempt(won=True, epoch=self.epoch, previous=self.previous, won_ms=self.won_ms)
        return Attempt(won=False, epoch=self.epoch, holder=self.holder, ttl_ms=self.ttl_ms, paused=self.pause)

    def renew(self, epoch: int) -> int:
        """renew_result: True (extended), False (not ours), an int (the epoch Redis now says we hold)."""
        self.events.append("renew")
        if isinstance(self.renew_result, Exception):
            raise self.renew_result
        if self.renew_result is True:
            return epoch
        return int(self.renew_result)  # type: ignore[call-overload]

    def release(self, reason=None) -> bool:
        self.events.append("release")
        self.reasons.append(reason)
        self.holder = None
        return True

    def read_record(self) -> Optional[Record]:
        return self.record

    def write_record(self, gcs_address: str, epoch: int, since: float, ports, previous=None) -> bool:
        self.events.append(("record", gcs_address, epoch))
        self.ports, self.written_previous = dict(ports), previous
        return True

    def wait_released(self, timeout: float, stop: threading.Event) -> bool:
        return False

    def switchover_request(self) -> Optional[Switchover]:
        return self.switchover

    def forget_candidate(self) -> None:
        self.events.append("forget")

    def paused(self) -> bool:
        if isinstance(self.pause, Exception):
            raise self.pause
        return self.pause


class FakeHead:
    """A head whose state the test sets; stop() advances the clock by its grace (worst case)."""

    def __init__(self, events: list, clock: Clock) -> None:
        self.events, self.clock = events, clock
        self.why: Optional[str] = None
        self.address: Optional[str] = None
        self.exited = False
        self.stopped_at: Optional[float] = None
        self.prepared = 0

    def start(self, epoch: int) -> None:
        self.events.append(("start", epoch))

    def prepare(self) -> None:
        self.prepared += 1

    def failure(self) -> Optional[str]:
        return self.why

    def serving_address(self) -> Optional[str]:
        return self.address

    def client_ports(self) -> dict:
        return {"dashboard": 8265}

    def terminate(self) -> None:
        self.events.append("terminate")

    def drained(self) -> bool:
        return self.exited

    def kill(self) -> list:
        self.events.append("kill")
        self.stopped_at = self.clock()
        return []

    def stop(self, grace: float) -> list:
        self.clock.advance(grace)
        self.events.append(("stop", grace))
        self.stopped_at = self.clock()
        return []


@pytest.fixture
def world():
    events: list = []
    clock = Clock()
    lease, head, stop = FakeLease(events), FakeHead(events, clock), threading.Event()
    campaign = Campaign(lease, head, TIMING, stop, clock=clock, wall=lambda: 42.0,
                        old_gcs_alive=lambda address: False, name="me")
    return campaign, lease, head, clock, stop, events


def lead(campaign) -> None:
    assert campaign.tick() is Step.ACQUIRED
    assert campaign.tick() is Step.HEAD_STARTED
    assert campaign.role is Role.LEADER


def test_standby_stops_at_once_holding_nothing(world):
    campaign, lease, head, clock, stop, events = world
    lease.holder = OTHER
    assert campaign.tick() is Step.STANDING_BY
    stop.set()
    assert campaign.tick() is Step.STOPPED
    assert campaign.outcome is Outcome.STOPPED
    assert events == ["forget"]  # its standby heartbeat goes; nothing else was held


def test_only_a_standby_that_lost_the_attempt_prepares_a_takeover(world):
    campaign, lease, head, clock, stop, events = world
    lease.holder = OTHER
    assert campaign.tick() is Step.STANDING_BY
    assert head.prepared == 1
    lease.holder = None
    clock.advance(10)
    lead(campaign)
    clock.advance(2.0)
    assert campaign.tick() is Step.RENEWED
    assert head.prepared == 1, "a leader (or a winner) never prepares another head"


def test_winner_starts_head_with_its_epoch(world):
    campaign, lease, head, clock, stop, events = world
    lease.epoch = 6
    lead(campaign)
    assert events == [("acquired", 7), ("start", 7)]


def test_stop_right_after_winning_releases_and_never_starts(world):
    campaign, lease, head, clock, stop, events = world

    def acquire_then_signal():
        attempt = FakeLease.try_acquire(lease)
        stop.set()
        return attempt

    lease.try_acquire = acquire_then_signal
    assert campaign.tick() is Step.STOPPED
    assert events == [("acquired", 1), "release"]
    assert campaign.outcome is Outcome.STOPPED


def test_renews_every_retry_period(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    assert campaign.tick() is Step.LEADING
    clock.advance(2.0)
    assert campaign.tick() is Step.RENEWED
    assert campaign.tick() is Step.LEADING
    assert events.count("renew") == 1


def test_record_is_published_once_gcs_serves(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    assert campaign.tick() is Step.LEADING
    head.address = "10.0.0.1:6379"
    assert campaign.tick() is Step.SERVING
    assert campaign.tick() is Step.LEADING
    assert events.count(("record", "10.0.0.1:6379", 1)) == 1
    assert lease.ports == {"dashboard": 8265}, "the record names the ports the head serves clients on"


def test_no_renewal_within_deadline_kills_head_before_lease_can_expire_then_releases(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    acquired_at = clock()
    lease.renew_result = RedisUnavailable("down")
    steps = []
    while campaign.outcome is None:
        clock.advance(0.5)
        steps.append(campaign.tick())
    assert Step.RENEW_FAILED in steps and steps[-1] is Step.DEADLINE_PASSED
    assert campaign.outcome is Outcome.LOST
    stop_event = next(e for e in events if isinstance(e, tuple) and e[0] == "stop")
    assert stop_event[1] > 0, "a graceful part is allowed while time is left"
    assert head.stopped_at < acquired_at + TIMING.lease_duration
    assert events.index(stop_event) < events.index("release")


def test_hung_renewals_are_judged_by_the_local_clock(world):
    """Each renewal hangs for the whole Redis timeout; the deadline still fires in time."""
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    acquired_at = clock()

    def hung_renew(epoch):
        clock.advance(TIMING.redis_timeout)
        raise RedisUnavailable("timeout")

    lease.renew = hung_renew
    while campaign.outcome is None:
        clock.advance(0.1)
        campaign.tick()
    assert campaign.outcome is Outcome.LOST
    assert head.stopped_at < acquired_at + TIMING.lease_duration


def test_lease_taken_by_another_kills_at_once_and_does_not_release(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    lease.renew_result = False
    clock.advance(2.0)
    assert campaign.tick() is Step.LEASE_LOST
    assert ("stop", 0.0) in events and "release" not in events
    assert campaign.outcome is Outcome.LOST


def test_head_death_kills_the_rest_then_releases(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    head.why = "gcs_server (pid 9) died"
    assert campaign.tick() is Step.HEAD_DIED
    assert events[-2:] == ["kill", "release"]
    assert campaign.outcome is Outcome.HEAD_DIED


@pytest.fixture
def rejoining(world):
    """The world with a campaign told to stand by again after a loss (a detached candidate)."""
    campaign, lease, head, clock, stop, events = world
    campaign.after_loss.stand_by_again = True
    return world


def test_a_detached_candidate_whose_head_died_stands_by_again_after_a_backoff(rejoining):
    campaign, lease, head, clock, stop, events = rejoining
    serve(campaign, head, clock)
    head.why = "gcs_server (pid 9) died"
    assert campaign.tick() is Step.HEAD_DIED
    assert events[-2:] == ["kill", "release"], "the tree goes before the lease, as when ending"
    assert campaign.outcome is None and campaign.role is Role.STANDBY
    head.why = None
    assert campaign.tick() is Step.BACKING_OFF and events[-1] == "release", "nothing tried during the backoff"
    clock.advance(1.0)
    assert campaign.tick() is Step.ACQUIRED
    assert campaign.tick() is Step.HEAD_STARTED and events[-1] == ("start", 2)


def test_a_detached_candidate_that_lost_the_lease_stands_by_under_the_new_leader(rejoining):
    campaign, lease, head, clock, stop, events = rejoining
    serve(campaign, head, clock)
    lease.renew_result, lease.holder = False, Holder("other", "h2", 7, "t2")
    clock.advance(2.0)
    assert campaign.tick() is Step.LEASE_LOST
    assert ("stop", 0.0) in events and "release" not in events
    clock.advance(1.0)
    assert campaign.tick() is Step.STANDING_BY and campaign.watch.leader == "other"
    assert campaign.outcome is None


def test_the_rejoin_backoff_doubles_on_quick_deaths_and_starts_over_after_a_long_lead(rejoining):
    campaign, lease, head, clock, stop, events = rejoining
    holds = []
    campaign.after_loss.settle()
    for _ in range(7):
        lead(campaign)
        head.why = "died"
        campaign.tick()
        head.why = None
        holds.append(campaign.watch.hold_until - clock())
        clock.now = campaign.watch.hold_until
    assert holds == [1, 2, 4, 8, 16, 30, 30]
    lead(campaign)
    clock.advance(600)
    lease.renew_result = True
    head.why = "died"
    campaign.tick()
    assert campaign.watch.hold_until - clock() == 1


def test_a_stop_during_the_backoff_ends_at_once(rejoining):
    campaign, lease, head, clock, stop, events = rejoining
    serve(campaign, head, clock)
    head.why = "died"
    campaign.tick()
    stop.set()
    assert campaign.tick() is Step.STOPPED and campaign.outcome is Outcome.STOPPED


def test_a_head_that_never_served_ends_even_a_detached_campaign(rejoining):
    campaign, lease, head, clock, stop, events = rejoining
    lead(campaign)
    head.why = "ray start exited 1"
    assert campaign.tick() is Step.HEAD_DIED
    assert campaign.outcome is Outcome.HEAD_DIED, "the detached start is still waiting: it reports the failure"


def test_without_stand_by_again_a_loss_ends_the_campaign(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    head.why = "died"
    campaign.tick()
    assert campaign.outcome is Outcome.HEAD_DIED and campaign.role is Role.DONE


def test_graceful_stop_keeps_renewing_until_the_tree_is_gone(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    stop.set()
    assert campaign.tick() is Step.STOPPING
    assert campaign.role is Role.STEPPING_DOWN
    clock.advance(2.0)
    assert campaign.tick() is Step.STOPPING
    assert events[-1] == "renew"
    head.exited = True
    assert campaign.tick() is Step.STOPPED
    assert events[-2:] == ["kill", "release"]
    assert events.index("terminate") < events.index("kill") < events.index("release")
    assert campaign.outcome is Outcome.STOPPED


def test_graceful_stop_escalates_to_kill_after_grace(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    stop.set()
    campaign.tick()
    clock.advance(TIMING.stop_grace / 2)
    assert campaign.tick() is Step.STOPPING
    clock.advance(TIMING.stop_grace / 2)
    assert campaign.tick() is Step.STOPPED
    assert events[-2:] == ["kill", "release"]


def test_lease_lost_during_graceful_stop_cuts_it_short(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    stop.set()
    campaign.tick()
    lease.renew_result = False
    clock.advance(2.0)
    assert campaign.tick() is Step.LEASE_LOST
    assert ("stop", 0.0) in events


def test_new_leader_waits_for_the_old_gcs_bounded(world):
    campaign, lease, head, clock, stop, events = world
    lease.record = Record(node="old", host="h0", gcs_address="10.0.0.9:6379", epoch=3, since=1.0)
    lease.epoch = 3
    alive = {"10.0.0.9:6379": True}
    campaign.old_gcs_alive = lambda address: alive[address]
    assert campaign.tick() is Step.ACQUIRED
    assert campaign.tick() is Step.WAITING_OLD_GCS
    clock.advance(5)
    assert campaign.tick() is Step.WAITING_OLD_GCS
    alive["10.0.0.9:6379"] = False
    assert campaign.tick() is Step.HEAD_STARTED


def test_old_gcs_that_never_goes_away_is_waited_out(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lease.record = Record(node="old", host="h0", gcs_address="10.0.0.9:6379", epoch=1, since=1.0)
    campaign.old_gcs_alive = lambda address: True
    lease.epoch = 1
    campaign.tick()
    steps = []
    while campaign.role is Role.WAITING:
        clock.advance(1.0)
        steps.append(campaign.tick())
    assert steps[-1] is Step.HEAD_STARTED
    assert clock() >= 1000 + TIMING.wait_old_gcs
    assert "still accepts connections" in caplog.text
    assert events.count("renew") >= 10, "the lease is kept while waiting"


@pytest.mark.parametrize("ttl_ms, expected", [(5000, 2.0), (300, 0.305), (0, 2.0), (-1, 2.0)])
def test_standby_retries_when_the_lease_runs_out_or_after_the_retry_period(world, ttl_ms, expected):
    campaign, lease, head, clock, stop, events = world
    lease.holder, lease.ttl_ms = OTHER, ttl_ms
    assert campaign.tick() is Step.STANDING_BY
    assert campaign.watch.next_try - clock() == pytest.approx(expected)


def test_standby_logs_each_leader_change_once(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lease.holder, lease.epoch = OTHER, 4
    caplog.set_level(logging.INFO, logger="ray-ha")
    for _ in range(5):
        campaign.tick()
    lease.holder, lease.epoch = Holder("third", "h3", 8, "t3"), 5
    for _ in range(5):
        campaign.tick()
    lines = [r.message for r in caplog.records if "leader is" in r.message]
    assert len(lines) == 2
    assert "other" in lines[0] and "epoch 4" in lines[0] and "third" in lines[1]


def test_standby_repeats_who_leads_at_most_once_a_minute(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lease.holder, lease.epoch = OTHER, 4
    caplog.set_level(logging.INFO, logger="ray-ha")
    for _ in range(30):  # a minute of tries two seconds apart
        campaign.tick()
        clock.advance(2.0)
    campaign.tick()
    lines = [r.message for r in caplog.records if "leader is other" in r.message]
    assert len(lines) == 2
    assert campaign.snapshot(Step.STANDING_BY).leader == "other"


def serve(campaign, head, clock) -> None:
    lead(campaign)
    head.address = "127.0.0.1:6379"
    clock.advance(1.5)
    assert campaign.tick() is Step.SERVING


def test_snapshot_counts_takeover_time_transitions_and_renew_failures(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.renew_result = RedisUnavailable("hung")
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.RENEW_FAILED
    snap = campaign.snapshot(Step.LEADING)
    assert (snap.role, snap.epoch, snap.leader, snap.serving) == (Role.LEADER, 1, "me", True)
    assert snap.gcs_address == "127.0.0.1:6379"
    assert snap.takeover_seconds == pytest.approx(1.5)
    assert (snap.transitions, snap.renew_failures) == (1, 1)


def test_switchover_hands_over_and_stands_by_again(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.switchover = Switchover(source="me", target="", epoch=1)
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.SWITCHOVER
    assert campaign.role is Role.STEPPING_DOWN
    head.exited = True
    assert campaign.tick() is Step.REJOINED
    assert events[-3:] == ["terminate", "kill", "release"], "tree gone before the lease is released"
    assert campaign.role is Role.STANDBY and campaign.outcome is None
    after = campaign.snapshot(Step.REJOINED)
    assert campaign.tenure is None, "standing by again holds nothing of the old tenure"
    assert (after.epoch, after.leader, after.gcs_address, after.serving) == (1, None, None, False)
    assert after.lease_confirmed_at is None


@pytest.mark.parametrize("request_", [Switchover(source="other", target="", epoch=1),
                                      Switchover(source="me", target="", epoch=0)])
def test_switchover_for_another_node_or_epoch_is_ignored(world, request_):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.switchover = request_
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.RENEWED
    assert campaign.role is Role.LEADER


def test_stop_during_a_switchover_ends_the_campaign(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.switchover = Switchover(source="me", target="", epoch=1)
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.SWITCHOVER
    stop.set()
    head.exited = True
    assert campaign.tick() is Step.STOPPED and campaign.outcome is Outcome.STOPPED


def test_a_failing_watcher_never_stops_the_campaign(world):
    campaign, lease, head, clock, stop, events = world
    seen = []

    def broken(snapshot):
        seen.append(snapshot.role)
        raise RuntimeError("disk full")

    campaign.watchers.append(broken)
    head.why = "gcs_server died"
    assert campaign.run() is Outcome.HEAD_DIED
    assert seen[0] is Role.WAITING and seen[-1] is Role.DONE


def test_standby_survives_redis_outage_and_logs_it_once_a_minute(world, caplog):
    caplog.set_level(logging.INFO, logger="ray-ha")
    campaign, lease, head, clock, stop, events = world
    lease.acquire_error = RedisUnavailable("refused")
    assert [campaign.tick() for _ in range(3)] == [Step.REDIS_DOWN] * 3
    assert caplog.text.count("Redis unavailable") == 1
    clock.advance(61)
    assert campaign.tick() is Step.REDIS_DOWN
    assert caplog.text.count("Redis unavailable") == 2
    assert campaign.snapshot(Step.REDIS_DOWN).redis_refused is None, "an outage is not a refusal"
    lease.acquire_error = None
    assert campaign.tick() is Step.ACQUIRED
    assert caplog.text.count("Redis answers again") == 1


def test_a_standby_refused_by_redis_is_stuck_says_why_once_a_minute_and_keeps_trying(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lease.acquire_error = RedisRefused("the Redis user may not run what ray-ha needs (NOPERM ...)", "permission")
    assert [campaign.tick() for _ in range(5)] == [Step.REDIS_REFUSED] * 5
    assert caplog.text.count("Redis refuses, and will until a setting changes") == 1
    assert "NOPERM" in caplog.text and "ERROR" in caplog.text
    assert campaign.snapshot(Step.REDIS_REFUSED).redis_refused.startswith("the Redis user may not")
    clock.advance(30)
    campaign.tick()
    assert caplog.text.count("Redis refuses") == 1
    clock.advance(31)
    campaign.tick()
    assert caplog.text.count("Redis refuses") == 2, "not once ever: again after a minute"
    lease.acquire_error = RedisUnavailable("down")  # a new kind of trouble is logged at once
    assert campaign.tick() is Step.REDIS_DOWN and caplog.text.count("Redis unavailable") == 1
    lease.acquire_error = None
    assert campaign.tick() is Step.ACQUIRED
    assert campaign.snapshot(Step.ACQUIRED).redis_refused is None


def test_a_refused_renewal_is_a_failed_renewal_and_the_deadline_still_kills_in_time(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    acquired_at = clock()
    lease.renew_result = RedisRefused("RAY_REDIS_ADDRESS reaches a read-only replica (READONLY ...)", "readonly")
    steps = []
    while campaign.outcome is None:
        clock.advance(0.5)
        steps.append(campaign.tick())
    assert steps.count(Step.RENEW_FAILED) >= 4 and steps[-1] is Step.DEADLINE_PASSED
    assert campaign.tally.renew_failures >= steps.count(Step.RENEW_FAILED)  # the last one may end in the deadline
    assert caplog.text.count("renewal failed") == campaign.tally.renew_failures, "every failed renewal is logged"
    assert "Redis refuses until a setting changes" in caplog.text
    assert head.stopped_at < acquired_at + TIMING.lease_duration
    assert campaign.outcome is Outcome.LOST


def test_internal_error_while_leading_still_kills_then_releases(world):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)

    def broken():
        raise RuntimeError("bug")

    head.failure = broken
    assert campaign.run() is Outcome.FAILED
    assert events[-2:] == ["kill", "release"]


def test_released_lease_is_taken_by_a_real_standby_within_half_a_second(redis_server):
    """Real Redis: a standby with a 5 s retry period is woken by the release notification."""
    target = RedisTarget(host="127.0.0.1", port=redis_server.port)
    timing = Timing(lease_duration=30, renew_deadline=10, retry_period=5, redis_timeout=1)
    leader = RedisLease(Keyspace(connect(target, 1), Keys("k")), Holder.me("a", "h"), timing.lease_duration)
    standby = RedisLease(Keyspace(connect(target, 1), Keys("k")), Holder.me("b", "h"), timing.lease_duration)
    assert leader.try_acquire().won
    events: list = []
    started = threading.Event()
    head = FakeHead(events, Clock())
    head.start = lambda epoch: started.set()
    stop = threading.Event()
    campaign = Campaign(standby, head, timing, stop, old_gcs_alive=lambda a: False)
    thread = threading.Thread(target=campaign.run)
    thread.start()
    try:
        wait_for(lambda: subscribers(Keys("k").channel, redis_server) == 1, 10,
                 what="the standby to poll once and subscribe to the release channel")
        assert not started.is_set()
        released_at = time.monotonic()
        assert leader.release()
        assert started.wait(2.0)
        assert time.monotonic() - released_at < 0.5
    finally:
        head.exited = True
        stop.set()
        thread.join(5)
    assert campaign.outcome is Outcome.STOPPED
    assert redis_server.client().get("k") is None


def test_default_waits_for_a_live_old_gcs_rather_than_starting_beside_it(caplog):
    """With the default bound, a new leader keeps holding the lease (renewing) and does not start."""
    events: list = []
    clock = Clock()
    lease, head, stop = FakeLease(events, epoch=1), FakeHead(events, clock), threading.Event()
    lease.record = Record(node="old", host="h0", gcs_address="10.0.0.9:6379", epoch=1, since=1.0)
    timing = Timing()
    campaign = Campaign(lease, head, timing, stop, clock=clock, old_gcs_alive=lambda address: True)
    campaign.tick()
    for _ in range(3600):  # an hour of ticks, a second apart
        clock.advance(1.0)
        assert campaign.tick() is Step.WAITING_OLD_GCS
    assert not any(isinstance(e, tuple) and e[0] == "start" for e in events)
    assert events.count("renew") >= 3600 / timing.retry_period - 1, "the lease is kept while waiting"
    assert campaign.role is Role.WAITING
    assert 55 <= caplog.text.count("still accepts connections") <= 65, "about once a minute"


def test_lease_key_lost_by_redis_is_taken_back_and_the_record_republished(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lead(campaign)
    head.address = "10.0.0.1:6379"
    assert campaign.tick() is Step.SERVING
    lease.renew_result = 5
    clock.advance(2.0)
    assert campaign.tick() is Step.SERVING, "the record is republished in the same tick"
    assert campaign.snapshot(Step.LEADING).epoch == 5 and campaign.role is Role.LEADER
    assert events[-2:] == ["renew", ("record", "10.0.0.1:6379", 5)]
    assert not any(e == "kill" or (isinstance(e, tuple) and e[0] == "stop") for e in events)
    assert "was gone from Redis" in caplog.text


class FakeFence:
    """Records lock-outs; fails while `error` is set."""

    def __init__(self, events: list) -> None:
        self.events, self.error = events, None

    def lock_out(self, epoch: int) -> list:
        if self.error:
            raise self.error
        self.events.append(("fence", epoch))
        return []


def test_fence_goes_up_before_the_head_starts_and_a_failure_holds_the_start(world):
    campaign, lease, head, clock, stop, events = world
    campaign.fence = fence = FakeFence(events)
    fence.error = RedisUnavailable("down")
    assert campaign.tick() is Step.ACQUIRED
    assert campaign.tick() is Step.FENCING
    clock.advance(1)
    assert campaign.tick() is Step.FENCING
    assert not [e for e in events if e[0] == "start"], "no head without the fence"
    fence.error = None
    assert campaign.tick() is Step.HEAD_STARTED
    assert events.index(("fence", 1)) < events.index(("start", 1))


def test_a_fence_that_never_goes_up_ends_in_losing_the_lease_not_a_head(world):
    campaign, lease, head, clock, stop, events = world
    campaign.fence = fence = FakeFence(events)
    fence.error = RedisUnavailable("down")
    lease.renew_result = RedisUnavailable("down")
    assert campaign.tick() is Step.ACQUIRED
    for _ in range(20):
        clock.advance(1)
        step = campaign.tick()
        if step is Step.DEADLINE_PASSED:
            break
    assert step is Step.DEADLINE_PASSED and campaign.outcome is Outcome.LOST
    assert not [e for e in events if isinstance(e, tuple) and e[0] == "start"]


# -- the operator's pause, and why each tenure ended (the history) ---------------------------------------


def test_a_paused_standby_says_so_in_its_snapshot_and_log(world, caplog):
    campaign, lease, head, clock, stop, events = world
    lease.holder, lease.pause = OTHER, True
    with caplog.at_level(logging.WARNING, logger="ray-ha"):
        assert campaign.tick() is Step.STANDING_BY
        assert campaign.snapshot(Step.STANDING_BY).paused
        lease.pause = False
        clock.advance(2)
        campaign.tick()
    assert not campaign.snapshot(Step.STANDING_BY).paused
    assert "paused by an operator" in caplog.text and "pause ended" in caplog.text


def test_a_paused_leader_whose_head_dies_keeps_the_lease_and_the_resume_hands_over(world, caplog):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.pause = True
    head.why = "gcs_server (pid 9) died"
    with caplog.at_level(logging.ERROR, logger="ray-ha"):
        assert campaign.tick() is Step.HEAD_DOWN_PAUSED
    assert events[-1] == "kill" and "release" not in events, "what is left of the head dies; the lease stays"
    assert "while paused; keeping the lease" in caplog.text
    snap = campaign.snapshot(Step.HEAD_DOWN_PAUSED)
    assert (snap.role, snap.serving, snap.paused) == (Role.LEADER, False, True)
    for _ in range(3):  # it keeps renewing, and starts nothing
        clock.advance(TIMING.retry_period)
        assert campaign.tick() is Step.HEAD_DOWN_PAUSED
    assert events.count("renew") == 3 and events.count("kill") == 1
    assert not any(isinstance(e, tuple) and e[0] == "start" and e[1] != 1 for e in events)
    lease.pause = False  # resume: read at the next renewal
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.HEAD_DOWN_PAUSED
    assert campaign.tick() is Step.HEAD_DIED
    assert events[-1] == "release" and lease.reasons == [EndReason.GCS_DIED]
    assert campaign.outcome is Outcome.HEAD_DIED


def test_a_pause_set_just_before_the_head_dies_is_read_afresh(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.pause = True  # since the last renewal
    head.why = "ray exited with code 1"
    assert campaign.tick() is Step.HEAD_DOWN_PAUSED
    assert "release" not in events


def test_a_pause_that_cannot_be_read_is_no_pause(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.pause = RedisUnavailable("down")
    head.why = "ray exited with code 1"
    assert campaign.tick() is Step.HEAD_DIED
    assert lease.reasons == [EndReason.HEAD_DIED]


def test_a_switchover_still_hands_over_from_a_paused_leader_whose_head_is_down(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.pause, head.why = True, "gcs_server (pid 9) died"
    assert campaign.tick() is Step.HEAD_DOWN_PAUSED
    lease.switchover = Switchover(source="me", target="", epoch=1)
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.SWITCHOVER
    head.exited = True
    assert campaign.tick() is Step.REJOINED
    assert lease.reasons == [EndReason.SWITCHOVER]


def test_a_paused_leader_still_stops_on_request(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.pause = True
    stop.set()
    assert campaign.tick() is Step.STOPPING
    head.exited = True
    assert campaign.tick() is Step.STOPPED
    assert lease.reasons == [EndReason.STOP]


@pytest.mark.parametrize("fault, reason", [
    ("stop", EndReason.STOP), ("head", EndReason.HEAD_DIED), ("gcs", EndReason.GCS_DIED),
    ("deadline", EndReason.RENEWAL_FAILED), ("refused", EndReason.REFUSED), ("error", EndReason.INTERNAL_ERROR)])
def test_each_release_says_why_the_tenure_ended(world, fault, reason):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    if fault == "stop":
        stop.set()
        head.exited = True
    elif fault in ("head", "gcs"):
        head.why = "ray exited with code 1" if fault == "head" else "gcs_server (pid 9) died"
    elif fault in ("deadline", "refused"):
        lease.renew_result = RedisUnavailable("down") if fault == "deadline" else RedisRefused("NOPERM", "acl")
    else:
        head.failure = lambda: 1 / 0
        campaign.run()
    while campaign.outcome is None:
        clock.advance(0.5)
        campaign.tick()
    assert lease.reasons == [reason]


def test_the_record_carries_how_the_tenure_before_ended(world):
    campaign, lease, head, clock, stop, events = world
    lease.previous = Ending(node="other", epoch=3, reason=EndReason.EXPIRED, ended_ms=1234)
    serve(campaign, head, clock)
    assert lease.written_previous == lease.previous


def test_a_lease_key_lost_by_redis_is_its_own_change_in_the_history(world):
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)
    lease.renew_result = 5
    clock.advance(TIMING.retry_period)
    assert campaign.tick() is Step.SERVING, "taken back and published again in the same tick"
    assert events[-1] == ("record", "127.0.0.1:6379", 5)
    assert lease.written_previous == Ending(node="me", epoch=1, reason=EndReason.REDIS_LOST, ended_ms=0)


def test_the_takeover_is_measured_from_the_tenure_before_s_end_to_our_gcs_serving(world):
    campaign, lease, head, clock, stop, events = world
    lease.previous = Ending(node="other", epoch=3, reason=EndReason.EXPIRED, ended_ms=10_000)
    lease.won_ms = 13_500  # the lease was free 3.5 s before we won it (Redis's clock)
    serve(campaign, head, clock)  # 1.5 s from the win to our GCS serving (our clock)
    snap = campaign.snapshot(Step.SERVING)
    assert snap.takeover_seconds == pytest.approx(1.5) and snap.headless_seconds == pytest.approx(5.0)


def test_a_switchover_that_cannot_happen_when_due_is_logged_and_the_leader_stays(world, caplog):
    from raylaunch.store.records import SwitchoverError
    campaign, lease, head, clock, stop, events = world
    serve(campaign, head, clock)

    def due_but_impossible():
        raise SwitchoverError("there is no standby to take over")

    lease.switchover_request = due_but_impossible
    clock.advance(TIMING.retry_period)
    with caplog.at_level(logging.WARNING, logger="ray-ha"):
        assert campaign.tick() is Step.RENEWED
    assert campaign.role is Role.LEADER and "no switchover this renewal: there is no standby" in caplog.text
