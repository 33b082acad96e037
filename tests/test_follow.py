"""Follow mode's decisions on a fake clock, with our own seams faked (who leads, the worker's tree)."""

import logging
import threading
from typing import Optional

import pytest

from conftest import Clock
from raylaunch.backoff import CAP as BACKOFF_MAX, FIRST as BACKOFF_FIRST
from raylaunch.follow.follower import (BETWEEN_POLL, RESTART_GRACE, Decision, Follower, FollowStep, FollowTiming,
                              on_new_leader)
from raylaunch.store.errors import RedisRefused, RedisUnavailable
from raylaunch.store.records import Record

A1 = Record(node="a", host="ha", gcs_address="10.0.0.1:6379", epoch=1, since=1.0)
B2 = Record(node="b", host="hb", gcs_address="10.0.0.2:6379", epoch=2, since=2.0)
VIP2 = Record(node="b", host="hb", gcs_address="10.0.0.1:6379", epoch=2, since=2.0)  # same VIP, new node


class Source:
    """Who leads, as the test sets it; remembers whom the follower said it follows."""

    def __init__(self) -> None:
        self.leader: Optional[Record] = None
        self.error: Optional[Exception] = None
        self.told: list = []
        self.lease_left = 0.0
        self.stopped = False  # nobody leads and the last leader was stopped by an operator

    def current(self, following: Optional[Record]) -> Optional[Record]:
        self.told.append(following.epoch if following else None)
        if self.error:
            raise self.error
        return self.leader


class Worker:
    """The worker's tree as events; `relayed` as the test sets it (retarget is only called on a relayed one)."""

    def __init__(self, relayed: bool = False) -> None:
        self.events: list = []
        self.why: Optional[str] = None
        self.relayed = relayed

    def retarget(self, address: Optional[str]) -> None:
        assert self.relayed, "only a relayed worker is retargeted"
        self.events.append(("retarget", address))

    def start(self, address: str, epoch: int) -> None:
        self.events.append(("start", address, epoch))
        self.why = None

    def failure(self) -> Optional[str]:
        return self.why

    def stop(self, grace: float) -> list:
        self.events.append(("stop", grace))
        return []


def make_world(relayed: bool):
    source, worker, clock, stop = Source(), Worker(relayed), Clock(100.0), threading.Event()
    follower = Follower(source, worker, FollowTiming(poll=0.5, stop_grace=3.0, stopped_for=60.0), stop, clock=clock)
    return follower, source, worker, clock, stop


@pytest.fixture
def world():
    return make_world(relayed=False)


@pytest.fixture
def relayed():
    return make_world(relayed=True)


@pytest.mark.parametrize("new, relayed, decision", [
    (VIP2, False, Decision.KEEP), (B2, False, Decision.RESTART),
    (VIP2, True, Decision.KEEP), (B2, True, Decision.RETARGET)])
def test_same_address_keeps_the_worker_a_new_address_restarts_it_or_moves_the_relay(new, relayed, decision):
    assert on_new_leader(A1, new, relayed) is decision


def test_waits_for_a_serving_leader_then_joins_its_gcs(world):
    follower, source, worker, clock, stop = world
    assert follower.tick() is FollowStep.WAITING_LEADER
    assert worker.events == []
    source.leader = A1
    assert follower.tick() is FollowStep.STARTED
    assert worker.events == [("start", "10.0.0.1:6379", 1)]
    assert follower.tick() is FollowStep.FOLLOWING
    assert source.told == [None, None, 1], "Redis hears which epoch we follow once we do"


def test_new_leader_at_a_new_address_stops_the_tree_before_joining_again(world):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    source.leader = None  # between leaders: the worker is left to Ray's reconnect
    assert follower.tick() is FollowStep.BETWEEN_LEADERS
    source.leader = B2
    assert follower.tick() is FollowStep.RESTARTED
    assert worker.events[1:] == [("stop", RESTART_GRACE), ("start", "10.0.0.2:6379", 2)], \
        "the old GCS is gone: no long drain before the re-join"
    assert follower.following == B2 and follower.restarts == 1


def test_new_leader_at_the_same_address_leaves_the_worker_alone(world):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    source.leader = VIP2
    assert follower.tick() is FollowStep.KEPT
    assert worker.events == [("start", "10.0.0.1:6379", 1)]
    assert follower.following == VIP2
    assert follower.tick() is FollowStep.FOLLOWING


