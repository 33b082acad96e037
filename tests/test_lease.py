"""The Redis lease against a real redis-server: acquire, renew, CAS release, expiry, epochs, exclusion."""

import threading
import time

import pytest
import redis

import json

from raylaunch.store.errors import RedisRefused, RedisUnavailable, guarded
from raylaunch.store.keys import Keys
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.lease import RedisLease
from raylaunch.store.records import Holder, Switchover
from raylaunch.store.scripts import HISTORY_LENGTH
from raylaunch.store.connect import RedisTarget, connect

pytestmark = pytest.mark.redis_versions

KEYS = Keys("ray-ha:test:leader")
KEY = KEYS.lease  # the lease itself: {ray-ha:test:leader}


def make_lease(server, node="n1", lease=5.0, timeout=1.0, keys=KEYS, password=None):
    target = RedisTarget(host="127.0.0.1", port=server.port, password=password or server.password)
    return RedisLease(Keyspace(guarded(lambda: connect(target, timeout), keys.lease), keys), Holder.me(node, "host"), lease)


def test_every_key_of_a_lease_shares_one_hash_slot_under_its_name_as_the_tag():
    from redis.crc import key_slot

    keys = Keys("ray-ha:default:leader")
    names = [keys.lease, keys.epoch, keys.record, keys.history, keys.switchover, keys.grant, keys.channel,
             keys.probe, keys.candidate("a"), keys.follower("w")]
    assert keys.lease == "{ray-ha:default:leader}" and keys.record == "{ray-ha:default:leader}:record"
    assert keys.candidate("a") == "{ray-ha:default:leader}:candidate:a"
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert keys.gcs_user_prefix == "ray-ha:default:leader:gcs:e" and keys.legacy_lease == "ray-ha:default:leader"
    with pytest.raises(ValueError):
        Keys("a{b}")


def test_acquire_sets_value_ttl_and_first_epoch(redis_server):
    lease = make_lease(redis_server)
    attempt = lease.try_acquire()
    assert attempt.won and attempt.epoch == 1
    raw = redis_server.client()
    assert raw.get(KEY) == lease.me.value
    assert 4000 < raw.pttl(KEY) <= 5000


def test_second_candidate_sees_holder_epoch_and_ttl(redis_server):
    first, second = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    assert first.try_acquire().won
    attempt = second.try_acquire()
    assert not attempt.won
    assert attempt.holder == first.me and attempt.epoch == 1 and 0 < attempt.ttl_ms <= 5000


def test_epoch_increases_by_exactly_one_per_acquisition(redis_server):
    a, b = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    epochs = []
    for lease in (a, b, a, a, b):
        attempt = lease.try_acquire()
        assert attempt.won
        epochs.append(attempt.epoch)
        assert lease.release()
    assert epochs == [1, 2, 3, 4, 5]


def test_renew_extends_only_our_lease(redis_server):
    a, b = make_lease(redis_server, "a", lease=2.0), make_lease(redis_server, "b", lease=2.0)
    assert a.try_acquire().won
    redis_server.client().pexpire(KEY, 300)
    assert a.renew(1) == 1
    assert redis_server.client().pttl(KEY) > 1500
    assert b.renew(1) == 0
    assert redis_server.client().get(KEY) == a.me.value


def test_renew_after_expiry_and_takeover_does_not_extend_the_new_leader(redis_server):
    a, b = make_lease(redis_server, "a", lease=0.3), make_lease(redis_server, "b", lease=0.3)
    assert a.try_acquire().won
    time.sleep(0.4)
    taken = b.try_acquire()
    assert taken.won and taken.epoch == 2
    redis_server.client().pexpire(KEY, 100)
    assert a.renew(1) == 0
    assert redis_server.client().pttl(KEY) <= 100


def test_release_is_compare_and_set_and_notifies(redis_server):
    a, b = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    assert a.try_acquire().won
    sub = redis_server.client().pubsub(ignore_subscribe_messages=True)
    sub.subscribe(a.keys.channel)
    assert not b.release()
    assert redis_server.client().get(KEY) == a.me.value
    assert a.release()
    assert redis_server.client().get(KEY) is None
    message, deadline = None, time.monotonic() + 2  # the first read may return the swallowed subscribe ack
    while message is None and time.monotonic() < deadline:
        message = sub.get_message(timeout=0.2)
    assert message and message["data"] == a.me.value
    assert not a.release()
    sub.close()


def test_renew_takes_back_a_key_redis_lost_with_a_higher_epoch(redis_server):
    a, b = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    assert a.try_acquire().epoch == 1
    redis_server.client().flushall()  # a restart without persistence, or a failover that lost the key
    assert a.renew(1) == 2
    assert redis_server.client().get(KEY) == a.me.value
    assert 4000 < redis_server.client().pttl(KEY) <= 5000
    assert not b.try_acquire().won
    assert a.renew(2) == 2, "a plain renewal keeps the epoch"


