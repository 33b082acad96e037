"""Follow mode end to end with the fake `ray` and a real Redis: a worker node joins whoever leads,
re-joins after a failover, shows in status, detaches for `ray up` and stops with `ray-ha stop`.
(The same with real Ray is in test_e2e_ray.py.)"""

import json
import signal
import subprocess
import sys

import pytest

from conftest import FAST_TIMING, Launcher, fake_ray_events, tagged_processes, wait_for
from raylaunch.proc.tree import is_alive
from raylaunch.store.keys import Keys

KEYS = Keys("ray-ha:default:leader")
KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>


def ray_ha(*args, env, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "raylaunch", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


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
    return [p for p in launcher.descendants() if p.name() == "raylet"]


def record(redis_server) -> dict:
    return json.loads(redis_server.client().get(f"{KEY}:record"))


def joins(env) -> list[dict]:
    return [e for e in fake_ray_events(env) if e["event"] == "join"]


def test_a_follower_waits_joins_and_rejoins_the_new_leader_at_its_new_address(
        launch, follower, redis_server, fake_ray_env, tmp_path, leak_guard):
    worker = follower("f", "--resources={\"pinned\": 1}")
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


def test_non_block_follow_returns_once_joined_and_ray_ha_stop_stops_it(
        launch, follower, redis_server, fake_ray_env, tmp_path, leak_guard):
    launch("a").wait_log("GCS serving")
    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address, "RAY_HA_TEST_NODE": "f"}
    result = ray_ha("start", "--ha-follow", "--ha-node-name=f", f"--temp-dir={tmp_path / 'ray'}", *FAST_TIMING,
                    env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ray-ha: following a (epoch 1); worker joined" in result.stdout
    assert "Ray runtime started." in result.stdout, "Ray's own guidance is shown, as with ray start"
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
