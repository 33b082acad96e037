"""Follow mode end to end with the fake `ray` and a real Redis: a worker node joins whoever leads,
re-joins after a failover, shows in status, detaches for `ray up` and stops with `ray-ha stop`.
(The same with real Ray is in test_e2e_ray.py.)"""

import json
import signal
import socket
import time
from typing import Optional

import pytest

from conftest import FAST_TIMING, KEYS, Launcher, fake_ray_events, ray_ha, tagged_processes, wait_for
from raylaunch.proc.net import split_address, tcp_accepts
from raylaunch.proc.tree import is_alive

KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>


@pytest.fixture
def follower(fake_ray_env, redis_server, tmp_path):
    """Start `ray-ha start --ha-follow` launchers; whatever is left is killed at teardown."""
    started = []

    def start(name, *args, block=True):
        env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address, "RAY_HA_TEST_NODE": name}
        argv = ["--ha-follow", f"--ha-node-name={name}", *FAST_TIMING, *args, *(["--block"] if block else [])]
        started.append(Launcher(name, argv, env, tmp_path))
        return started[-1]

    yield start
    for launcher in started:
        if launcher.proc.poll() is None:
            launcher.kill_tree()


def raylets_of(launcher) -> list:
    return launcher.named("raylet")


def record(redis_server) -> dict:
    return json.loads(redis_server.client().get(f"{KEY}:record"))


def joins(env) -> list[dict]:
    return [e for e in fake_ray_events(env) if e["event"] == "join"]


def test_without_a_relay_a_follower_waits_joins_and_rejoins_the_new_leader_at_its_new_address(
        launch, follower, redis_server, fake_ray_env, tmp_path, leak_guard):
    worker = follower("f", "--ha-relay=off", "--resources={\"pinned\": 1}")
    worker.wait_log("waiting for a leader")
    assert joins(fake_ray_env) == [], "nothing starts while nobody leads"

    leader = launch("a")
    worker.wait_log("joining leader a (epoch 1)", timeout=20)
    first = record(redis_server)["gcs_address"]
    wait_for(lambda: joins(fake_ray_env), 10, what="the worker's ray start")
    join = joins(fake_ray_env)[0]
    assert join["address"] == first and join["epoch"] == "1"
    assert int(join["reconnect"]) >= 3, "the worker's raylet outlives a failover (lease 3 s + start)"
    assert join["redis"] is None, "the worker never gets the Redis address (nor its password)"

    standby = launch("b")
    standby.wait_log("standing by")
    wait_for(lambda: raylets_of(worker), 10, what="the first worker's raylet")
    (old_raylet,) = raylets_of(worker)
    leader.kill_tree()
    worker.wait_log("leader is now b (epoch 2)", timeout=20)
    second = record(redis_server)["gcs_address"]
    assert second != first
    wait_for(lambda: len(joins(fake_ray_env)) == 2, 10, what="the second join")
    assert joins(fake_ray_env)[1]["address"] == second and joins(fake_ray_env)[1]["epoch"] == "2"
    assert not is_alive(old_raylet), "the old worker tree is gone before the new one starts"
    wait_for(lambda: len(raylets_of(worker)) == 1, 10, what="the new worker's raylet, and only it")

    def followers():
        view = json.loads(ray_ha("status", "--json", cwd=tmp_path,
                                 env={**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}).stdout)
        return [(f["node"], f["epoch"], f["gcs_address"]) for f in view["followers"]]

    # The follower's record says whom it follows as of its last read: one retry period (0.5 s) behind.
    wait_for(lambda: followers() == [("f", 2, second)], 5, what="status listing f as following epoch 2")

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert worker.descendants() == []
    assert redis_server.client().get(f"{KEY}:follower:f") is None, "status stops listing it at once"


def answer_through(address: str) -> Optional[dict]:
    """What the GCS behind `address` says (the fake one names its node and epoch); None if reset."""
    try:
        with socket.create_connection(split_address(address), timeout=5) as sock:
            line = sock.makefile().readline()
    except OSError:
        return None
    return json.loads(line) if line else None


