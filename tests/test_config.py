"""Flags, environment and .env: booleans, durations, the timing rules, precedence, and the defaults --help states."""

import os
import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from raylaunch.cli import main
from raylaunch.envfile import load_env_file
from raylaunch.config import (IDENTITY, REPORTING, SAFETY, START_GROUPS, TIMING, ConfigError, Setting, Timing,
                              parse_bool, parse_duration, settings_from)


def timing_from(flags, env):
    return settings_from(TIMING, flags, env)


def identity_from(node, key, env):
    return settings_from(IDENTITY, {"node_name": node, "key": key}, env)


def reporting_from(flags, env):
    return settings_from(REPORTING, flags, env)


def safety_from(flags, env):
    return settings_from(SAFETY, flags, env)


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_truthy_values(text):
    assert parse_bool("X", text) is True


@pytest.mark.parametrize("text", [None, "", "0", "false", "No", "OFF"])
def test_falsy_values(text):
    assert parse_bool("X", text) is False


@pytest.mark.parametrize("text", ["2", "enable", "truee", "y"])
def test_other_boolean_values_are_usage_errors(text):
    with pytest.raises(ConfigError, match="not a boolean"):
        parse_bool("RAY_ENABLE_HEAD_HA", text)


@pytest.mark.parametrize("text, seconds", [("15", 15.0), ("15s", 15.0), ("1500ms", 1.5),
                                           ("0.5", 0.5), (" 2S ", 2.0), (".25s", 0.25)])
def test_durations(text, seconds):
    assert parse_duration("--ha-x", text) == seconds


def test_bare_number_in_ms_names_is_milliseconds():
    assert parse_duration("RAY_HA_KEY_EXPIRE_TIME_MS", "5000", bare_unit="ms") == 5.0


