"""The launcher as a process: real Redis, a fake `ray` whose head is a Ray-shaped tree.

Covers supervision (nothing left after a stop, the gcs_server death path), signals, stepping down
when the lease is lost or unconfirmed, and that a standby never starts while an old head lives.
"""

import json
import signal
import threading
import time

import psutil

from conftest import KEYS, fake_ray_events, tagged_processes, wait_for

KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>


def tree_names(launcher):
    names = set()
    for proc in launcher.descendants():
        try:
            names.add(proc.name())
        except psutil.Error:
            pass
    return names


def wait_whole_tree(launcher):
    """Until the fake head's gcs_server, raylet, worker and the re-parented orphan all exist."""
    wanted = {"ray", "gcs_server", "raylet", "ray::Worker", "ray::Agent"}
    wait_for(lambda: wanted <= tree_names(launcher), 10, what=f"tree {wanted}")


def accept_forever(sock):
    while True:
        try:
            sock.accept()[0].close()
        except OSError:
            return


def starts(env):
    return [e for e in fake_ray_events(env) if e["event"] == "start"]


def test_stop_leaves_nothing_alive_and_releases(launch, redis_server, leak_guard):
    leader = launch("a")
    leader.wait_log("GCS serving")
    wait_whole_tree(leader)
    orphan = leader.named("ray::Agent")[0]
    assert orphan.ppid() == leader.pid, "the subreaper keeps the double-forked orphan"
    assert redis_server.client().get(KEY) is not None
    leader.proc.send_signal(signal.SIGTERM)
    assert leader.wait() == 0
    assert tagged_processes(leak_guard) == []
    assert redis_server.client().get(KEY) is None
    assert "head stopped; lease released" in leader.log()


