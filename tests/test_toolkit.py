"""The operator's toolkit against a real redis-server: pause and resume, and the history of leadership
changes with the reason each tenure ended. Then the same through the CLI with real supervisors (fake ray)."""

import json
import os
import signal
import time

import pytest

from conftest import FAST_TIMING, KEYS, fake_ray_events, ray_ha, wait_for
from raylaunch.store.connect import RedisTarget, connect
from raylaunch.store.errors import guarded
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.lease import RedisLease
from raylaunch.store.records import Change, EndReason, Ending, Holder, Record, Switchover
from raylaunch.store.view import pause_cluster, read_cluster, read_history, resume_cluster

KEY = KEYS.lease


def keyspace_of(server) -> Keyspace:
    target = RedisTarget(host="127.0.0.1", port=server.port, password=server.password)
    return Keyspace(guarded(lambda: connect(target, 1.0), KEY), KEYS)


def lease_of(server, node: str, lease: float = 5.0) -> RedisLease:
    return RedisLease(keyspace_of(server), Holder.me(node, "host"), lease)


def redis_ms(server) -> int:
    seconds, micros = server.client().time()
    return seconds * 1000 + micros // 1000


# -- pause and resume, in Redis -------------------------------------------------------------------------


@pytest.mark.redis_versions
def test_a_pause_holds_every_candidate_back_while_the_leader_keeps_renewing(redis_server):
    a, b = lease_of(redis_server, "a", lease=0.5), lease_of(redis_server, "b", lease=0.5)
    assert a.try_acquire().won
    paused = pause_cluster(keyspace_of(redis_server), "op@host", None, "upgrade")
    assert a.paused() and paused.until is None and redis_server.client().pttl(KEYS.pause) == -1
    for _ in range(3):  # the leader renews through the pause
        time.sleep(0.2)
        assert a.renew(1) == 1
    assert a.release(EndReason.STOP)
    refused = [b.try_acquire(), a.try_acquire()]
    assert not any(t.won for t in refused) and all(t.paused for t in refused), "nobody takes a free lease"
    assert redis_server.client().get(KEY) is None
    view = read_cluster(keyspace_of(redis_server))
    assert view.pause is not None and (view.pause.by, view.pause.reason) == ("op@host", "upgrade")
    assert resume_cluster(keyspace_of(redis_server)).by == "op@host"
    assert resume_cluster(keyspace_of(redis_server)) is None, "a second resume finds nothing"
    taken = b.try_acquire()
    assert taken.won and not taken.paused and taken.epoch == 2


@pytest.mark.redis_versions
def test_a_pause_for_a_while_ends_by_itself(redis_server):
    b = lease_of(redis_server, "b")
    pause = pause_cluster(keyspace_of(redis_server), "op@host", 0.4)
    assert pause.until == pytest.approx(time.time() + 0.4, abs=0.2)
    assert 0 < redis_server.client().pttl(KEYS.pause) <= 400
    assert not b.try_acquire().won
    time.sleep(0.5)
    assert b.try_acquire().won, "the pause expired in Redis by itself"


def test_a_switchover_still_goes_through_a_pause_to_the_node_it_names(redis_server):
    a, b, c = (lease_of(redis_server, n) for n in "abc")
    assert a.try_acquire().won
    pause_cluster(keyspace_of(redis_server), "op@host", None)
    redis_server.client().set(KEYS.switchover, Switchover(source="a", target="c", epoch=1).encode())
    assert a.release(EndReason.SWITCHOVER)
    assert not a.try_acquire().won and not b.try_acquire().won, "the old leader and an unnamed node wait"
    taken = c.try_acquire()
    assert taken.won and taken.previous.reason is EndReason.SWITCHOVER
    assert redis_server.client().exists(KEYS.pause), "the pause outlives the switchover"


# -- how a tenure ended, and the history ------------------------------------------------------------------


@pytest.mark.redis_versions
def test_the_winner_learns_who_held_the_lease_before_why_it_ended_and_when(redis_server):
    a, b = lease_of(redis_server, "a", lease=0.3), lease_of(redis_server, "b", lease=0.3)
    first = a.try_acquire()
    assert first.won and first.previous is None, "the first lease has nothing before it"
    before = redis_ms(redis_server)
    assert a.release(EndReason.GCS_DIED)
    taken = b.try_acquire()
    assert taken.previous.node == "a" and taken.previous.epoch == 1
    assert taken.previous.reason is EndReason.GCS_DIED
    assert before <= taken.previous.ended_ms <= redis_ms(redis_server), "the release's time, by Redis's clock"
    time.sleep(0.1)
    renewed = redis_ms(redis_server)
    assert b.renew(2) == 2
    time.sleep(0.4)  # b stops renewing: its lease expires unreleased
    again = a.try_acquire()
    assert again.won and again.previous.node == "b" and again.previous.epoch == 2
    assert again.previous.reason is EndReason.EXPIRED
    assert renewed <= again.previous.ended_ms < renewed + 100, "an expired lease ended at its last renewal"


def test_a_grant_of_an_older_ray_ha_reads_as_unknown_not_as_an_error(redis_server):
    a = lease_of(redis_server, "a")
    redis_server.client().hset(KEYS.grant, mapping={"value": "", "at": 0})  # released by ray-ha before 0.5
    taken = a.try_acquire()
    assert taken.previous == Ending(node="?", epoch=0, reason=EndReason.UNKNOWN, ended_ms=0)


@pytest.mark.redis_versions
def test_the_history_keeps_each_change_with_its_reason_and_how_long_no_head_served(redis_server):
    a, b = lease_of(redis_server, "a"), lease_of(redis_server, "b")
    assert a.try_acquire().won
    assert a.write_record("127.0.0.1:1", 1, time.time(), {})
    assert a.release(EndReason.SWITCHOVER)
    taken = b.try_acquire()
    time.sleep(0.3)
    assert b.write_record("127.0.0.1:2", 2, time.time(), {"dashboard": 8265}, taken.previous)
    newest, oldest = read_history(keyspace_of(redis_server), 10)
    assert (newest.record.node, newest.record.epoch, newest.record.ports) == ("b", 2, {"dashboard": 8265})
    assert newest.previous.reason is EndReason.SWITCHOVER and newest.previous.node == "a"
    assert 0.3 <= newest.headless_seconds < 1.5
    assert oldest.record.node == "a" and oldest.previous is None and oldest.headless_seconds is None
    record = Record.decode(redis_server.client().get(KEYS.record))
    assert record.node == "b", "the record itself keeps its layout (followers read it)"
    assert len(read_history(keyspace_of(redis_server), 1)) == 1


def test_history_entries_of_an_older_ray_ha_read_as_changes_without_a_reason(redis_server):
    old = json.dumps({"node": "x", "host": "h", "gcs_address": "127.0.0.1:5", "epoch": 3, "since": 1.0})
    redis_server.client().lpush(KEYS.history, old, "not json")
    (change,) = read_history(keyspace_of(redis_server), 5)
    assert change == Change(record=Record(node="x", host="h", gcs_address="127.0.0.1:5", epoch=3, since=1.0))
