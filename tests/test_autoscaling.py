"""A head candidate refuses to stand by without the autoscaler's files `ray up` put only on its head_ip."""

import json

import pytest

from raylaunch.config import ConfigError
from raylaunch.proc.autoscaling import Autoscaling, LocalCluster, read_autoscaling


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_no_autoscaling_config_needs_nothing(home):
    assert read_autoscaling(["--head", "--port=6379"], {}, home) == Autoscaling()


def test_the_config_and_its_key_in_place_pass_either_spelling(home):
    """...and the config is read in both: its local cluster (which a config passed over would not give) comes back."""
    (home / "ray_bootstrap_key.pem").write_text("key")
    config = {"cluster_name": "c", "auth": {"ssh_private_key": "~/ray_bootstrap_key.pem"},
              "provider": {"type": "local", "head_ip": "10.0.0.11", "worker_ips": ["10.0.0.21"]}}
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps(config))
    expected = Autoscaling(local=LocalCluster(home / "ray" / "cluster-c.state", "10.0.0.11", ("10.0.0.21",)))
    assert read_autoscaling(["--autoscaling-config=~/ray_bootstrap_config.yaml"], {}, home / "ray") == expected
    assert read_autoscaling(["--autoscaling-config", "~/ray_bootstrap_config.yaml"], {}, home / "ray") == expected


def test_a_missing_config_is_refused_with_the_way_out(home):
    with pytest.raises(ConfigError, match=r"ray_bootstrap_config.yaml: No such file.*run `ray up` once per candidate"):
        read_autoscaling(["--autoscaling-config=~/ray_bootstrap_config.yaml"], {}, home)


@pytest.mark.parametrize("text", [
    json.dumps({"auth": {"ssh_private_key": "~/ray_bootstrap_key.pem"}}),  # as `ray up` writes it
    "auth:\n  ssh_private_key: ~/ray_bootstrap_key.pem\n",                  # a hand-written YAML
])
def test_a_config_whose_key_is_missing_is_refused(home, text):
    (home / "ray_bootstrap_config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"names the SSH key ~/ray_bootstrap_key.pem, which is not on this machine"):
        read_autoscaling(["--autoscaling-config=~/ray_bootstrap_config.yaml"], {}, home)


@pytest.mark.parametrize("text", ["{}", "not: [valid", json.dumps({"auth": "password"})])
def test_a_config_without_a_key_path_needs_no_key(home, text):
    """...and gives nothing to act on: no warning, no local cluster."""
    (home / "c.yaml").write_text(text)
    assert read_autoscaling([f"--autoscaling-config={home / 'c.yaml'}"], {}, home) == Autoscaling()


@pytest.mark.parametrize("provider, v2, warned", [("local", "1", True), ("local", "0", False), ("local", None, False),
                                                  ("aws", "1", False)])
def test_a_local_provider_under_autoscaler_v2_is_warned_about(home, provider, v2, warned):
    (home / "c.yaml").write_text(json.dumps({"provider": {"type": provider}}))
    env = {} if v2 is None else {"RAY_enable_autoscaler_v2": v2}
    warnings = read_autoscaling([f"--autoscaling-config={home / 'c.yaml'}"], env, home).warnings
    assert bool(warnings) is warned and all("RAY_UP_enable_autoscaler_v2=0" in w for w in warnings)


def test_a_local_cluster_is_known_by_its_node_list_head_and_workers(home):
    config = {"cluster_name": "ray-ha-2", "provider": {"type": "local", "head_ip": "10.0.0.12",
                                                       "worker_ips": ["10.0.0.21", "10.0.0.22"]}}
    (home / "c.yaml").write_text(json.dumps(config))
    found = read_autoscaling([f"--autoscaling-config={home / 'c.yaml'}"], {}, home / "ray").local
    assert found == LocalCluster(home / "ray" / "cluster-ray-ha-2.state", "10.0.0.12", ("10.0.0.21", "10.0.0.22"))