def test_a_renewal_after_our_lease_ran_out_takes_nothing(redis_server):
    """A renewal delayed past the lease (a frozen leader, a request held in a partition) is no re-take."""
    a = make_lease(redis_server, "a", lease=0.2)
    assert a.try_acquire().won
    time.sleep(0.3)
    assert a.renew(1) == 0
    assert redis_server.client().get(KEY) is None


def test_a_late_renewal_after_a_release_takes_nothing(redis_server):
    a = make_lease(redis_server, "a")
    assert a.try_acquire().won
    assert a.release()
    assert a.renew(1) == 0
    assert redis_server.client().get(KEY) is None


def test_a_stale_renewal_after_another_leaders_lease_ran_out_takes_nothing(redis_server):
    a, b = make_lease(redis_server, "a", lease=0.2), make_lease(redis_server, "b", lease=0.2)
    assert a.try_acquire().won
    time.sleep(0.3)
    assert b.try_acquire().won
    time.sleep(0.3)
    assert a.renew(1) == 0
    assert redis_server.client().get(KEY) is None


def test_a_standby_takes_an_epoch_above_every_one_it_saw_after_redis_lost_them(redis_server):
    a, b = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    for _ in range(3):
        assert a.try_acquire().won
        assert not b.try_acquire().won  # b sees the epoch
        assert a.release()
    assert a.try_acquire().epoch == 4
    assert not b.try_acquire().won
    redis_server.client().flushall()  # lease and epoch counter gone with a Redis that kept no data
    attempt = b.try_acquire()
    assert attempt.won and attempt.epoch == 5, "the fencing epoch never goes back"
    assert int(redis_server.client().get(f"{KEY}:epoch")) == 5


def test_lease_expires_without_renewal(redis_server):
    a, b = make_lease(redis_server, "a", lease=0.2), make_lease(redis_server, "b", lease=0.2)
    assert a.try_acquire().won
    assert not b.try_acquire().won
    time.sleep(0.3)
    assert b.try_acquire().won


def test_record_is_written_only_by_the_holder(redis_server):
    a, b = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    assert a.read_record() is None
    assert a.try_acquire().won
    assert not b.write_record("127.0.1.2:6379", 1, 100.0, {})
    assert a.write_record("127.0.1.1:6379", 1, 100.0, {"dashboard": 8265, "client": 10001})
    record = b.read_record()
    assert (record.node, record.gcs_address, record.epoch, record.since) == ("a", "127.0.1.1:6379", 1, 100.0)
    assert [record.address(s) for s in ("gcs", "dashboard", "client", "other")] == [
        "127.0.1.1:6379", "127.0.1.1:8265", "127.0.1.1:10001", None]


def test_the_provider_node_list_is_kept_only_by_the_holder_and_read_by_anyone(redis_server):
    a, b = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    assert b.read_provider_nodes() is None
    assert a.try_acquire().won
    assert a.write_provider_nodes('{"10.0.0.21": {}}')
    assert not b.write_provider_nodes('{"stale": {}}'), "a standby or a deposed leader writes nothing"
    assert b.read_provider_nodes() == '{"10.0.0.21": {}}'


@pytest.mark.parametrize("candidates", [2, 5])
def test_candidates_never_hold_the_lease_together(redis_server, candidates):
    """Each winner holds briefly, verifying ownership, then releases; holders never overlap."""
    leases = [make_lease(redis_server, f"n{i}", lease=30.0) for i in range(candidates)]
    holding, worst, wins, errors = [0], [0], [0], []
    guard = threading.Lock()
    deadline = time.monotonic() + 2.0

    def campaign(lease):
        try:
            while time.monotonic() < deadline:
                attempt = lease.try_acquire()
                if not attempt.won:
                    continue
                with guard:
                    holding[0] += 1
                    worst[0] = max(worst[0], holding[0])
                    wins[0] += 1
                assert lease.renew(attempt.epoch), "a winner must own the lease"
                with guard:
                    holding[0] -= 1
                assert lease.release()
        except Exception as exc:  # surfaced below; a thread's assert would vanish otherwise
            errors.append(exc)

    threads = [threading.Thread(target=campaign, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert worst[0] == 1
    assert wins[0] > candidates
    epoch = int(redis_server.client().get(f"{KEY}:epoch"))
    assert epoch == wins[0]


def test_released_lease_wakes_a_waiting_standby_long_before_its_wait_ends(redis_server):
    """The release notification, not the end of the standby's 10 s wait, wakes it (bound: half the wait)."""
    leader, standby = make_lease(redis_server, "a"), make_lease(redis_server, "b")
    assert leader.try_acquire().won
    stop, woke = threading.Event(), []

    def wait():
        standby.wait_released(0.05, stop)  # subscribes
        t0 = time.monotonic()
        if standby.wait_released(10.0, stop):
            woke.append(time.monotonic() - t0)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    released_at = time.monotonic()
    assert leader.release()
    thread.join(5)
    assert woke, "the standby was not woken by the release"
    assert woke[0] < 5.0 and time.monotonic() - released_at < 5.0, f"woken after {woke[0]:.2f}s of a 10 s wait"
    assert standby.try_acquire().won
    standby.close()


def test_wait_returns_at_once_on_stop(redis_server):
    lease, stop = make_lease(redis_server), threading.Event()
    stop.set()
    t0 = time.monotonic()
    assert lease.wait_released(10.0, stop) is False
    assert time.monotonic() - t0 < 0.5


def test_unreachable_redis_is_one_exception_type_and_bounded(redis_server):
    lease = make_lease(redis_server, timeout=0.5)
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable):
        lease.try_acquire()
    with pytest.raises(RedisUnavailable):
        lease.renew(1)
    assert time.monotonic() - t0 < 3


def test_hung_redis_call_times_out(redis_server):
    """A Redis that accepts but never answers (DEBUG SLEEP) cannot stall a call past the timeout."""
    lease = make_lease(redis_server, timeout=0.5)
    assert lease.try_acquire().won
    sleeper = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "2"))
    sleeper.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable):
        lease.renew(1)
    assert time.monotonic() - t0 < 1.5
    sleeper.join()


