"""A head candidate refuses to stand by without the autoscaler's files `ray up` put only on its head_ip."""

import json

import pytest

from raylaunch.config import ConfigError
from raylaunch.proc.autoscaling import check_autoscaling_files


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_no_autoscaling_config_needs_nothing(home):
    assert check_autoscaling_files(["--head", "--port=6379"], {}) == ()


def test_the_config_and_its_key_in_place_pass_either_spelling(home):
    (home / "ray_bootstrap_key.pem").write_text("key")
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps({"auth": {"ssh_private_key": "~/ray_bootstrap_key.pem"}}))
    check_autoscaling_files(["--autoscaling-config=~/ray_bootstrap_config.yaml"], {})
    check_autoscaling_files(["--autoscaling-config", "~/ray_bootstrap_config.yaml"], {})


def test_a_missing_config_is_refused_with_the_way_out(home):
    with pytest.raises(ConfigError, match=r"ray_bootstrap_config.yaml: No such file.*run `ray up` once per candidate"):
        check_autoscaling_files(["--autoscaling-config=~/ray_bootstrap_config.yaml"], {})


@pytest.mark.parametrize("text", [
    json.dumps({"auth": {"ssh_private_key": "~/ray_bootstrap_key.pem"}}),  # as `ray up` writes it
    "auth:\n  ssh_private_key: ~/ray_bootstrap_key.pem\n",                  # a hand-written YAML
])
def test_a_config_whose_key_is_missing_is_refused(home, text):
    (home / "ray_bootstrap_config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"names the SSH key ~/ray_bootstrap_key.pem, which is not on this machine"):
        check_autoscaling_files(["--autoscaling-config=~/ray_bootstrap_config.yaml"], {})


@pytest.mark.parametrize("text", ["{}", "not: [valid", json.dumps({"auth": "password"})])
def test_a_config_without_a_key_path_needs_no_key(home, text):
    (home / "c.yaml").write_text(text)
    check_autoscaling_files([f"--autoscaling-config={home / 'c.yaml'}"], {})


@pytest.mark.parametrize("provider, v2, warned", [("local", "1", True), ("local", "0", False), ("local", None, False),
                                                  ("aws", "1", False)])
def test_a_local_provider_under_autoscaler_v2_is_warned_about(home, provider, v2, warned):
    (home / "c.yaml").write_text(json.dumps({"provider": {"type": provider}}))
    env = {} if v2 is None else {"RAY_enable_autoscaler_v2": v2}
    warnings = check_autoscaling_files([f"--autoscaling-config={home / 'c.yaml'}"], env)
    assert bool(warnings) is warned and all("RAY_UP_enable_autoscaler_v2=0" in w for w in warnings)
