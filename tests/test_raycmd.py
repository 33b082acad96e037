"""The leader's `ray start` command: passthrough, version table, --system-config merge, redaction."""

import json

import pytest

from raylaunch.config import ConfigError
from raylaunch.proc.raycmd import (RECONNECT_ENV, build_head_command, client_ports, storage_namespace, merge_system_config, option_value,
                              parse_version, reconnect_config, redact, without_option)


@pytest.mark.parametrize("text, version", [("2.60.0", (2, 60)), ("1.9.2", (1, 9)),
                                           ("3.0.0.dev0", (3, 0)), (" 1.13.0\n", (1, 13))])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_unreadable_version():
    with pytest.raises(ConfigError):
        parse_version("ray, version unknown")


@pytest.mark.parametrize("version, expected", [
    ((1, 9), {"ping_gcs_rpc_server_max_retries": 60, "ping_gcs_rpc_server_interval_milliseconds": 1000}),
    ((1, 8), {"ping_gcs_rpc_server_max_retries": 60, "ping_gcs_rpc_server_interval_milliseconds": 1000}),
    ((1, 13), {"gcs_rpc_server_reconnect_timeout_s": 60}),
    ((2, 0), {"gcs_rpc_server_reconnect_timeout_s": 60}),
    ((2, 60), {"gcs_rpc_server_reconnect_timeout_s": 60}),
])
def test_reconnect_keys_by_version(version, expected):
    assert reconnect_config(version, 59.2) == expected


def test_new_ray_never_gets_the_old_key_that_crashes_its_gcs():
    argv = build_head_command("ray", ["--head"], (2, 60), 60, {}).argv
    assert "ping_gcs_rpc_server" not in " ".join(argv)


def test_user_keys_win_and_shorter_values_warn():
    merged, warnings = merge_system_config('{"gcs_rpc_server_reconnect_timeout_s": 5, "x": 1}',
                                           {"gcs_rpc_server_reconnect_timeout_s": 60})
    assert merged == {"gcs_rpc_server_reconnect_timeout_s": 5, "x": 1}
    assert len(warnings) == 1 and "shorter" in warnings[0]


def test_longer_user_values_do_not_warn():
    _, warnings = merge_system_config('{"gcs_rpc_server_reconnect_timeout_s": 600}',
                                      {"gcs_rpc_server_reconnect_timeout_s": 60})
    assert warnings == []


@pytest.mark.parametrize("text, message", [("{bad", "not valid JSON"), ("[1, 2]", "JSON object"),
                                           ('"s"', "JSON object")])
def test_bad_system_config(text, message):
    with pytest.raises(ConfigError, match=message):
        merge_system_config(text, {})


def test_options_in_both_spellings():
    args = ["--port", "0", "--system-config={\"a\": 1}", "--redis-password", "pw", "--x"]
    assert option_value(args, "--redis-password") == "pw"
    assert option_value(args, "--system-config") == '{"a": 1}'
    assert option_value(args, "--missing") is None
    assert without_option(args, "--system-config") == ["--port", "0", "--redis-password", "pw", "--x"]
    assert without_option(args, "--redis-password") == ["--port", "0", "--system-config={\"a\": 1}", "--x"]


def test_head_command_passes_user_args_through_in_order():
    user = ["--head", "--port=0", "--num-cpus", "1", "--system-config", '{"a": 1}', "--redis-password=pw"]
    cmd = build_head_command("/bin/ray", user, (2, 60), 60, {"PATH": "/bin"})
    assert list(cmd.argv[:2]) == ["/bin/ray", "start"]
    assert list(cmd.argv[2:7]) == ["--head", "--port=0", "--num-cpus", "1", "--redis-password=pw"]
    assert cmd.argv.count("--block") == 1
    assert json.loads(cmd.argv[cmd.argv.index("--system-config") + 1]) == {
        "a": 1, "gcs_rpc_server_reconnect_timeout_s": 60}
    assert cmd.argv.count("--system-config") == 1


def test_existing_block_flag_is_not_doubled():
    assert build_head_command("ray", ["--head", "--block"], (2, 60), 60, {}).argv.count("--block") == 1


def test_child_environment_sets_reconnect_and_drops_head_ha_switch():
    cmd = build_head_command("ray", ["--head"], (2, 60), 59.5, {"RAY_ENABLE_HEAD_HA": "1", "A": "b"})
    assert cmd.env == {"A": "b", RECONNECT_ENV: "60"}


def test_user_reconnect_env_wins_with_warning_when_shorter():
    cmd = build_head_command("ray", ["--head"], (2, 60), 60, {RECONNECT_ENV: "5"})
    assert cmd.env[RECONNECT_ENV] == "5"
    assert any(RECONNECT_ENV in w for w in cmd.warnings)


def test_old_ray_gets_no_reconnect_env():
    assert RECONNECT_ENV not in build_head_command("ray", ["--head"], (1, 9), 60, {}).env


def test_redact_hides_passwords_in_both_spellings():
    out = redact(["ray", "--redis-password", "s3cret", "--redis-password=s3cret", "--port=1"])
    assert "s3cret" not in " ".join(out)
    assert out == ["ray", "--redis-password", "***", "--redis-password=***", "--port=1"]


@pytest.mark.parametrize("user_args, env, expected", [
    ([], {}, "default"),
    ([], {"RAY_external_storage_namespace": "kuberay-uid"}, "kuberay-uid"),
    (["--system-config", '{"external_storage_namespace": "mine"}'], {"RAY_external_storage_namespace": "env"},
     "mine"),
])
def test_the_gcs_storage_namespace_is_rays_own_choice(user_args, env, expected):
    """--system-config over the environment over Ray's `default`, as Ray's RayConfig decides."""
    command = build_head_command("ray", ["--head", *user_args], (2, 60), 60, {"PATH": "/bin", **env})
    assert storage_namespace(command) == expected


@pytest.mark.parametrize("user_args, expected", [
    (["--head"], {"dashboard": 8265, "client": 10001}),
    (["--head", "--dashboard-port=9000", "--ray-client-server-port", "10002"], {"dashboard": 9000, "client": 10002}),
    (["--head", "--include-dashboard=false"], {"client": 10001}),
    (["--head", "--include-dashboard", "False", "--dashboard-port=9000"], {"client": 10001}),
    (["--head", "--include-dashboard=true"], {"dashboard": 8265, "client": 10001}),
    (["--head", "--dashboard-port=none", "--ray-client-server-port=70000"], {}),
])
def test_the_client_ports_are_those_the_head_command_serves(user_args, expected):
    """What the leader record publishes and a standby listens on: Ray's defaults unless the command says."""
    assert client_ports(build_head_command("ray", user_args, (2, 60), 60, {}).argv) == expected