def test_leader_records_its_gcs_and_epoch(launch, redis_server):
    leader = launch("a", "--node-ip-address=127.0.0.1")
    leader.wait_log("GCS serving")
    record = json.loads(redis_server.client().get(f"{KEY}:record"))
    assert record["node"] == "a" and record["epoch"] == 1
    host, port = record["gcs_address"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


def test_head_gets_epoch_and_leader_env(launch, fake_ray_env):
    leader = launch("a")
    leader.wait_log("GCS serving")
    top = leader.named("ray")[0]
    env = top.environ()
    assert env["RAY_HA_EPOCH"] == "1" and env["RAY_HA_LEADER"] == "1"
    assert "RAY_ENABLE_HEAD_HA" not in env
    assert int(env["RAY_gcs_rpc_server_reconnect_timeout_s"]) >= 3
    assert "--block" in starts(fake_ray_env)[0]["args"]


def test_gcs_death_kills_the_tree_releases_and_a_standby_takes_over(launch, redis_server, fake_ray_env):
    leader = launch("a")
    leader.wait_log("GCS serving")
    wait_whole_tree(leader)
    standby = launch("b")
    standby.wait_log("standing by; leader is a")
    gcs = leader.named("gcs_server")[0]
    gcs.kill()
    assert leader.wait() == 4
    assert "gcs_server" in leader.log() and "died" in leader.log()
    standby.wait_log("GCS serving", timeout=2.5)  # released: no waiting out the 3 s lease
    second = starts(fake_ray_env)[-1]
    assert second["epoch"] == "2" and second["node"] == "b"
    assert second["others"] == [], "the standby started while an old head process lived"


def test_head_exit_is_reported_with_code_4(launch, redis_server):
    leader = launch("a", env={"FAKE_RAY_START_EXIT": "5"})
    assert leader.wait() == 4
    assert "exited with code 5" in leader.log()
    assert redis_server.client().get(KEY) is None


def test_standby_exits_within_a_second_on_sigterm_holding_nothing(launch, redis_server, fake_ray_env):
    leader = launch("a")
    leader.wait_log("GCS serving")
    standby = launch("b")
    standby.wait_log("standing by")
    t0 = time.monotonic()
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.wait() == 0
    assert time.monotonic() - t0 < 1.0
    assert len(starts(fake_ray_env)) == 1
    assert json.loads(redis_server.client().get(KEY))["node"] == "a"


def test_sigint_behaves_like_sigterm(launch, redis_server, leak_guard):
    leader = launch("a")
    leader.wait_log("GCS serving")
    leader.proc.send_signal(signal.SIGINT)
    assert leader.wait() == 0
    assert tagged_processes(leak_guard) == []


def test_head_that_ignores_sigterm_is_killed_after_the_grace(launch, leak_guard):
    leader = launch("a", "--ha-stop-grace=1", env={"FAKE_RAY_IGNORE_TERM": "1"})
    leader.wait_log("GCS serving")
    t0 = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    assert leader.wait() == 0
    assert 0.9 < time.monotonic() - t0 < 5
    assert tagged_processes(leak_guard) == []


def test_graceful_handover_does_not_wait_for_expiry(launch, fake_ray_env):
    slow_lease = ["--ha-lease-duration=30", "--ha-renew-deadline=10", "--ha-retry-period=5",
                  "--ha-redis-timeout=1"]
    leader = launch("a", timing=slow_lease)
    leader.wait_log("GCS serving")
    standby = launch("b", timing=slow_lease)
    standby.wait_log("standing by")
    t0 = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    standby.wait_log("GCS serving", timeout=10)
    assert time.monotonic() - t0 < 5, "the standby waited for the lease instead of the release"
    assert leader.wait() == 0
    assert starts(fake_ray_env)[-1]["others"] == []


def test_lease_taken_by_another_kills_the_head_and_exits_3(launch, redis_server, leak_guard):
    leader = launch("a")
    leader.wait_log("GCS serving")
    redis_server.client().set(KEY, "intruder", px=60000)
    assert leader.wait(10) == 3
    assert "lease taken by another candidate" in leader.log()
    assert tagged_processes(leak_guard) == []
    assert redis_server.client().get(KEY) == "intruder", "a lost lease is not ours to release"


def test_redis_loss_kills_the_head_before_the_lease_could_expire(launch, redis_server, leak_guard):
    timing = ["--ha-lease-duration=6", "--ha-renew-deadline=3", "--ha-retry-period=0.5",
              "--ha-redis-timeout=0.5"]
    leader = launch("a", timing=timing)
    leader.wait_log("GCS serving")
    wait_whole_tree(leader)
    redis_server.stop()
    lost_at = time.monotonic()
    wait_for(lambda: all(p.pid == leader.pid for p in tagged_processes(leak_guard)), 10,
             what="the head tree to die")
    dead_at = time.monotonic()
    # The last renewal was sent at most one retry period before Redis went away.
    assert dead_at < lost_at - 0.5 + 6, f"head outlived the lease: {dead_at - lost_at:.2f}s"
    assert leader.wait(10) == 3
    assert "renew deadline" in leader.log()


def test_killed_leader_is_replaced_after_the_lease(launch, fake_ray_env):
    leader = launch("a")
    leader.wait_log("GCS serving")
    standby = launch("b")
    standby.wait_log("standing by")
    killed_at = time.monotonic()
    leader.kill_tree()
    standby.wait_log("GCS serving", timeout=10)
    took = time.monotonic() - killed_at
    assert 2.0 < took < 3 + 2.5, f"takeover took {took:.2f}s with a 3 s lease"
    events = starts(fake_ray_env)
    assert [e["epoch"] for e in events] == ["1", "2"]
    assert events[-1]["others"] == []


def test_old_gcs_still_listening_is_waited_for(launch, redis_server, fake_ray_env):
    """A record pointing at a live address makes the new leader wait (bounded) before starting."""
    import socket

    with socket.socket() as old_gcs:
        old_gcs.bind(("127.0.0.1", 0))
        old_gcs.listen(64)
        port = old_gcs.getsockname()[1]
        threading.Thread(target=accept_forever, args=(old_gcs,), daemon=True).start()
        redis_server.client().set(f"{KEY}:record", json.dumps(
            {"node": "old", "host": "h", "gcs_address": f"127.0.0.1:{port}", "epoch": 0, "since": 1.0}))
        leader = launch("a", "--ha-wait-old-gcs=1.5")
        leader.wait_log("elected leader")
        time.sleep(0.5)
        assert starts(fake_ray_env) == []
        leader.wait_log("still accepts connections", timeout=5)
    leader.wait_log("GCS serving")


def test_exited_orphans_are_reaped_and_the_head_keeps_running(launch):
    leader = launch("a")
    leader.wait_log("GCS serving")
    wait_whole_tree(leader)
    orphan = leader.named("ray::Agent")[0]
    assert orphan.ppid() == leader.pid
    orphan.kill()

    def reaped():
        return not psutil.pid_exists(orphan.pid) or psutil.Process(orphan.pid).ppid() != leader.pid

    wait_for(reaped, 5, what="the launcher to reap its dead orphan")
    assert leader.proc.poll() is None and "died" not in leader.log()


def test_redis_restart_that_loses_the_lease_keeps_the_head(launch, redis_server, fake_ray_env):
    """Redis comes back empty on the same port: the leader takes its lease back and keeps its head."""
    leader = launch("a")
    leader.wait_log("GCS serving")
    redis_server.stop()
    redis_server.start()
    leader.wait_log("took it again as epoch 2", timeout=5)
    wait_for(lambda: (redis_server.client().get(f"{KEY}:record") or "").find('"epoch": 2') >= 0, 5,
             what="the record of epoch 2")
    assert leader.proc.poll() is None
    assert len(starts(fake_ray_env)) == 1, "the head was not restarted"
