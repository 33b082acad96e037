"""Ray 2.60's own `ray up` (local provider, over SSH) with the recipes in docs/, on rig hosts with sshd:
two head candidates, one follow-mode worker, Redis on its own host, `ray up` run from an admin host.

Only the addresses, the SSH user and key, the setup commands (ray and ray-ha are installed already) and
the resources (one CPU each, no dashboard, a `pinned` resource on the worker) are swapped; the lease is
5 s through the environment of the hosts' login shell. kill -9 of every process on the leader's machine:
the standby leads, the worker keeps its raylet and its detached actor, a third `ray up` brings the killed
machine back as a standby, and `ray-ha stop` on every machine leaves nothing of Ray or ray-ha.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, wait_for
from testkit.hostray import HostRedis, ServingDriver, clean_env
from testkit.hosts import Host, Rig
from testkit.sshhosts import HOME, USER, SshHosts

pytestmark = [pytest.mark.ray, pytest.mark.hosts]

DOCS = ROOT / "docs"
LEASE_ENV = {"RAY_HA_KEY_EXPIRE_TIME_MS": "5000", "RAY_HA_RENEW_DEADLINE_MS": "3000",
             "RAY_HA_CHECK_INTERVAL_MS": "500", "RAY_HA_CONNECT_TIMEOUT_MS": "1000"}
RAY_PROCESSES = ("raylet", "gcs_server", "ray-ha", "python")


def adapted(recipe: str, rig: Rig, redis: HostRedis, key: Path) -> dict:
    """A recipe with the rig's addresses, user and key, no installs, and a small machine's resources."""
    cluster = yaml.safe_load((DOCS / recipe).read_text())
    hosts = rig.hosts
    head_ip = {"10.0.0.11": hosts["h1"].ip, "10.0.0.12": hosts["h2"].ip}[cluster["provider"]["head_ip"]]
    cluster["provider"].update(head_ip=head_ip, worker_ips=[hosts["w1"].ip])
    cluster["auth"] = {"ssh_user": USER, "ssh_private_key": str(key)}
    cluster["setup_commands"] = []

    def swap(command: str, extra: str) -> str:
        return command.replace("redis.internal:6379", redis.address).replace(
            "--object-manager-port=8076", f"--object-manager-port=8076 --num-cpus=1 --disable-usage-stats {extra}")

    cluster["head_start_ray_commands"] = [swap(c, "--include-dashboard=false")
                                          for c in cluster["head_start_ray_commands"]]
    cluster["worker_start_ray_commands"] = [swap(c, "--resources='{\"pinned\": 1}'")
                                            for c in cluster["worker_start_ray_commands"]]
    return cluster


class RayUp:
    """Everything the test drives: the rig's machines, their sshd, Redis, and `ray up` on the admin host."""

    def __init__(self, rig: Rig, tmp_path: Path) -> None:
        self.rig, self.tmp = rig, tmp_path
        redis_host = rig.add("r1", 2, storage=True, hosts=False)
        for name, number in (("h1", 11), ("h2", 12), ("w1", 21)):
            rig.add(name, number, storage=True)
        self.admin = rig.add("a1", 31)
        self.redis = HostRedis(redis_host, tmp_path / "redis").start()
        venv_bin = str(Path(sys.executable).parent)
        login_env = {**clean_env(**LEASE_ENV), "PATH": f"{venv_bin}:{os.environ['PATH']}", "HOME": HOME}
        self.ssh = SshHosts(tmp_path, login_env)
        for name in ("h1", "h2", "w1"):
            self.ssh.prepare(rig.hosts[name])
            self.ssh.start(rig.hosts[name])
        self.admin.run(["mkdir", "-p", "/tmp/admin"])
        self.yaml: dict[str, Path] = {}
        for name, recipe in (("h1", "ray-up.yaml"), ("h2", "ray-up-standby.yaml")):
            self.yaml[name] = tmp_path / recipe
            self.yaml[name].write_text(yaml.safe_dump(adapted(recipe, rig, self.redis, self.ssh.key)))
        self.env = {**clean_env(RAY_UP_enable_autoscaler_v2="0"), "HOME": "/tmp/admin",
                    "PATH": f"{venv_bin}:{os.environ['PATH']}"}

    def up(self, head: str) -> str:
        """`ray up -y` of `head`'s YAML from the admin host; its output (AssertionError if it fails)."""
        result = self.admin.run(["ray", "up", "-y", "--no-config-cache", str(self.yaml[head])], timeout=300,
                                check=False, env=self.env)
        out = result.stdout + result.stderr
        assert result.returncode == 0, f"ray up {head} exited {result.returncode}:\n{out[-6000:]}"
        return out

    def host(self, name: str) -> Host:
        return self.rig.hosts[name]

    def leader(self) -> str:
        return self.redis.record().get("node", "")

    def ray_ha(self, name: str, *args: str) -> subprocess.CompletedProcess:
        """`ray-ha ARGS` on machine `name`, as its user would run it over SSH."""
        host = self.host(name)
        return self.admin.run(["ssh", "-i", str(self.ssh.key), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                               f"{USER}@{host.ip}", "source ~/.bashrc && ray-ha " + " ".join(args)],
                              timeout=120, check=False, env=self.env)

    def raylets(self, name: str) -> list[int]:
        return [p.pid for p in self.host(name).processes() if p.name() == "raylet"]

    def leftovers(self, name: str) -> list[str]:
        """What runs on machine `name` besides its sshd."""
        return [f"{p.pid} {p.name()}" for p in self.host(name).processes() if p.name() not in ("sshd", "unshare")]


