"""Redis refusals that will not pass by themselves, met while running (real Redis, fake ray): a leader
counts them as failed renewals and steps down at its deadline; a standby keeps trying, says why, and
`status`, `health --role any`, /healthz and /metrics show it stuck until the setting is fixed."""

import json

import pytest

from conftest import FAST_TIMING, LaunchPad, fake_ray_events, ray_ha, tagged_processes
from testkit.localredis import free_port
from test_reporting import get

pytestmark = pytest.mark.redis_versions

USER = ["--redis-username=ha", "--redis-password=ha-pw"]


@pytest.fixture
def pad(fake_ray_env, tmp_path, redis_server):
    launchers = LaunchPad(fake_ray_env, tmp_path, redis_server.address, FAST_TIMING)
    yield launchers
    launchers.close()


def test_access_taken_away_mid_run_stops_the_leader_and_leaves_the_standby_stuck_until_it_is_back(
        pad, redis_server, fake_ray_env, leak_guard):
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "ha", "on", ">ha-pw", "~*", "&*", "+@all")
    port = free_port()
    a = pad("a", "--port=0", *USER)
    a.wait_log("GCS serving")
    b = pad("b", "--port=0", *USER, f"--ha-http-port={port}", "--ha-http-host=127.0.0.1")
    b.wait_log("standing by; leader is a")

    admin.execute_command("ACL", "SETUSER", "ha", "resetkeys", "~unrelated:*")  # NOPERM on ray-ha's keys
    assert a.wait(15) == 3, "a refused renewal is a failed renewal: the leader steps down at its deadline"
    assert "Redis refuses until a setting changes" in a.log()
    b.wait_log("Redis refuses, and will until a setting changes", timeout=10)
    assert "may not run what ray-ha needs" in b.log() and "NOPERM" in b.log()
    assert b.proc.poll() is None, "a standby keeps trying"

    env = {**fake_ray_env, "RAY_REDIS_ADDRESS": redis_server.address}
    health = ray_ha("health", "--role", "any", "--ha-node-name", "b", env=env)
    assert health.returncode == 1 and "stuck: Redis refuses it" in health.stderr, health.stderr
    status = json.loads(ray_ha("status", "--json", env=env).stdout)
    mine = {s["node"]: s for s in status["local"]}
    assert "NOPERM" in mine["b"]["redis_refused"]
    assert "STUCK, Redis refuses it" in ray_ha("status", env=env).stdout
    assert get(port, "/healthz")[0] == 503
    assert 'ray_ha_redis_refused{node="b"} 1' in get(port, "/metrics")[1]
    assert b.log().count("Redis refuses, and will") == 1, "said once, not every retry period"

    admin.execute_command("ACL", "SETUSER", "ha", "~*")  # fixed
    b.wait_log("Redis answers again", timeout=10)
    b.wait_log("GCS serving", timeout=15)
    assert ray_ha("health", "--role", "any", "--ha-node-name", "b", env=env).returncode == 0
    assert get(port, "/healthz")[0] == 200
    starts = [e for e in fake_ray_events(fake_ray_env) if e["event"] == "start"]
    assert [e["node"] for e in starts] == ["a", "b"] and all(e["others"] == [] for e in starts)
    b.proc.terminate()
    assert b.wait(15) == 0
    assert tagged_processes(leak_guard) == []


def test_a_leader_whose_redis_becomes_a_replica_steps_down_at_its_deadline(pad, redis_server, tmp_path, make_redis,
                                                                          fake_ray_env, leak_guard):
    (tmp_path / "other").mkdir()
    other = make_redis(tmp_path / "other").start()
    try:
        a = pad("a", "--port=0")
        a.wait_log("GCS serving")
        redis_server.client().execute_command("REPLICAOF", "127.0.0.1", other.port)  # an old master, demoted
        assert a.wait(15) == 3, a.log()
        assert "read-only replica" in a.log() and "READONLY" in a.log()
        assert [e["event"] for e in fake_ray_events(fake_ray_env)].count("start") == 1
    finally:
        other.stop()
    assert tagged_processes(leak_guard) == []
