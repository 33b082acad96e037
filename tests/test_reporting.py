"""What a launcher shows the outside: the HTTP endpoint and its metrics, notify hooks, log lines."""

import json
import socket
import urllib.error
import urllib.request

import pytest

from conftest import KEYS, tagged_processes, wait_for
from raylaunch.local.endpoint import Endpoint, render_metrics
from raylaunch.local.state import SupervisorState
from testkit.localredis import free_port


def snapshot(role="leader", serving=True, **kw):
    """A supervisor's state record, as the endpoint is given it."""
    fields = dict(node="a", role=role, epoch=3, leader="a", gcs_address="127.0.0.1:6379", serving=serving,
                  transitions=2, renew_failures=1, takeover_seconds=1.25, redis_refused=None)
    return SupervisorState(**{**fields, **kw})


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def gcs():
    """A listening socket standing in for the leader's GCS: its `host:port`."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture
def endpoint():
    server = Endpoint("127.0.0.1", 0, stale_after=60)
    yield server
    server.close()


def test_leader_endpoint_answers_200_only_on_the_serving_leader(endpoint, gcs):
    assert get(endpoint.port, "/healthz")[0] == 503, "no snapshot yet"
    endpoint(snapshot(role="standby", serving=False, leader="b"))
    assert get(endpoint.port, "/healthz") == (200, "ok standby\n")
    assert get(endpoint.port, "/leader")[0] == 503
    endpoint(snapshot(gcs_address=gcs))
    assert get(endpoint.port, "/leader") == (200, "leader\n")
    assert get(endpoint.port, "/nope")[0] == 404


def test_leader_endpoint_and_health_agree_a_leader_whose_gcs_refuses_is_not_healthy(endpoint):
    closed = f"127.0.0.1:{free_port()}"
    endpoint(snapshot(gcs_address=closed))
    assert get(endpoint.port, "/leader") == (503, "leader\n")
    assert snapshot(gcs_address=closed).health("leader") == (
        False, f"leader, but its GCS at {closed} does not accept connections")


def test_stale_snapshot_fails_both_probes():
    server = Endpoint("127.0.0.1", 0, stale_after=0.0)
    try:
        server(snapshot())
        assert get(server.port, "/healthz")[0] == 503
        assert get(server.port, "/leader")[0] == 503
    finally:
        server.close()


def test_metrics_are_prometheus_text_with_every_series(endpoint):
    endpoint(snapshot())
    status, body = get(endpoint.port, "/metrics")
    assert status == 200
    values = {line.split("{")[0]: line.rsplit(" ", 1)[1] for line in body.splitlines() if not line.startswith("#")}
    assert values == {"ray_ha_is_leader": "1", "ray_ha_epoch": "3", "ray_ha_leader_transitions_total": "2",
                      "ray_ha_lease_renew_failures_total": "1", "ray_ha_takeover_seconds": "1.25",
                      "ray_ha_redis_refused": "0", "ray_ha_paused": "0", "ray_ha_priority": "1",
                      "ray_ha_switchover_pending": "0"}
    assert '# TYPE ray_ha_leader_transitions_total counter' in body
    assert 'ray_ha_is_leader{node="a"} 1' in body


def test_a_node_stuck_on_a_redis_refusal_fails_healthz_and_says_so_in_its_metrics(endpoint):
    endpoint(snapshot(role="standby", serving=False, redis_refused="the Redis user may not run ... (NOPERM)"))
    assert get(endpoint.port, "/healthz") == (503, "refused by Redis standby\n")
    assert 'ray_ha_redis_refused{node="a"} 1' in get(endpoint.port, "/metrics")[1]


def test_metrics_leave_out_takeover_time_until_there_is_one():
    body = render_metrics(snapshot(role="standby", serving=False, takeover_seconds=None))
    assert "ray_ha_is_leader{node=\"a\"} 0" in body and "takeover" not in body


def test_launchers_serve_leader_endpoint_only_on_the_leader(launch):
    port_a, port_b = free_port(), free_port()
    a = launch("a", f"--ha-http-port={port_a}", "--ha-http-host=127.0.0.1")
    a.wait_log("GCS serving")
    b = launch("b", f"--ha-http-port={port_b}", "--ha-http-host=127.0.0.1")
    b.wait_log("standing by")
    wait_for(lambda: get(port_a, "/leader")[0] == 200, 5, what="a's /leader")
    assert get(port_b, "/leader")[0] == 503 and get(port_b, "/healthz")[0] == 200
    assert 'ray_ha_is_leader{node="a"} 1' in get(port_a, "/metrics")[1]


def test_busy_http_port_is_one_line_and_nothing_held(launch, redis_server):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        a = launch("a", f"--ha-http-port={busy.getsockname()[1]}", "--ha-http-host=127.0.0.1")
        assert a.wait() == 1
    assert a.log().strip().splitlines()[-1].startswith("ray-ha: error: cannot serve HTTP on 127.0.0.1:")
    assert redis_server.client().get(KEYS.lease) is None


def test_hooks_run_on_election_and_demotion_with_role_epoch_and_address(launch, tmp_path, redis_server):
    out = tmp_path / "hooks.txt"
    hook = f'echo "$RAY_HA_ROLE $RAY_HA_EPOCH $RAY_HA_GCS_ADDRESS" >> {out}'
    a = launch("a", f"--ha-on-elected={hook}", f"--ha-on-demoted={hook}")
    a.wait_log("on-elected hook done")
    a.proc.terminate()
    assert a.wait() == 0
    record = json.loads(redis_server.client().get(KEYS.record))
    assert out.read_text().splitlines() == [f"leader 1 {record['gcs_address']}", f"standby 1 {record['gcs_address']}"]
    assert "on-demoted hook done" in a.log()


def test_failing_and_hanging_hooks_are_logged_and_never_block_the_lease(launch, leak_guard):
    a = launch("a", "--ha-on-elected=sleep 300", "--ha-hook-timeout=1", "--ha-on-demoted=exit 7")
    a.wait_log("GCS serving")
    a.wait_log("on-elected hook killed after 1s")
    assert "renewal failed" not in a.log()
    a.proc.terminate()
    assert a.wait() == 0
    assert "on-demoted hook failed with code 7" in a.log()
    assert tagged_processes(leak_guard) == []


def test_head_death_does_not_kill_a_running_hook(launch, tmp_path):
    marker = tmp_path / "hook-finished"
    a = launch("a", f"--ha-on-elected=sleep 1.5; touch {marker}", "--ha-hook-timeout=10")
    a.wait_log("GCS serving")
    gcs = a.named("gcs_server")[0]
    gcs.kill()
    assert a.wait() == 4
    assert marker.exists(), "the launcher waited for its hook instead of killing it with the head"


def test_every_log_line_names_role_epoch_and_leader(launch):
    a = launch("a")
    a.wait_log("GCS serving")
    b = launch("b")
    b.wait_log("standing by")
    assert "[leader epoch=1 leader=a] leader epoch 1: GCS serving" in a.log()
    assert "[standby epoch=1 leader=a] standing by; leader is a" in b.log()


def test_json_log_format_is_one_object_per_line(launch):
    a = launch("a", "--ha-log-format=json")
    a.wait_log("GCS serving")
    a.proc.terminate()
    assert a.wait() == 0
    entries = [json.loads(line) for line in a.log().splitlines() if line.startswith("{")]
    serving = next(e for e in entries if "GCS serving" in e["message"])
    assert {k: serving[k] for k in ("level", "node", "role", "epoch", "leader")} == \
        {"level": "info", "node": "a", "role": "leader", "epoch": 1, "leader": "a"}