def local_view(env, tmp_path, node) -> dict:
    view = json.loads(ray_ha("status", "--json", cwd=tmp_path, env=env).stdout)
    return next((s for s in view["local"] if s["node"] == node), {})


def test_a_follower_keeps_its_worker_across_a_failover_and_its_relay_follows_the_leader(
        launch, follower, redis_server, fake_ray_env, tmp_path, leak_guard):
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}
    worker = follower("f")
    wait_for(lambda: local_view(env, tmp_path, "f").get("role") == "follower", 10, what="the follower's state")
    assert local_view(env, tmp_path, "f")["relay"] is None, "no relay before a leader says which network"

    leader = launch("a")
    worker.wait_log("joining leader a (epoch 1)", timeout=20)
    wait_for(lambda: joins(fake_ray_env), 10, what="the worker's ray start")
    relay = local_view(env, tmp_path, "f")["relay"]
    assert relay.startswith("127.0.0.2:"), "the leader is on loopback: 127.0.0.2, which Ray does not rewrite"
    assert joins(fake_ray_env)[0]["address"] == relay, "the worker dials the relay, not the leader"
    assert answer_through(relay) == {"node": "a", "epoch": "1"}

    standby = launch("b")
    standby.wait_log("standing by")
    wait_for(lambda: raylets_of(worker), 10, what="the worker's raylet")
    (raylet,) = raylets_of(worker)
    leader.kill_tree()
    worker.wait_log("leader is now b (epoch 2)", timeout=20)
    assert "the relay forwards there now, the worker stays" in worker.log()
    assert answer_through(relay) == {"node": "b", "epoch": "2"}
    assert len(joins(fake_ray_env)) == 1 and raylets_of(worker) == [raylet], "the same worker, never restarted"
    assert local_view(env, tmp_path, "f")["relay"] == relay

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert worker.descendants() == []
    assert answer_through(relay) is None and not tcp_accepts(relay), "the relay went with its follower"


def test_between_leaders_the_relay_resets_new_connections(launch, follower, redis_server, fake_ray_env, tmp_path,
                                                          leak_guard):
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}
    worker = follower("f")
    leader = launch("a")
    worker.wait_log("joining leader a (epoch 1)", timeout=20)
    relay = local_view(env, tmp_path, "f")["relay"]
    leader.kill_tree()  # nobody stands by: no leader once a's lease lapses
    worker.wait_log("no leader serves; the relay refuses new GCS connections", timeout=20)
    with pytest.raises(ConnectionResetError):  # the reset may land before connect() returns, or after
        with socket.create_connection(split_address(relay), timeout=5) as sock:
            sock.recv(1)
    launch("b")
    worker.wait_log("leader is now b (epoch 2)", timeout=20)
    assert answer_through(relay) == {"node": "b", "epoch": "2"}


