"""The recipes in docs/, exercised: each file is parsed and its commands run against a real Redis
(with the fake `ray`), with only addresses and ports swapped for this machine's loopback ones."""

import configparser
import json
import shlex
import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml

from conftest import KEYS, ROOT, tagged_processes, wait_for
from raylaunch.config import HEAD_START_BUDGET, Timing
from testkit.localredis import LocalRedis, free_port
from raylaunch.store.keys import Keys

DOCS = ROOT / "docs"
KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>


BOOTSTRAP = {"cluster_name": "ray-ha-1", "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/ray_bootstrap_key.pem"}}


@pytest.fixture
def machine(fake_ray_env, tmp_path):
    """An environment standing in for one machine: ray-ha from bin/, the fake ray, its own dirs, and a home
    with the files `ray up` copies to a head (the autoscaler's config, which names its key, and the key)."""
    def make(name, **extra):
        home = tmp_path / name / "home"
        if not home.exists():
            home.mkdir(parents=True)
            (home / "ray_bootstrap_config.yaml").write_text(json.dumps(BOOTSTRAP))
            (home / "ray_bootstrap_key.pem").write_text("key")
        return {**fake_ray_env, "PATH": f"{ROOT / 'bin'}:{fake_ray_env['PATH']}", "RAY_HA_PYTHON": sys.executable,
                "RAY_HA_NODE_NAME": name, "RAY_HA_TEST_NODE": name, "RAY_HA_RUN_DIR": str(tmp_path / name),
                "RAY_TMPDIR": str(tmp_path / name / "tmp"), "HOME": str(home), **extra}
    return make


def local(command: str, redis_address: str) -> str:
    """A recipe's command with this machine's Redis and free ports."""
    return (command.replace("redis.internal:6379", redis_address).replace("redis:6379", redis_address)
            .replace("--port=6379", "--port=0").replace("--ha-http-port=8008", f"--ha-http-port={free_port()} "
                                                                               "--ha-http-host=127.0.0.1"))


def run_commands(commands, env, redis_address) -> str:
    """Run a recipe's commands as `ray up` does, one shell each, on one machine; the last one's output."""
    result = None
    for command in commands:
        result = subprocess.run(["bash", "-c", local(command, redis_address)], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_ray_up_candidates_differ_only_in_cluster_name_and_head_ip():
    first, second = (yaml.safe_load((DOCS / name).read_text()) for name in ("ray-up.yaml", "ray-up-standby.yaml"))
    assert first["cluster_name"] != second["cluster_name"], "one client-side state per candidate"
    assert first["provider"]["head_ip"] != second["provider"]["head_ip"]
    for cluster in (first, second):
        del cluster["cluster_name"], cluster["provider"]["head_ip"]
    assert first == second


def test_ray_up_heads_lead_and_stand_by_and_workers_follow_and_a_rerun_touches_nothing(machine, redis_server,
                                                                                      leak_guard):
    cluster = yaml.safe_load((DOCS / "ray-up.yaml").read_text())
    heads, workers = cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]
    assert any("ray-ha start --head" in c and "--block" not in c for c in heads)
    assert not any("stop" in c for c in workers), "a new leader's autoscaler runs them on live workers"
    assert "ray-ha: leading as head-1 (epoch 1)" in run_commands(heads, machine("head-1"), redis_server.address)
    assert "ray-ha: standing by; leader is head-1 (epoch 1)" in run_commands(heads, machine("head-2"),
                                                                            redis_server.address)
    assert "ray-ha: following head-1 (epoch 1); worker joined" in run_commands(workers, machine("worker-1"),
                                                                              redis_server.address)
    again = run_commands(workers, machine("worker-1"), redis_server.address)
    assert again.startswith("ray-ha: already following head-1 (epoch 1)"), again
    for name in ("worker-1", "head-2", "head-1"):
        assert subprocess.run([ROOT / "bin" / "ray-ha", "stop"], env=machine(name), timeout=60).returncode == 0
    assert redis_server.client().get(KEY) is None
    assert tagged_processes(leak_guard) == []


def test_a_ray_up_head_without_the_autoscalers_files_refuses_to_stand_by(machine, redis_server, leak_guard):
    cluster = yaml.safe_load((DOCS / "ray-up.yaml").read_text())
    env = machine("head-1", HOME=str(machine("head-1")["HOME"]) + "-empty")
    command = local(cluster["head_start_ray_commands"][-1], redis_server.address)
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ray_bootstrap_config.yaml" in result.stderr, result.stderr
    assert redis_server.client().get(KEY) is None and tagged_processes(leak_guard) == []


