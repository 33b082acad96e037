"""The command line: passthrough to `ray start`, help and version, and bad input.

Bad input must give exactly one line on stderr, its documented exit code, no lease in Redis and
no process left behind (the leak guard checks the last).
"""

import json
import subprocess
import sys

import pytest

from conftest import KEYS, ROOT, free_port, ray_ha, tagged_processes
from raylaunch.store.keys import Keys

KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>


@pytest.mark.parametrize("ha, args", [
    ("", ["--address=10.0.0.1:6379", "--num-cpus", "2"]),
    ("0", ["--head", "--port=0", "--system-config", '{"a": 1}']),
    ("1", ["--address=10.0.0.1:6379", "--block"]),
])
def test_passthrough_execs_ray_start_with_the_same_arguments(fake_ray_env, tmp_path, ha, args):
    env = {**fake_ray_env, "RAY_ENABLE_HEAD_HA": ha}
    proc = subprocess.Popen([sys.executable, "-m", "raylaunch", "start", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    seen = json.loads(out)
    assert seen["argv"] == ["start", *args]
    assert seen["pid"] == proc.pid, "ray start must replace ray-ha, not run as its child"
    assert proc.returncode == 0


def test_plain_passthrough_execs_before_click_or_the_rest_of_ray_ha_is_imported(fake_ray_env, tmp_path):
    proc = ray_ha("start", "--address=x:1", env={**fake_ray_env, "RAY_ENABLE_HEAD_HA": "1"}, cwd=tmp_path,
                  python_options=["-X", "importtime"])
    assert json.loads(proc.stdout)["argv"] == ["start", "--address=x:1"]
    imported = proc.stderr
    assert "raylaunch.entry" in imported, "importtime output is what this test reads"
    assert "click" not in imported and "raylaunch.cli" not in imported and "dotenv" not in imported


@pytest.mark.parametrize("argv, env, dotenv_file, plain", [
    (["start", "--address=x:1"], {}, False, True),
    (["start", "--head"], {"RAY_ENABLE_HEAD_HA": "off"}, False, True),
    (["start", "--address=x:1"], {"RAY_ENABLE_HEAD_HA": "1"}, False, True),
    (["start", "--head"], {"RAY_ENABLE_HEAD_HA": "1"}, False, False),
    (["start", "--head"], {}, True, False),                          # ./.env may switch HA on
    (["start", "--ha-lease-duration=5"], {}, False, False),          # ours to parse (or reject)
    (["start", "--help"], {}, False, False),                          # ray-ha's own help
    (["start"], {"RAY_ENABLE_HEAD_HA": "maybe"}, False, False),      # the full path says what is wrong
    (["status"], {}, False, False),
])
def test_only_a_certain_plain_ray_start_takes_the_fast_path(monkeypatch, tmp_path, argv, env, dotenv_file, plain):
    from raylaunch.entry import plain_ray_start

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ENABLE_HEAD_HA", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if dotenv_file:
        (tmp_path / ".env").write_text("RAY_ENABLE_HEAD_HA=1\n")
    assert plain_ray_start(argv) is plain


def test_passthrough_keeps_ray_exit_code_and_drops_our_options(fake_ray_env, tmp_path):
    env = {**fake_ray_env, "FAKE_RAY_EXIT": "7"}
    result = ray_ha("start", "--ha-lease-duration=5", "--address=x:1", env=env, cwd=tmp_path)
    assert result.returncode == 7
    assert json.loads(result.stdout)["argv"] == ["start", "--address=x:1"]


def test_shim_runs_the_same_command(fake_ray_env, tmp_path):
    result = subprocess.run([str(ROOT / "bin" / "ray-ha"), "start", "--address=x:1"], env=fake_ray_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert json.loads(result.stdout)["argv"] == ["start", "--address=x:1"]


def test_help_lists_our_options_and_points_to_ray_start(fake_ray_env, tmp_path):
    top = ray_ha("--help", env=fake_ray_env, cwd=tmp_path)
    start = ray_ha("start", "--help", env=fake_ray_env, cwd=tmp_path)
    assert top.returncode == 0 and "start" in top.stdout
    assert "--ha-lease-duration" in top.stdout and "ray start" in top.stdout
    assert start.returncode == 0
    for flag in ["--ha-lease-duration", "--ha-renew-deadline", "--ha-retry-period", "--ha-redis-timeout",
                 "--ha-node-name", "--ha-key", "--ha-env-file", "--ha-reconnect-timeout"]:
        assert flag in start.stdout
    assert "ray start" in start.stdout and "Exit codes" in start.stdout


def test_bare_ray_ha_prints_the_help_and_exits_2(fake_ray_env, tmp_path):
    result = ray_ha(env=fake_ray_env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.startswith("Usage: ray-ha") and "start" in result.stdout


def test_version_names_ours_and_rays(fake_ray_env, tmp_path):
    result = ray_ha("--version", env=fake_ray_env, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("ray-ha ") and "ray " in result.stdout


# Each case: extra environment, extra arguments, expected exit code, a phrase of the message.
BAD_INPUTS = {
    "bad switch": ({"RAY_ENABLE_HEAD_HA": "maybe"}, [], 2, "RAY_ENABLE_HEAD_HA"),
    "address unset": ({"RAY_REDIS_ADDRESS": None}, [], 2, "RAY_REDIS_ADDRESS is not set"),
    "address no port": ({"RAY_REDIS_ADDRESS": "localhost"}, [], 2, "host:port"),
    "address bad port": ({"RAY_REDIS_ADDRESS": "127.0.0.1:99999"}, [], 2, "1..65535"),
    "address bare ipv6": ({"RAY_REDIS_ADDRESS": "::1:6379"}, [], 2, "brackets"),
    "address scheme": ({"RAY_REDIS_ADDRESS": "http://127.0.0.1:1"}, [], 2, "scheme"),
    "redis down": ({"RAY_REDIS_ADDRESS": "127.0.0.1:{dead_port}"}, [], 1, "cannot reach Redis"),
    "wrong password": ({}, ["--redis-password=wrong"], 2, "credentials"),
    "no password": ({"RAY_REDIS_PASSWORD": None}, [], 2, "credentials"),
    "tls file missing": ({"RAY_REDIS_ADDRESS": "rediss://127.0.0.1:1", "RAY_REDIS_CA_CERT": "/nonexistent/ca.pem"},
                         [], 2, "TLS file not found"),
    "system-config json": ({}, ["--system-config", "{not json"], 2, "not valid JSON"),
    "system-config list": ({}, ["--system-config=[1]"], 2, "JSON object"),
    "timings": ({}, ["--ha-lease-duration=5", "--ha-renew-deadline=4"], 2, "inconsistent timings"),
    "timings env": ({"RAY_HA_CHECK_INTERVAL_MS": "6000"}, [], 2, "2 x retry period"),
    "duration": ({}, ["--ha-retry-period=soon"], 2, "not a duration"),
    "unknown ha flag": ({}, ["--ha-lease-duraton=5"], 2, "no such option: --ha-lease-duraton"),
    "ray missing": ({"PATH": "/nonexistent"}, [], 2, "`ray` not found"),
    "env file missing": ({}, ["--ha-env-file=/nonexistent/.env"], 2, "env file not found"),
    "wrong key type": ({}, ["--ha-key=not-a-string"], 2, "holds a list"),
    "node name": ({}, ["--ha-node-name=a b"], 2, "node name"),
    "redis without lua": ({"RAY_REDIS_ADDRESS": "{no_lua}"}, [], 2, "does not run Lua scripts"),
    "wrong username": ({}, ["--redis-username=nobody"], 2, "credentials"),
    "credentials in address": ({"RAY_REDIS_ADDRESS": "redis://admin:s3cret-pw@127.0.0.1:1"}, [], 2,
                               "must not carry credentials"),
    "tls dir missing": ({"RAY_REDIS_ADDRESS": "rediss://127.0.0.1:1", "RAY_REDIS_CA_PATH": "/nonexistent"}, [], 2,
                        "TLS directory not found"),
    "epoch key wrong type": ({}, ["--ha-key=bad-epoch"], 2, "holds a list"),
    "hook timeout env": ({"RAY_HA_HOOK_TIMEOUT_MS": "soon"}, [], 2, "not a duration"),
    "http port env": ({"RAY_HA_HTTP_PORT": "http"}, [], 2, "not a port number"),
    "log format": ({}, ["--ha-log-format=xml"], 2, "xml"),
    "wait old gcs zero": ({}, ["--ha-wait-old-gcs=0"], 2, "must be > 0"),
    "reconnect timeout env": ({"RAY_HA_RECONNECT_TIMEOUT_MS": "-5"}, [], 2, "not a duration"),
    "min replicas": ({}, ["--ha-min-replicas=some"], 2, "not a number of replicas"),
    "fence": ({"RAY_HA_FENCE": "zfs"}, [], 2, "fence 'zfs' is not one of"),
    "prewarm env": ({"RAY_HA_PREWARM": "maybe"}, [], 2, "is not auto, on or off"),
    "prewarm a wrapper": ({}, ["--ha-prewarm=on"], 2, "cannot tell which Python runs"),
    "follow with head": ({}, ["--ha-follow"], 2, "--ha-follow takes no --head"),
    "autoscaler config not here": ({}, ["--autoscaling-config=/nonexistent/ray_bootstrap_config.yaml"], 2,
                                   "No such file or directory; `ray up` copies it only to its head_ip"),
    # Refusals that will not pass by themselves are configuration errors, never outages.
    "address is a replica": ({"RAY_REDIS_ADDRESS": "{replica}"}, [], 2, "reaches a read-only replica"),
    "user without key access": ({}, ["--redis-username=keyless"], 2, "may not run what ray-ha needs"),
    "user without scripting": ({}, ["--redis-username=noscript"], 2, "may not run what ray-ha needs"),
    "braces in key": ({}, ["--ha-key=a{b}"], 2, "must not contain braces"),
    "old layout holds the lease": ({}, ["--ha-key=legacy"], 2, "key layout of ray-ha before 0.2"),
}


@pytest.fixture
def secured_redis(tmp_path, make_redis):
    server = make_redis(tmp_path, password="s3cret-pw").start()
    server.client().rpush(Keys("not-a-string").lease, "x")
    server.client().rpush(Keys("bad-epoch").epoch, "x")
    server.client().set("legacy", '{"host":"h","node":"old","pid":1,"token":"t"}', px=600000)
    for user, rules in (("keyless", ["~unrelated:*", "+@all"]), ("noscript", ["~*", "+@all", "-@scripting"])):
        server.client().execute_command("ACL", "SETUSER", user, "on", ">s3cret-pw", "&*", *rules)
    yield server
    server.stop()


@pytest.fixture
def redis_without_lua(tmp_path, make_redis):
    """A Redis whose scripting commands are renamed away, as some managed offerings do."""
    (tmp_path / "no-lua").mkdir()
    server = make_redis(tmp_path / "no-lua", password="s3cret-pw",
                         extra_args=[arg for cmd in ("EVAL", "EVALSHA", "SCRIPT")
                                     for arg in ("--rename-command", cmd, "")]).start()
    yield server
    server.stop()


@pytest.fixture
def redis_replica(tmp_path, secured_redis, make_redis):
    """A read-only replica of secured_redis, as an old master is after a failover without Sentinel."""
    (tmp_path / "replica").mkdir()
    server = make_redis(tmp_path / "replica", password="s3cret-pw", extra_args=[
        "--replicaof", "127.0.0.1", str(secured_redis.port), "--masterauth", "s3cret-pw"]).start()
    yield server
    server.stop()


@pytest.mark.redis_versions
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gives_one_line_its_exit_code_and_leaves_nothing(case, secured_redis, redis_without_lua,
                                                                    redis_replica, fake_ray_env, tmp_path,
                                                                    leak_guard):
    extra_env, extra_args, code, phrase = BAD_INPUTS[case]
    env = {**fake_ray_env, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": secured_redis.address,
           "RAY_REDIS_PASSWORD": "s3cret-pw"}
    for name, value in extra_env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value.format(dead_port=free_port(), no_lua=redis_without_lua.address,
                                     replica=redis_replica.address)
    result = ray_ha("start", "--head", "--port=0", *extra_args, env=env, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("ray-ha: error: ") and phrase in lines[0]
    assert "Traceback" not in result.stderr and "s3cret-pw" not in result.stderr
    assert secured_redis.client().get(KEY) is None and redis_without_lua.client().get(KEY) is None
    assert secured_redis.client().get(Keys("legacy").lease) is None
    assert tagged_processes(leak_guard) == []


def test_ray_version_from_metadata_when_ray_is_ours(tmp_path):
    from raylaunch.proc.rayexe import ray_version

    def never(_exe):
        raise AssertionError("a ray beside our interpreter is not asked")

    assert ray_version(str(tmp_path / "ray"), python=str(tmp_path / "python"), ours=lambda: "1.9.2", ask=never) == (1, 9)


def test_ray_version_asks_a_foreign_ray(tmp_path):
    from raylaunch.proc.rayexe import ray_version

    asked = []
    version = ray_version(str(tmp_path / "ray"), python="/elsewhere/python", ours=lambda: "1.9.2",
                          ask=lambda exe: asked.append(exe) or " 2.60.0\n")
    assert version == (2, 60) and asked == [str(tmp_path / "ray")]


def test_unusable_ray_version_is_a_config_error(tmp_path):
    from raylaunch.config import ConfigError
    from raylaunch.proc.rayexe import ask_ray_version

    not_a_program = tmp_path / "ray"
    not_a_program.write_text("no #! line, not executable")
    with pytest.raises(ConfigError, match="could not run"):
        ask_ray_version(str(not_a_program))