@pytest.mark.parametrize("relay, phrase", [
    ("--ha-relay=127.0.0.1", "Ray rewrites 127.0.0.1"),
    ("--ha-relay=127.0.0.3:99999", "is not auto, off or HOST[:PORT]"),
])
def test_a_relay_where_ray_cannot_use_it_is_one_line(relay, phrase, fake_ray_env, redis_server, tmp_path, leak_guard):
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}
    result = ray_ha("start", "--ha-follow", "--block", relay, env=env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and phrase in lines[0], result.stderr
    assert fake_ray_events(fake_ray_env) == [] and tagged_processes(leak_guard) == []


def test_a_relay_port_in_use_is_one_line_and_starts_nothing(fake_ray_env, redis_server, tmp_path, leak_guard):
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}
    with socket.create_server(("127.0.0.3", 0)) as taken:
        port = taken.getsockname()[1]
        result = ray_ha("start", "--ha-follow", "--block", f"--ha-relay=127.0.0.3:{port}", env=env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"cannot listen for the GCS relay on 127.0.0.3:{port}: Address already in use" in lines[0]
    assert fake_ray_events(fake_ray_env) == [] and tagged_processes(leak_guard) == []


def test_non_block_follow_returns_once_joined_a_rerun_touches_nothing_and_ray_ha_stop_stops_it(
        launch, follower, redis_server, fake_ray_env, tmp_path, leak_guard):
    launch("a").wait_log("GCS serving")
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address, "RAY_HA_TEST_NODE": "f"}
    result = ray_ha("start", "--ha-follow", "--ha-node-name=f", f"--temp-dir={tmp_path / 'ray'}", *FAST_TIMING,
                    env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ray-ha: following a (epoch 1); worker joined" in result.stdout
    assert "Ray runtime started." in result.stdout, "Ray's own guidance is shown, as with ray start"
    worker_before = {p.pid for p in tagged_processes(leak_guard) if p.environ().get("RAY_HA_TEST_NODE") == "f"}
    again = ray_ha("start", "--ha-follow", "--ha-node-name=f", f"--temp-dir={tmp_path / 'ray'}", *FAST_TIMING,
                   env=env, cwd=tmp_path)  # what a new leader's autoscaler does under `ray up`
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("ray-ha: already following a (epoch 1); worker joined"), again.stdout
    assert len(joins(env)) == 1, "no second `ray start`"
    assert {p.pid for p in tagged_processes(leak_guard) if p.environ().get("RAY_HA_TEST_NODE") == "f"} \
        == worker_before, "nothing of the running worker was touched"
    stopped = ray_ha("stop", "--ha-node-name=f", env=env, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert not [p for p in tagged_processes(leak_guard) if p.environ().get("RAY_HA_TEST_NODE") == "f"]


@pytest.mark.parametrize("args, env_drop, phrase", [
    (["--head"], [], "--ha-follow takes no --head"),
    (["--address=10.0.0.1:6379"], [], "--ha-follow takes no --address"),
    ([], ["RAY_REDIS_ADDRESS"], "RAY_REDIS_ADDRESS is not set"),
])
def test_bad_follow_input_is_one_line_and_starts_nothing(args, env_drop, phrase, fake_ray_env, redis_server,
                                                         tmp_path, leak_guard):
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}
    for name in env_drop:
        env.pop(name)
    result = ray_ha("start", "--ha-follow", "--block", *args, env=env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("ray-ha: error: ") and phrase in lines[0]
    assert fake_ray_events(fake_ray_env) == [] and tagged_processes(leak_guard) == []


def test_a_follower_outlives_a_crashed_leader_but_leaves_a_cluster_stopped_by_its_operator(
        launch, follower, redis_server, fake_ray_env, tmp_path, leak_guard):
    """`ray down` of every head leaves nothing on the workers, as with stock Ray, whose raylet gives up
    after its reconnect timeout: the follower leaves once the last leader was *stopped* and nobody has led
    for that long. A leader that crashed is waited for past it."""
    worker = follower("f", "--ha-reconnect-timeout=4")
    a = launch("a")
    worker.wait_log("joining leader a (epoch 1)", timeout=20)
    a.kill_tree()  # a crash: its lease expires unrenewed
    wait_for(lambda: redis_server.client().get(KEY) is None, 10, what="a's lease to expire")
    worker.wait_log("no leader serves")
    time.sleep(8)
    assert worker.proc.poll() is None and raylets_of(worker), "twice the reconnect timeout after a crash: still there"
    b = launch("b")
    worker.wait_log("leader is now b (epoch 2)", timeout=20)
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address, "RAY_HA_TEST_NODE": "b"}
    assert ray_ha("stop", "--ha-node-name", "b", env=env, cwd=tmp_path).returncode == 0  # the last head stopped
    assert b.wait(30) == 0
    assert worker.wait(30) == 0, worker.log()
    assert "the cluster was stopped: its last leader was stopped by an operator" in worker.log()
    assert worker.descendants() == [] and redis_server.client().get(f"{KEY}:follower:f") is None