def test_wrong_type_lease_key_is_reported(redis_server):
    redis_server.client().hset(KEY, "a", "b")
    lease = make_lease(redis_server)
    with pytest.raises(RedisRefused, match="holds a hash"):
        lease.check()
    with pytest.raises(RedisRefused, match="wrong type"):
        lease.try_acquire()


def test_wrong_password_is_a_store_error(tmp_path, make_redis):
    server = make_redis(tmp_path, password="right").start()
    try:
        with pytest.raises(RedisRefused, match="credentials"):
            make_lease(server, password="wrong").check()
        make_lease(server, password="right").check()
    finally:
        server.stop()


def test_redis_user_without_scripting_is_reported(redis_server):
    """An ACL user denied Lua (as on hosted Redis that forbids EVAL) fails the start-up check."""
    redis_server.client().execute_command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "&*", "+@all",
                                          "-@scripting")
    target = RedisTarget(host="127.0.0.1", port=redis_server.port, username="noscript", password="pw")
    lease = RedisLease(Keyspace(connect(target, 1.0), KEYS), Holder.me("n", "h"), 5.0)
    with pytest.raises(RedisRefused, match="may not run"):
        lease.check()
    assert redis_server.client().get(KEY) is None


def test_a_user_given_what_the_advice_says_can_do_everything_ray_ha_does(redis_server):
    """The NOPERM advice (keys and channels {name}*) is enough: check, win, renew, record, wake, release."""
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "ha", "on", ">pw", "resetchannels", f"~{KEY}*", f"&{KEY}*", "+@all")
    a, b = (RedisLease(Keyspace(connect(RedisTarget("127.0.0.1", redis_server.port, username="ha", password="pw"),
                                        1.0), KEYS), Holder.me(node, "h"), 5.0) for node in "ab")
    a.check()
    assert a.try_acquire().won and not b.try_acquire().won
    assert a.renew(1) == 1 and a.write_record("127.0.1.1:1", 1, 1.0, {})
    woke: list = []
    waiter = threading.Thread(target=lambda: woke.append(b.wait_released(5, threading.Event())))
    waiter.start()
    time.sleep(0.3)
    assert a.release()
    waiter.join(5)
    assert woke == [True]
    with pytest.raises(redis.exceptions.NoPermissionError):
        a.client.get("unrelated")  # and nothing else


def test_losing_try_refreshes_the_standby_heartbeat_and_winning_removes_it(redis_server):
    a, b = make_lease(redis_server, "a", lease=2.0), make_lease(redis_server, "b", lease=2.0)
    assert a.try_acquire().won
    assert not b.try_acquire().won
    raw = redis_server.client()
    heartbeat = json.loads(raw.get(b.keys.candidate("b")))
    assert heartbeat["node"] == "b" and heartbeat["role"] == "standby"
    assert 1000 < raw.pttl(b.keys.candidate("b")) <= 2000
    assert a.release() and b.try_acquire().won
    assert raw.get(b.keys.candidate("b")) is None
    b.forget_candidate()


def test_records_are_kept_as_a_bounded_history_newest_first(redis_server):
    a = make_lease(redis_server, "a")
    assert a.try_acquire().won
    for epoch in range(1, HISTORY_LENGTH + 5):
        assert a.write_record(f"127.0.1.1:{epoch}", epoch, 1.0, {})
    history = redis_server.client().lrange(a.keys.history, 0, -1)
    assert len(history) == HISTORY_LENGTH
    assert json.loads(history[0])["epoch"] == HISTORY_LENGTH + 4


@pytest.mark.parametrize("target, winner", [("c", "c"), ("", "b")])
def test_switchover_holds_back_the_old_leader_and_unnamed_nodes(redis_server, target, winner):
    a, b, c = (make_lease(redis_server, n) for n in "abc")
    assert a.try_acquire().won
    redis_server.client().set(a.keys.switchover, Switchover("a", target, 1).encode())
    assert a.switchover_request() == Switchover("a", target, 1)
    assert a.release()
    outcomes = {lease.me.node: lease.try_acquire().won for lease in (a, b, c)}
    assert outcomes == {"a": False, "b": winner == "b", "c": winner == "c"}
    assert a.switchover_request() is None, "the winner clears the request"