def test_a_dead_worker_is_started_again_with_a_doubling_backoff(world):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    waits = []
    for _ in range(7):
        worker.why = "raylet (pid 9) died"
        assert follower.tick() is FollowStep.WORKER_DIED
        assert worker.events[-1] == ("stop", 0.0), "what is left of the tree goes at once"
        started_before = len(worker.events)
        assert follower.tick() is FollowStep.BACKING_OFF
        waits.append(follower.next_start - clock())
        clock.now = follower.next_start
        assert follower.tick() is FollowStep.STARTED and len(worker.events) == started_before + 1
    assert waits == [BACKOFF_FIRST, 2, 4, 8, 16, BACKOFF_MAX, BACKOFF_MAX]


def test_the_backoff_starts_over_after_a_worker_ran_a_while(world):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    for _ in range(3):
        worker.why = "died"
        follower.tick()
        clock.now = follower.next_start
        follower.tick()
    clock.now += 600
    worker.why = "died"
    follower.tick()
    assert follower.next_start - clock() == BACKOFF_FIRST


def test_redis_trouble_leaves_a_running_worker_alone(world, caplog):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    source.error = RedisUnavailable("down")
    assert follower.tick() is FollowStep.REDIS_DOWN
    assert follower.tick() is FollowStep.REDIS_DOWN
    assert worker.events == [("start", "10.0.0.1:6379", 1)]
    assert caplog.text.count("Redis unavailable") == 1 and "the worker, if any, keeps running" in caplog.text
    source.error = None
    assert follower.tick() is FollowStep.FOLLOWING


def test_a_follower_refused_by_redis_keeps_its_worker_is_stuck_and_says_so_once_a_minute(world, caplog):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    source.error = RedisRefused("a key of lease {k} holds a value of the wrong type (WRONGTYPE ...)", "wrong-type")
    assert [follower.tick() for _ in range(4)] == [FollowStep.REDIS_REFUSED] * 4
    assert caplog.text.count("Redis refuses") == 1 and follower.trouble.refused.startswith("a key of lease")
    clock.now += 61
    follower.tick()
    assert caplog.text.count("Redis refuses") == 2
    assert worker.events == [("start", "10.0.0.1:6379", 1)], "the worker is left alone"
    source.error = None
    assert follower.tick() is FollowStep.FOLLOWING and follower.trouble.refused is None


def test_stop_stops_the_worker_gracefully_and_ends(world):
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    stop.set()
    assert follower.run() is FollowStep.STOPPED
    assert worker.events[-1] == ("stop", 3.0)
    assert follower.following is None


def test_stop_while_waiting_starts_nothing(world):
    follower, source, worker, clock, stop = world
    stop.set()
    source.leader = A1
    assert follower.tick() is FollowStep.STOPPED
    assert worker.events == []


def test_a_relayed_worker_stays_the_relay_refuses_between_leaders_then_forwards_to_the_new_one(relayed, caplog):
    follower, source, worker, clock, stop = relayed
    caplog.set_level(logging.INFO, "ray-ha")
    source.leader = A1
    assert follower.tick() is FollowStep.STARTED
    source.leader = None
    assert [follower.tick() for _ in range(3)] == [FollowStep.BETWEEN_LEADERS] * 3
    assert caplog.text.count("the relay refuses new GCS connections") == 1, "said once per gap"
    source.leader = B2
    assert follower.tick() is FollowStep.RETARGETED
    assert worker.events == [("start", "10.0.0.1:6379", 1), ("retarget", None), ("retarget", "10.0.0.2:6379")], \
        "no stop, no second start: the worker's tree is kept"
    assert follower.following == B2 and follower.restarts == 0
    assert follower.tick() is FollowStep.FOLLOWING


def test_a_relayed_worker_goes_straight_to_a_new_leader_and_back_to_its_own_after_a_gap(relayed):
    follower, source, worker, clock, stop = relayed
    source.leader = A1
    follower.tick()
    source.leader = B2  # no gap seen between the two leaders
    assert follower.tick() is FollowStep.RETARGETED
    source.leader = None
    follower.tick()
    source.leader = B2  # the same leader again (a read between records): forward to it again
    assert follower.tick() is FollowStep.FOLLOWING
    assert worker.events[1:] == [("retarget", "10.0.0.2:6379"), ("retarget", None), ("retarget", "10.0.0.2:6379")]


def test_a_relayed_worker_at_the_same_address_keeps_the_relay_where_it_points(relayed):
    follower, source, worker, clock, stop = relayed
    source.leader = A1
    follower.tick()
    source.leader = VIP2
    assert follower.tick() is FollowStep.KEPT
    assert worker.events == [("start", "10.0.0.1:6379", 1), ("retarget", "10.0.0.1:6379")]


