"""The operator's toolkit against a real redis-server: pause and resume, and the history of leadership
changes with the reason each tenure ended. Then the same through the CLI with real supervisors (fake ray)."""

import json
import shlex
import subprocess
import sys
import time

import psutil
import pytest

from conftest import FAST_TIMING, KEYS, fake_ray_events, named, ray_ha, wait_for
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


# -- through the CLI, with real supervisors (fake ray) ------------------------------------------------------

LEASE = float(FAST_TIMING[0].split("=")[1])  # the fast timings' lease (3 s)


@pytest.fixture
def cli_env(fake_ray_env, redis_server):
    """The environment an operator's `ray-ha` command runs in, beside the launchers."""
    return {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}


def leader_and_standby(launch):
    """Launchers a (leading, its GCS serving) and b (standing by)."""
    a = launch("a")
    a.wait_log("GCS serving")
    b = launch("b")
    b.wait_log("standing by")
    return a, b


def started(env, node):
    """The epochs in which the fake ray started a head on `node`."""
    return [e["epoch"] for e in fake_ray_events(env) if e["event"] == "start" and e["node"] == node]


def history(env, cwd):
    result = ray_ha("history", "--json", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_pause_outlives_a_leaders_kill_9_until_resume(launch, cli_env, redis_server, tmp_path):
    a, b = leader_and_standby(launch)
    paused = ray_ha("pause", "--reason", "upgrading Ray", env=cli_env, cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert "paused with no end" in paused.stderr and paused.stdout.startswith("ray-ha: paused ")
    b.wait_log("paused by an operator")
    a.kill_tree()
    time.sleep(LEASE + 3)  # the lease has long expired: unpaused, b would lead by now
    assert redis_server.client().get(KEY) is None and started(cli_env, "b") == []
    status = ray_ha("status", env=cli_env, cwd=tmp_path)
    assert status.returncode == 1 and "no leader" in status.stdout
    assert "PAUSED by " in status.stdout and "(upgrading Ray): no automatic takeover" in status.stdout
    view = json.loads(ray_ha("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert view["pause"]["reason"] == "upgrading Ray" and view["pause"]["until"] is None
    assert [s["paused"] for s in view["local"] if s["node"] == "b"] == [True]
    health = ray_ha("health", "--role", "any", "--ha-node-name", "b", env=cli_env, cwd=tmp_path)
    assert health.returncode == 0 and health.stdout.strip().endswith(": standby, paused"), health.stdout
    resumed = ray_ha("resume", env=cli_env, cwd=tmp_path)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    b.wait_log("GCS serving", timeout=10 * LEASE)
    assert started(cli_env, "b") == ["2"]
    newest = history(cli_env, tmp_path)[0]
    assert (newest["node"], newest["epoch"]) == ("b", 2)
    assert newest["previous"] == {"node": "a", "epoch": 1, "reason": "expired"}
    assert newest["headless_s"] > LEASE + 3, "from a's last renewal to b's GCS serving, the pause included"


def test_a_pause_for_a_while_ends_by_itself_and_the_standby_takes_over(launch, cli_env, redis_server, tmp_path):
    a, b = leader_and_standby(launch)
    paused = ray_ha("pause", "--for", "6s", env=cli_env, cwd=tmp_path)
    assert paused.returncode == 0 and paused.stderr == "" and " until " in paused.stdout
    pause_ends = json.loads(redis_server.client().get(KEYS.pause))["until"]
    a.kill_tree()
    b.wait_log("GCS serving", timeout=30)
    record = json.loads(redis_server.client().get(KEYS.record))
    assert record["node"] == "b" and record["since"] >= pause_ends - 0.1, "nobody took over before the pause ended"
    assert "pause ended" in b.log()


@pytest.mark.parametrize("bad, phrase", [("0", "longer than 0"), ("soon", "not a duration"), ("-5m", "not a duration")])
def test_a_pause_of_no_length_is_refused_in_one_line_and_writes_nothing(cli_env, redis_server, tmp_path, bad, phrase):
    result = ray_ha("pause", "--for", bad, env=cli_env, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ray-ha: error:") and phrase in result.stderr
    assert redis_server.client().exists(KEYS.pause) == 0


def test_a_paused_leader_whose_gcs_dies_keeps_the_lease_and_hands_over_on_resume(launch, cli_env, redis_server,
                                                                                   tmp_path):
    a, b = leader_and_standby(launch)
    assert ray_ha("pause", "--for", "10m", env=cli_env, cwd=tmp_path).returncode == 0
    a.wait_log("paused by an operator")
    named(psutil.Process(a.pid).children(recursive=True), "gcs_server")[0].kill()
    a.wait_log("while paused; keeping the lease")
    head = ("ray", "gcs_server", "raylet", "ray::Worker", "ray::Agent")  # the fake head's tree
    wait_for(lambda: not any(a.named(name) for name in head), 10, what="the rest of a's head killed")
    time.sleep(LEASE + 2)
    assert json.loads(redis_server.client().get(KEY))["node"] == "a", "a renews: nobody takes over"
    assert started(cli_env, "b") == [] and a.proc.poll() is None
    view = json.loads(ray_ha("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert view["leader"]["node"] == "a" and view["pause"]["until"] is not None
    assert ray_ha("health", "--ha-node-name", "a", env=cli_env, cwd=tmp_path).returncode == 1, "not serving"
    assert ray_ha("resume", env=cli_env, cwd=tmp_path).returncode == 0
    assert a.wait(30) == 4, "the resume hands over as the GCS's death would have"
    b.wait_log("GCS serving", timeout=30)
    assert history(cli_env, tmp_path)[0]["previous"] == {"node": "a", "epoch": 1, "reason": "gcs-died"}


def test_a_switchover_goes_through_a_pause(launch, cli_env, redis_server, tmp_path):
    a, b = leader_and_standby(launch)
    assert ray_ha("pause", "--for", "10m", env=cli_env, cwd=tmp_path).returncode == 0
    result = ray_ha("switchover", "--timeout", "30", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "b leads (epoch 2)" in result.stdout
    assert redis_server.client().exists(KEYS.pause) == 1, "still paused"
    assert history(cli_env, tmp_path)[0]["previous"]["reason"] == "switchover"


def test_the_history_says_why_each_tenure_ended_crash_switchover_gcs_death_and_stop(cli_env, tmp_path,
                                                                                    leak_guard):
    """Detached candidates (they stand by again after a loss) through each kind of change, in turn."""
    env = {**cli_env, "RAY_ENABLE_HEAD_HA": "1"}

    def start(name):
        result = ray_ha("start", "--head", "--port=0", f"--temp-dir={tmp_path / 'ray'}", f"--ha-node-name={name}",
                        *FAST_TIMING, env={**env, "RAY_HA_TEST_NODE": name}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr

    def supervisor(name):
        (found,) = [p for p in psutil.process_iter(["cmdline"]) if f"--ha-node-name={name}" in (p.info["cmdline"] or [])
                    and "raylaunch" in (p.info["cmdline"] or []) and "--block" in p.info["cmdline"]]
        return found

    def leads(epoch):
        wait_for(lambda: (history(env, tmp_path) or [{}])[0].get("epoch") == epoch, 60, 0.2, what=f"epoch {epoch}")
        return history(env, tmp_path)[0]

    try:
        start("a")
        start("b")
        assert ray_ha("switchover", "--to", "b", env=env, cwd=tmp_path).returncode == 0
        named(supervisor("b").children(recursive=True), "gcs_server")[0].kill()
        assert leads(3)["node"] == "a"
        supervisor("a").kill()  # the supervisor crashes (its watchdog kills its head): nobody releases
        assert leads(4)["node"] == "b"
        start("a")
        assert ray_ha("stop", "--ha-node-name", "b", env={**env, "RAY_HA_TEST_NODE": "b"}, cwd=tmp_path).returncode == 0
        assert leads(5)["node"] == "a"
        changes = history(env, tmp_path)
    finally:
        ray_ha("stop", env=env, cwd=tmp_path)
    assert [(c["epoch"], c["node"], c["previous"] and c["previous"]["reason"]) for c in changes] == [
        (5, "a", "stop"), (4, "b", "expired"), (3, "a", "gcs-died"), (2, "b", "switchover"), (1, "a", None)]
    assert [c["previous"]["node"] for c in changes[:-1]] == ["b", "a", "b", "a"]
    assert all(0 < c["headless_s"] < 30 for c in changes[:-1])
    table = ray_ha("history", "-n", "2", env=env, cwd=tmp_path).stdout.splitlines()
    assert len(table) == 3 and "released by stop" in table[1] and "lease expired unrenewed" in table[2]


# -- priorities -----------------------------------------------------------------------------------------------


def ranked(server, node, priority, lease=5.0, yield_s=0.6):
    return RedisLease(keyspace_of(server), Holder.me(node, "host"), lease, priority=priority, priority_yield=yield_s)


@pytest.mark.redis_versions
def test_a_free_lease_is_yielded_to_a_live_better_candidate_for_a_bounded_time(redis_server):
    leader, best, low = ranked(redis_server, "l", 1), ranked(redis_server, "best", 2), ranked(redis_server, "low", 1)
    assert leader.try_acquire().won
    assert not best.try_acquire().won and not low.try_acquire().won  # both are live candidates
    assert leader.release(EndReason.STOP)
    yielded = low.try_acquire()
    assert not yielded.won and yielded.yielding_to == "best" and 0 < yielded.ttl_ms <= 600
    assert best.try_acquire().won, "the better one takes it"
    assert best.release(EndReason.STOP) and leader.try_acquire().won  # nobody to yield to: best's entry went
    assert not best.try_acquire().won  # best stands by again, then tries no more (frozen, or gone silently)
    assert leader.release(EndReason.STOP)
    started = time.monotonic()
    while not (attempt := low.try_acquire()).won:
        assert attempt.yielding_to == "best" and time.monotonic() - started < 2, "yields, but not for ever"
        time.sleep(0.05)
    assert 0.55 <= time.monotonic() - started < 1.5


def test_nobody_yields_to_a_better_candidate_that_left_or_went_quiet(redis_server):
    gone, quiet, low = ranked(redis_server, "gone", 3), ranked(redis_server, "quiet", 2, lease=0.3), \
        ranked(redis_server, "low", 1)
    first = ranked(redis_server, "first", 1)
    assert first.try_acquire().won and not gone.try_acquire().won
    gone.forget_candidate()  # a stopped standby takes its priority with it
    assert first.release(EndReason.STOP)
    assert low.try_acquire().won and low.release(EndReason.STOP), "nothing to yield to"
    holder = ranked(redis_server, "holder", 1)
    assert holder.try_acquire().won
    assert not quiet.try_acquire().won  # a standby's entry, live for its lease (0.3 s); then it goes quiet
    assert holder.release(EndReason.STOP)
    time.sleep(0.4)
    assert low.try_acquire().won, "entries past their expiry count for nothing"
    assert redis_server.client().hkeys(KEYS.priorities) == [], "and are cleaned away"


@pytest.mark.redis_versions
def test_priority_zero_never_takes_the_lease_even_when_it_is_the_only_candidate(redis_server):
    zero = ranked(redis_server, "zero", 0)
    for _ in range(3):
        attempt = zero.try_acquire()
        assert not attempt.won and attempt.yielding_to is None
    assert redis_server.client().get(KEY) is None
    assert json.loads(redis_server.client().get(KEYS.candidate("zero")))["priority"] == 0, "still listed"


def test_a_switchover_to_a_lower_priority_is_not_held_up_by_a_better_one(redis_server):
    leader, best, low = ranked(redis_server, "l", 1), ranked(redis_server, "best", 2), ranked(redis_server, "low", 1)
    assert leader.try_acquire().won
    best.try_acquire(), low.try_acquire()
    from raylaunch.store.view import request_switchover
    request = request_switchover(keyspace_of(redis_server), "low", ttl=10)
    assert leader.release(EndReason.SWITCHOVER)
    assert not best.try_acquire().won, "not named"
    assert low.try_acquire().won, "the named one at once, no yield"
    assert request.target == "low"


def test_a_switchover_without_a_target_picks_the_highest_priority_and_never_priority_zero(redis_server):
    from raylaunch.store.records import SwitchoverError
    from raylaunch.store.view import request_switchover
    leader = ranked(redis_server, "l", 1)
    assert leader.try_acquire().won
    zero = ranked(redis_server, "zero", 0)
    zero.try_acquire()
    with pytest.raises(SwitchoverError, match="all have priority 0"):
        request_switchover(keyspace_of(redis_server), None, ttl=10)
    with pytest.raises(SwitchoverError, match="zero has priority 0"):
        request_switchover(keyspace_of(redis_server), "zero", ttl=10)
    for node, priority in (("b", 1), ("c", 5), ("a", 5)):
        ranked(redis_server, node, priority).try_acquire()
    assert request_switchover(keyspace_of(redis_server), None, ttl=10).target == "a", "5 beats 1; then by name"


def leader_of(server):
    value = server.client().get(KEY)
    return Holder.decode(value).node if value else None


def test_candidates_of_priority_2_1_0_through_kill_9_of_the_leader(launch, cli_env, redis_server, tmp_path):
    nodes = {"a": 2, "b": 1, "c": 0}
    running = {"b": launch("b", "--ha-priority=1")}
    running["b"].wait_log("GCS serving")
    for name in "ac":
        running[name] = launch(name, f"--ha-priority={nodes[name]}")
        running[name].wait_log("standing by")
    view = json.loads(ray_ha("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert {s["node"]: s["priority"] for s in view["standbys"]} == {"a": 2, "c": 0}
    winners = []
    for _ in range(3):  # kill -9 whoever leads: the best live one takes over; c never does
        old = leader_of(redis_server)
        running[old].kill_tree()
        expected = max((n for n in running if n != old), key=nodes.get)
        wait_for(lambda: leader_of(redis_server) not in (None, old), 10 * LEASE, what="a new leader")
        winners.append(leader_of(redis_server))
        assert winners[-1] == expected
        running[old] = launch(old, f"--ha-priority={nodes[old]}")
        running[old].wait_log("standing by")
    assert winners == ["a", "b", "a"]
    for name in "ab":  # c is the last one left: still nobody leads
        if running[name].proc.poll() is None:
            running[name].kill_tree()
    time.sleep(2 * LEASE)
    assert leader_of(redis_server) is None and started(cli_env, "c") == []
    assert running["c"].proc.poll() is None and "standing by" in running["c"].log()


def test_a_candidate_yields_to_a_frozen_better_one_only_for_a_while(launch, cli_env, redis_server, tmp_path):
    lead = launch("lead", "--ha-priority=1")
    lead.wait_log("GCS serving")
    best, low = launch("best", "--ha-priority=2"), launch("low", "--ha-priority=1")
    best.wait_log("standing by")
    low.wait_log("standing by")
    frozen = psutil.Process(best.pid)
    frozen.suspend()  # SIGSTOP: its priority entry stays live for one lease
    try:
        lead.proc.terminate()  # a graceful stop releases at once
        assert lead.wait(20) == 0
        low.wait_log("GCS serving", timeout=10 * LEASE)
        assert "yielding it to best" in low.log()
        assert leader_of(redis_server) == "low"
    finally:
        frozen.resume()
    time.sleep(LEASE)
    assert leader_of(redis_server) == "low", "the better one, back, does not preempt a healthy leader"
    assert "standing by; leader is low" in best.log()


# -- a switchover planned for later ---------------------------------------------------------------------------


def test_a_planned_switchover_happens_at_its_time_and_shows_in_status_until_then(launch, cli_env, redis_server,
                                                                                 tmp_path):
    a, b = leader_and_standby(launch)
    planned = ray_ha("switchover", "--at", "+4s", env=cli_env, cwd=tmp_path)
    assert planned.returncode == 0 and "planned for" in planned.stdout, planned.stderr
    due = json.loads(redis_server.client().get(KEYS.scheduled))["at"]
    status = ray_ha("status", env=cli_env, cwd=tmp_path).stdout
    assert "switchover planned for" in status and "the standby of highest priority" in status
    again = ray_ha("switchover", "--at", "+1h", env=cli_env, cwd=tmp_path)
    assert again.returncode == 1 and "already scheduled" in again.stderr
    b.wait_log("GCS serving", timeout=30)
    assert json.loads(redis_server.client().get(KEYS.record))["since"] >= due - 0.1, "not before its time"
    assert history(cli_env, tmp_path)[0]["previous"] == {"node": "a", "epoch": 1, "reason": "switchover"}
    assert redis_server.client().exists(KEYS.scheduled, KEYS.switchover) == 0
    assert "standing by" in a.log().split("handed over", 1)[-1], "the old leader stands by again"


def test_a_planned_switchover_can_be_cancelled(launch, cli_env, redis_server, tmp_path):
    a, b = leader_and_standby(launch)
    assert ray_ha("switchover", "--at", "+3s", "--to", "b", env=cli_env, cwd=tmp_path).returncode == 0
    cancelled = ray_ha("switchover", "--cancel", env=cli_env, cwd=tmp_path)
    assert cancelled.returncode == 0 and "cancelled the switchover planned for" in cancelled.stdout
    time.sleep(5)
    assert json.loads(redis_server.client().get(KEYS.record))["node"] == "a", "nothing happened at 3 s"
    nothing = ray_ha("switchover", "--cancel", env=cli_env, cwd=tmp_path)
    assert nothing.returncode == 0 and "no switchover was planned or pending" in nothing.stdout


def test_a_planned_switchover_nobody_acts_on_expires_by_itself(redis_server):
    from raylaunch.store.records import Scheduled
    from raylaunch.store.view import schedule_switchover
    schedule_switchover(keyspace_of(redis_server), Scheduled(target="", at=time.time() + 0.2, by="op", window=0.3))
    assert read_cluster(keyspace_of(redis_server)).scheduled is not None
    time.sleep(0.6)  # no leader came by
    assert read_cluster(keyspace_of(redis_server)).scheduled is None


@pytest.mark.parametrize("args, phrase, code", [
    (["--at", "yesterday"], "is not a time", 2), (["--at", "2020-01-01T00:00"], "is not in the future", 1),
    (["--cancel", "--to", "b"], "--cancel takes no --to or --at", 2), (["--at", "+0s"], "longer than 0", 2)])
def test_a_switchover_plan_that_cannot_be_is_refused_in_one_line(cli_env, redis_server, tmp_path, args, phrase,
                                                                 code):
    result = ray_ha("switchover", *args, env=cli_env, cwd=tmp_path)
    assert result.returncode == code and result.stderr.count("\n") == 1 and phrase in result.stderr
    assert redis_server.client().exists(KEYS.scheduled) == 0


def test_metrics_show_the_pause_the_priority_a_pending_switchover_and_the_last_takeover():
    from raylaunch.local.endpoint import render_metrics
    from raylaunch.local.state import SupervisorState
    body = render_metrics(SupervisorState(node="a", role="leader", paused=True, priority=2, switchover_pending=True,
                                          takeover_seconds=1.5, headless_seconds=4.25))
    for line in ('ray_ha_paused{node="a"} 1', 'ray_ha_priority{node="a"} 2', 'ray_ha_switchover_pending{node="a"} 1',
                 'ray_ha_takeover_seconds{node="a"} 1.5', 'ray_ha_headless_seconds{node="a"} 4.25'):
        assert line in body.splitlines()


# -- status --watch in a real terminal (tmux) ------------------------------------------------------------------


class Tmux:
    """A tmux server of this test's own (its socket in tmp_path): one detached pane running a command."""

    def __init__(self, tmp_path, command: str, env: dict) -> None:
        from testkit.debian import Unavailable
        from testkit.shells import tmux
        try:
            self.shell = tmux()
        except Unavailable as exc:
            pytest.fail(f"status --watch needs tmux to be tested in a terminal: {exc}", pytrace=False)
        self.socket, self.env = tmp_path / "tmux.sock", {**env, **self.shell.env, "TERM": "xterm-256color"}
        script = tmp_path / "pane.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        # the shell outlives a Ctrl-C (a trap, not an ignore: the command gets SIGINT as in a terminal) to say how
        # the command ended
        script.write_text(f"trap true INT\n{exports}{command}\necho \"[exit=$?]\"\nsleep 60\n")
        self.run("-f", "/dev/null", "new-session", "-d", "-x", "150", "-y", "45", f"sh {shlex.quote(str(script))}")

    def run(self, *args: str) -> str:
        out = subprocess.run([str(self.shell.path), "-S", str(self.socket), *args], env=self.env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def screen(self, history: bool = False) -> str:
        """What the pane shows (with `history`, also what scrolled off its top)."""
        return self.run("capture-pane", "-p", *(["-S", "-1000"] if history else []))

    def close(self) -> None:
        subprocess.run([str(self.shell.path), "-S", str(self.socket), "kill-server"], env=self.env,
                       capture_output=True, timeout=30)


def test_status_watch_redraws_in_place_in_a_real_terminal_and_ends_cleanly_on_ctrl_c(launch, cli_env,
                                                                                     redis_server, tmp_path):
    a, b = leader_and_standby(launch)
    pane = Tmux(tmp_path, f"{shlex.quote(sys.executable)} -m raylaunch status --watch 0.3", cli_env)
    try:
        rows = lambda screen: {line.split()[0]: line.split()[1] for line in screen.splitlines()
                               if line[:2] in ("a ", "b ")}
        wait_for(lambda: rows(pane.screen()) == {"a": "leader", "b": "standby"}, 20, 0.1,
                 what="a leads, b stands by, on the screen")
        a.kill_tree()
        wait_for(lambda: rows(pane.screen()).get("b") == "leader", 10 * LEASE, 0.1, what="b leads, on the screen")
        # the change is in the history once b's head serves (its record written), a moment after b leads
        wait_for(lambda: "expired" in pane.screen(), 10 * LEASE, 0.1, what="the change with its reason")
        screen, history = pane.screen(), pane.screen(history=True)
        assert screen.count("ray-ha status, every 0.3s") == 1, "one frame, not a log"
        assert rows(screen) == {"b": "leader"}, "the old frame's rows were erased"
        assert history.count("ray-ha status, every 0.3s") == 1, "redrawn in place: nothing scrolled away"
        assert "expired" in screen, "the change shows with its reason"
        pane.run("send-keys", "C-c")
        wait_for(lambda: "[exit=" in pane.screen(), 10, 0.1, what="the watch to end")
        after = pane.screen()
        assert "[exit=0]" in after and "Traceback" not in after and "Aborted" not in after
    finally:
        pane.close()


def test_status_watch_and_json_are_refused_together(cli_env, tmp_path):
    result = ray_ha("status", "--watch", "--json", env=cli_env, cwd=tmp_path)
    assert result.returncode == 2 and "--watch shows the table" in result.stderr


@pytest.mark.parametrize("priority, warm", [("0", None), ("1", "/warm/python3")])
def test_a_candidate_of_priority_zero_keeps_no_prewarmed_head(fake_ray_env, redis_server, monkeypatch, priority,
                                                              warm):
    import raylaunch.plan as plan

    for name, value in fake_ray_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(plan, "prewarm_python", lambda *args: ("/warm/python3", ()))  # as if Ray's were warmable
    env = {**fake_ray_env, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": redis_server.address}
    request = plan.StartRequest(ray_args=["--head", "--port=0", "--block"], env_file=None,
                                flags={"priority": priority}, ha_argv=[], follow=False)
    made = plan.make_plan(request, env)
    assert made.identity.priority == int(priority) and made.warm_python == warm


def test_a_paused_standby_answers_healthz_and_says_so():
    from raylaunch.local.endpoint import Endpoint
    from raylaunch.local.state import SupervisorState
    import urllib.request

    server = Endpoint("127.0.0.1", 0, stale_after=60)
    try:
        server(SupervisorState(node="b", role="standby", paused=True, updated=time.time()))
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as reply:
            assert (reply.status, reply.read().decode()) == (200, "ok standby paused\n")
    finally:
        server.close()