@pytest.fixture
def ray_up(rig: Rig, tmp_path) -> RayUp:
    for tool in ("ray", "sshd", "ssh", "rsync"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"`{tool}` is needed: pip install 'ray[client]==2.60.0'; apt-get install openssh-server rsync")
    return RayUp(rig, tmp_path)


def test_ray_up_with_a_hot_standby_survives_kill_9_of_the_leaders_machine(ray_up: RayUp):
    out = ray_up.up("h1")
    assert "ray-ha: leading as h1 (epoch 1)" in out, out[-4000:]
    raylet = wait_for(lambda: ray_up.raylets("w1"), 180, interval=0.5, what="h1's autoscaler to start w1")
    out = ray_up.up("h2")
    assert "ray-ha: standing by; leader is h1 (epoch 1)" in out, out[-4000:]

    w1 = ray_up.host("w1")
    driver = ServingDriver(w1)
    try:
        first = driver.ask("worker-create")
        h2_logins = ray_up.ssh.logins_from(w1, ray_up.host("h2").ip)
        killed_at = time.monotonic()
        ray_up.host("h1").kill_all()
        wait_for(lambda: ray_up.leader() == "h2", 60, interval=0.1, what="h2 to lead")
        answer = driver.ask("worker-get")
        took = time.monotonic() - killed_at
        assert (answer["value"], answer["pid"], answer["node"]) == (2, first["pid"], first["node"]), answer
        assert ray_up.raylets("w1") == raylet, "w1's raylet is the one h1's autoscaler started"
        time.sleep(30)  # h2's autoscaler: give it time to "launch" w1 if it thinks it must
        relaunched = ray_up.ssh.logins_from(w1, ray_up.host("h2").ip) - h2_logins
        again = driver.ask("worker-get")
        assert (again["value"], again["pid"]) == (3, first["pid"]), again
        assert ray_up.raylets("w1") == raylet, "no worker was relaunched"
    finally:
        driver.close()
    print(f"ray up, kill -9 of h1: w1's actor answered with its state {took:.1f}s after the kill; "
          f"h2's autoscaler logged in to w1 {relaunched} times afterwards; same raylet and actor")

    ray_up.ssh.start(ray_up.host("h1"))  # the machine is back
    out = ray_up.up("h1")
    assert "ray-ha: standing by; leader is h2 (epoch 2)" in out, out[-4000:]
    assert ray_up.leader() == "h2"

    for name in ("w1", "h1", "h2"):
        stopped = ray_up.ray_ha(name, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for name in ("w1", "h1", "h2"):
        assert wait_for(lambda: not ray_up.leftovers(name), 30, interval=0.5, what=f"{name} to be empty") is True