def test_between_leaders_a_follower_looks_for_the_next_one_more_often(relayed):
    follower, source, worker, clock, stop = relayed
    source.leader = A1
    follower.tick()
    source.leader = None
    waits = []

    class Stop:
        def is_set(self):
            return len(waits) >= 3

        def wait(self, seconds):
            waits.append(seconds)
            if len(waits) == 2:
                source.leader = B2

    follower.stop = Stop()
    follower.run()
    assert waits == [BETWEEN_POLL, BETWEEN_POLL, 0.5], "0.1 s between leaders, the retry period otherwise"


@pytest.mark.parametrize("step, lease_left, pause", [
    (FollowStep.FOLLOWING, 14.0, 0.5),     # a leader that renews: the retry period
    (FollowStep.FOLLOWING, 0.25, 0.35),    # its lease runs out first: read just after it does
    (FollowStep.FOLLOWING, 0.0, 0.5),      # nobody holds the lease: nothing to wait for
    (FollowStep.BETWEEN_LEADERS, 9.0, 0.1),
])
def test_the_next_read_comes_no_later_than_the_leaders_lease_runs_out(world, step, lease_left, pause):
    follower, source = world[0], world[1]
    source.lease_left = lease_left
    assert follower.pause(step) == pytest.approx(pause)


# -- a cluster stopped whole: `ray down` of every head ------------------------------------------------------


def stop_the_cluster(source):
    source.leader, source.stopped = None, True  # the last leader released with reason "stop"; nobody leads


def joined_then_stopped(world):
    """A follower that joined A1, then saw the cluster stopped (once)."""
    follower, source, worker, clock, stop = world
    source.leader = A1
    follower.tick()
    stop_the_cluster(source)
    follower.tick()
    return world


def test_a_worker_leaves_once_the_cluster_it_joined_stays_stopped_as_long_as_rays_raylet_waits(relayed):
    follower, source, worker, clock, stop = relayed
    source.leader = A1
    follower.tick()
    stop_the_cluster(source)
    assert follower.tick() is FollowStep.BETWEEN_LEADERS
    clock.advance(59.9)
    assert follower.tick() is FollowStep.BETWEEN_LEADERS, "not before Ray's own raylet would give up"
    clock.advance(0.1)
    assert follower.tick() is FollowStep.CLUSTER_STOPPED
    assert worker.events[-1] == ("stop", 3.0) and follower.following is None, "the worker's tree, gracefully"
    assert follower.run() is FollowStep.CLUSTER_STOPPED, "run() ends on it"


def test_a_head_started_again_within_the_wait_keeps_the_worker(relayed):
    """`ray up` again of a lone head runs `ray-ha stop` then `ray-ha start`: the workers must stay."""
    follower, source, worker, clock, stop = joined_then_stopped(relayed)
    clock.advance(50)
    source.leader, source.stopped = B2, False
    assert follower.tick() is FollowStep.RETARGETED
    stop_the_cluster(source)
    follower.tick()
    clock.advance(50)
    assert follower.tick() is FollowStep.BETWEEN_LEADERS, "the wait starts again at each stop"


def test_a_crashed_leader_is_waited_for_without_end(relayed):
    follower, source, worker, clock, stop = relayed
    source.leader = A1
    follower.tick()
    source.leader = None  # its lease expired unrenewed (or was released for any other reason)
    for _ in range(10):
        clock.advance(3600)
        assert follower.tick() is FollowStep.BETWEEN_LEADERS


def test_a_follower_that_never_joined_waits_for_its_heads_even_if_the_last_cluster_was_stopped(world):
    """A worker may start before its heads (systemd, `ray up` of a stopped cluster): it must not leave."""
    follower, source, worker, clock, stop = world
    stop_the_cluster(source)
    for _ in range(3):
        clock.advance(3600)
        assert follower.tick() is FollowStep.WAITING_LEADER
    source.leader, source.stopped = A1, False
    assert follower.tick() is FollowStep.STARTED


def test_a_worker_whose_raylet_gave_up_first_still_leaves_with_the_stopped_cluster(relayed):
    """Ray's raylet exits after the same wait; the follower, back to waiting, still knows it had joined."""
    follower, source, worker, clock, stop = joined_then_stopped(relayed)
    clock.advance(59)
    worker.why = "raylet exited (code 1)"
    assert follower.tick() is FollowStep.WORKER_DIED
    clock.advance(1)
    assert follower.tick() is FollowStep.CLUSTER_STOPPED