@pytest.mark.parametrize("text", ["", "abc", "-1", "5m", "1.2.3", "10 sec"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("--ha-lease-duration", text)


def test_defaults_follow_the_active_passive_proposal():
    t = Timing()
    assert (t.lease_duration, t.renew_deadline, t.retry_period, t.redis_timeout) == (15, 10, 2, 2)
    assert t.effective_reconnect_timeout == 15 + 45


@pytest.mark.parametrize("kwargs, message", [
    (dict(lease_duration=10, renew_deadline=9, redis_timeout=2), "must exceed renew deadline"),
    (dict(lease_duration=12, renew_deadline=10, redis_timeout=2), "must exceed renew deadline"),
    (dict(renew_deadline=3, retry_period=2), "at least 2 x retry period"),
    (dict(renew_deadline=4, retry_period=1, redis_timeout=5, lease_duration=20), "must exceed Redis timeout"),
    (dict(retry_period=0), "retry_period must be > 0"),
    (dict(redis_timeout=-1), "redis_timeout must be > 0"),
    (dict(reconnect_timeout=0), "reconnect timeout must be > 0"),
])
def test_inconsistent_timings_are_rejected_not_adjusted(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Timing(**kwargs)


def test_timing_is_frozen():
    with pytest.raises(Exception):
        Timing().lease_duration = 1  # type: ignore[misc]


def test_flag_beats_environment_and_ant_ray_names_are_milliseconds():
    env = {"RAY_HA_KEY_EXPIRE_TIME_MS": "60000", "RAY_HA_CHECK_INTERVAL_MS": "500",
           "RAY_HA_CONNECT_TIMEOUT_MS": "1000", "RAY_HA_WAIT_PRE_GCS_STOP_MAX_TIME_MS": "2500"}
    t = timing_from({"lease_duration": "20s"}, env)
    assert (t.lease_duration, t.retry_period, t.redis_timeout, t.wait_old_gcs) == (20, 0.5, 1, 2.5)


def test_identity_defaults_to_host_name_and_namespace_key():
    ident = identity_from(None, None, {"RAY_external_storage_namespace": "prod"})
    assert ident.key == "ray-ha:prod:leader"
    assert ident.node_name == ident.host
    assert identity_from(None, None, {}).key == "ray-ha:default:leader"
    assert identity_from("n1", "k", {"RAY_HA_NODE_NAME": "n2", "RAY_HA_LEADER_KEY": "k2"}).node_name == "n1"
    assert identity_from(None, None, {"RAY_HA_NODE_NAME": "n2", "RAY_HA_LEADER_KEY": "k2"}).key == "k2"


def test_env_file_fills_in_but_never_overrides(tmp_path, monkeypatch):
    env_file = tmp_path / "ha.env"
    env_file.write_text("RAY_HA_TEST_A=from-file\nRAY_HA_TEST_B=from-file\n")
    monkeypatch.setenv("RAY_HA_TEST_A", "from-env")
    monkeypatch.delenv("RAY_HA_TEST_B", raising=False)
    load_env_file(str(env_file))
    assert os.environ["RAY_HA_TEST_A"] == "from-env"
    assert os.environ["RAY_HA_TEST_B"] == "from-file"
    monkeypatch.delenv("RAY_HA_TEST_B")


def test_dot_env_in_the_working_directory_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("RAY_HA_TEST_C=dot\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_HA_TEST_C", raising=False)
    load_env_file(None)
    assert os.environ["RAY_HA_TEST_C"] == "dot"
    monkeypatch.delenv("RAY_HA_TEST_C")


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_an_env_file_others_may_write_is_refused_and_nothing_is_read(tmp_path, monkeypatch, mode):
    (tmp_path / ".env").write_text("RAY_HA_TEST_D=planted\n")
    (tmp_path / ".env").chmod(mode)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_HA_TEST_D", raising=False)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_env_file(None)
    assert "RAY_HA_TEST_D" not in os.environ


def test_missing_env_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="env file not found"):
        load_env_file(str(tmp_path / "nope.env"))


def test_reporting_from_flags_env_and_defaults():
    from raylaunch.config import Reporting

    assert reporting_from({}, {}) == Reporting()
    env = {"RAY_HA_HTTP_PORT": "8008", "RAY_HA_LOG_FORMAT": "JSON", "RAY_HA_HOOK_TIMEOUT_MS": "1500",
           "RAY_HA_ON_ELECTED": "vip-up"}
    got = reporting_from({"http_port": "9000"}, env)
    assert (got.http_port, got.log_format, got.hook_timeout, got.on_elected) == (9000, "json", 1.5, "vip-up")


@pytest.mark.parametrize("flags, env, phrase", [
    ({"http_port": "80x"}, {}, "not a port number"),
    ({}, {"RAY_HA_HTTP_PORT": "70000"}, "not in 0-65535"),
    ({}, {"RAY_HA_LOG_FORMAT": "xml"}, "not one of: text, json"),
    ({"hook_timeout": "0"}, {}, "hook timeout must be > 0"),
])
def test_bad_reporting_settings_are_refused(flags, env, phrase):

    with pytest.raises(ConfigError, match=phrase):
        reporting_from(flags, env)


def test_every_setting_is_a_start_option_whose_help_names_its_environment_variable():
    from click.testing import CliRunner

    from raylaunch.cli import main
    from raylaunch.config import START_GROUPS

    out = CliRunner().invoke(main, ["start", "--help"]).output
    for group in START_GROUPS:
        for setting in group.settings:
            assert setting.flag in out and setting.env in out, setting.field
            assert settings_from(group, {setting.field: None}, {}) == settings_from(group, {}, {})


#: Defaults --help states in words, as the code has them when nothing is set (no flag, empty env).
WORDED_DEFAULTS = {"reconnect_timeout": None,  # "[lease + 45s]": worked out from the lease when None
                   "wait_old_gcs": 3 * 24 * 3600.0,  # "[3 days]"
                   "node_name": socket.gethostname(), "key": "ray-ha:default:leader"}


def stated_default(group, setting: Setting) -> object:
    """The default a setting's --help states in its closing [brackets], read with the setting's own parser."""
    found = re.search(r"\[([^\]]+)\]\.?$", group.help_of(setting))
    if found is None:
        return None  # no default stated: the field is unset (None) unless given
    if setting.field in WORDED_DEFAULTS:
        return WORDED_DEFAULTS[setting.field]
    text = found.group(1).split(":")[0]  # "auto: exit with --block, ..." states "auto"
    return None if text == "off" else setting.parse(setting.flag, text, True)


@pytest.mark.parametrize("group, setting", [(g, s) for g in START_GROUPS for s in g.settings],
                         ids=[s.field for g in START_GROUPS for s in g.settings])
def test_every_default_in_help_is_the_one_the_code_uses(group, setting):
    used = getattr(settings_from(group, {}, {}), setting.field)
    stated = group.help_of(setting)
    assert stated_default(group, setting) == used, f"{setting.flag}: --help says {stated!r}, the code uses {used!r}"
    shown = "".join(CliRunner().invoke(main, ["start", "--help"]).output.split())  # click wraps at spaces and hyphens
    assert "".join(stated.split()) in shown, f"{setting.flag}'s help, default included, is what --help shows"


def _bare(text: str) -> str:
    """A default as written, without what writing varies: backticks, spaces, the short <ns>."""
    return re.sub(r"[`\s]", "", text).replace("<ns>", "<namespace>")


@pytest.mark.parametrize("group, setting", [(g, s) for g in START_GROUPS for s in g.settings],
                         ids=[s.field for g in START_GROUPS for s in g.settings])
def test_the_configuration_page_states_the_defaults_that_help_states(group, setting):
    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    row = next((line for line in page.splitlines() if line.startswith(f"| `{setting.flag}` | `{setting.env}` |")), None)
    assert row is not None, f"docs/configuration.md has no row for {setting.flag} ({setting.env})"
    found = re.search(r"\[([^\]]+)\]\.$", group.help_of(setting))
    stated = found.group(1).split(": ")[0] if found else "none"  # "auto: node IP, ..." states "auto"
    written = row.split("|")[3]
    assert _bare(written) == _bare(stated), f"{setting.flag}: the page says {written!r}, --help {stated!r}"