def unit():
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keep systemd's CamelCase keys
    parser.read(DOCS / "ray-ha.service")
    return parser


def test_systemd_unit_restarts_and_stops_the_way_ray_ha_needs():
    service = unit()["Service"]
    assert service["Restart"] == "always" and service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > Timing().stop_grace + 10, "outlasts the graceful stop"
    assert "ray-ha start --head" in service["ExecStart"] and "--block" in service["ExecStart"].split()


def test_systemd_unit_runs_and_stops_cleanly_on_sigterm(machine, tmp_path, leak_guard):
    (tmp_path / "redis").mkdir()
    redis = LocalRedis(tmp_path / "redis", password="change-me").start()  # the env file's password
    try:
        env_file = dict(line.split("=", 1) for line in (DOCS / "ray-ha.env").read_text().splitlines()
                        if line and not line.startswith("#"))
        port = free_port()
        env = machine("vm-1", **{**env_file, "RAY_REDIS_ADDRESS": redis.address, "RAY_HA_HTTP_PORT": str(port),
                                 "RAY_HA_HTTP_HOST": "127.0.0.1"})
        service = unit()["Service"]
        argv = shlex.split(service["ExecStart"].replace("/usr/local/bin/ray-ha", str(ROOT / "bin" / "ray-ha"))
                           .replace("--port=6379", "--port=0"))
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: _get(port, "/leader") == 200, 30, what="the leader endpoint")
            assert redis.client().get(Keys("ray-ha:prod:leader").lease), "the env file's namespace names the lease"
            proc.send_signal(signal.SIGTERM)  # KillMode=mixed: SIGTERM to the main process only
            assert proc.wait(float(service["TimeoutStopSec"])) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert redis.client().get(Keys("ray-ha:prod:leader").lease) is None
        assert tagged_processes(leak_guard) == []
    finally:
        redis.stop()


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except OSError as exc:
        return getattr(exc, "code", 0)


def head_container():
    cluster = yaml.safe_load((DOCS / "kuberay.yaml").read_text())
    return cluster, cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def test_kuberay_head_runs_ray_ha_in_the_foreground_with_leader_readiness():
    cluster, head = head_container()
    assert cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert " ".join(head["command"] + head["args"]).startswith("ray-ha start --head --block")
    assert head["readinessProbe"]["exec"]["command"] == ["ray-ha", "health"]
    assert head["livenessProbe"]["exec"]["command"] == ["ray-ha", "health", "--role", "any"]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["RAY_ENABLE_HEAD_HA"] == "1"
    assert env["RAY_REDIS_ADDRESS"] == cluster["spec"]["gcsFaultToleranceOptions"]["redisAddress"]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    reconnect = next(float(e["value"]) for e in worker["env"] if e["name"] == "RAY_gcs_rpc_server_reconnect_timeout_s")
    assert reconnect >= Timing().lease_duration + HEAD_START_BUDGET


def test_kuberay_probes_pass_only_on_the_leader(machine, redis_server, leak_guard):
    _, head = head_container()
    started = []
    for name in ("pod-a", "pod-b"):
        env = {**machine(name), **{e["name"]: e["value"] for e in head["env"] if "value" in e},
               "RAY_REDIS_ADDRESS": redis_server.address}
        argv = shlex.split(local(" ".join(head["command"] + head["args"]), redis_server.address))
        started.append((env, subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        if name == "pod-a":
            wait_for(lambda: redis_server.client().get(f"{KEY}:record"), 30, what="pod-a serving")
    try:
        probe = lambda env, cmd: subprocess.run(cmd, env=env, capture_output=True, timeout=10).returncode  # noqa: E731
        readiness, liveness = head["readinessProbe"]["exec"]["command"], head["livenessProbe"]["exec"]["command"]
        (env_a, _), (env_b, _) = started
        wait_for(lambda: probe(env_b, liveness) == 0, 30, what="pod-b standing by")
        assert probe(env_a, readiness) == 0 and probe(env_a, liveness) == 0
        assert probe(env_b, readiness) == 1
        assert json.loads(redis_server.client().get(f"{KEY}:record"))["node"] == "pod-a"
    finally:
        for _, proc in started:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(60) for _, proc in started] == [0, 0]
    assert tagged_processes(leak_guard) == []
