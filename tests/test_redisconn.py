"""RAY_REDIS_ADDRESS in every form Ray accepts, TLS files and credentials."""

import pytest

from raylaunch.config import ConfigError
from raylaunch.store.connect import parse_address, target_from


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:6379", ("127.0.0.1", 6379, False)),
    ("redis://10.0.0.1:7000", ("10.0.0.1", 7000, False)),
    ("rediss://redis.example:6380", ("redis.example", 6380, True)),
    ("REDISS://h:1", ("h", 1, True)),
    ("[::1]:6379", ("::1", 6379, False)),
    ("redis://[fe80::1]:1234", ("fe80::1", 1234, False)),
    ("10.0.0.1:6379,10.0.0.2:6379", ("10.0.0.1", 6379, False)),
    (" h1:1 , h2:2", ("h1", 1, False)),
])
def test_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"), (",h:1", "empty"), ("localhost", "host:port"), ("h:port", "not a number"),
    ("h:0", "1..65535"), ("h:70000", "1..65535"), ("::1:6379", "brackets"), ("[::1]", r"\[ipv6\]:port"),
    ("http://h:1", "scheme"), ("redis://:pw@h:1", "credentials"), ("h:1/0", "host:port"), (":6379", "host:port"),
])
def test_malformed_addresses(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_address(text)


def test_password_from_flag_beats_environment():
    env = {"RAY_REDIS_ADDRESS": "h:1", "RAY_REDIS_PASSWORD": "env"}
    assert target_from(env, None, "flag").password == "flag"
    assert target_from(env, None, None).password == "env"
    assert target_from(env, "u", None).username == "u"


def test_password_never_in_repr_or_display():
    target = target_from({"RAY_REDIS_ADDRESS": "h:1"}, None, "s3cret")
    assert "s3cret" not in repr(target) and "s3cret" not in target.display


def test_unset_address_is_a_usage_error():
    with pytest.raises(ConfigError, match="RAY_REDIS_ADDRESS is not set"):
        target_from({}, None, None)


def test_tls_files_must_exist(tmp_path):
    env = {"RAY_REDIS_ADDRESS": "rediss://h:1", "RAY_REDIS_CA_CERT": str(tmp_path / "ca.pem")}
    with pytest.raises(ConfigError, match="TLS file not found: RAY_REDIS_CA_CERT"):
        target_from(env, None, None)
    (tmp_path / "ca.pem").write_text("x")
    target = target_from(env, None, None)
    assert target.tls and target.ca_cert == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match="RAY_REDIS_CA_PATH"):
        target_from({**env, "RAY_REDIS_CA_PATH": str(tmp_path / "nodir")}, None, None)


def test_tls_files_are_ignored_without_rediss(tmp_path):
    env = {"RAY_REDIS_ADDRESS": "h:1", "RAY_REDIS_CA_CERT": str(tmp_path / "missing.pem")}
    assert not target_from(env, None, None).tls
