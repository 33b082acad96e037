"""Ray's own `ray up` (local provider, over SSH) with the recipes in docs/, on rig hosts with sshd: Redis on
r1, head candidates h1 and h2, a follow-mode worker w1, and `ray up` run from an admin host a1.

Only the addresses, the SSH user and key, the setup commands (ray and ray-ha are installed already) and the
resources (one CPU each, no dashboard, a `pinned` resource on the worker) are swapped; the lease comes from
the environment of the hosts' login shell. Used by tests/hosts/test_ray_up.py and the bench.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from testkit.hostray import HostRedis, clean_env
from testkit.hosts import Host, Rig
from testkit.procs import describe
from testkit.sshhosts import HOME, USER, SshHosts

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RECIPES = {"h1": "ray-up.yaml", "h2": "ray-up-standby.yaml"}
#: Processes of ours that may stay on a machine after `ray-ha stop`: its sshd (behind its unshare).
MACHINE = ("sshd", "unshare")


def lease_env(lease: float) -> dict[str, str]:
    """ray-ha's timing for `lease` as environment (ms): renew deadline 0.6 x lease, retry 0.5 s."""
    renew = lease * 0.6
    return {"RAY_HA_KEY_EXPIRE_TIME_MS": f"{lease * 1000:g}", "RAY_HA_RENEW_DEADLINE_MS": f"{renew * 1000:g}",
            "RAY_HA_CHECK_INTERVAL_MS": "500", "RAY_HA_CONNECT_TIMEOUT_MS": f"{min(1.0, (lease - renew) / 2) * 1000:g}"}


def adapted(recipe: str, hosts: dict[str, Host], redis: HostRedis, key: Path) -> dict:
    """A recipe with the rig's addresses, user and key, no installs, and a small machine's resources."""
    cluster = yaml.safe_load((DOCS / recipe).read_text())
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
    """The rig's machines, their sshd, Redis, and `ray up` on the admin host (ssh and rsync there and on the
    hosts are the machine's or fetched ones: testkit.sshtools). Raises testkit.debian.Unavailable if those
    can be neither found nor fetched."""

    def __init__(self, rig: Rig, workdir: Path, lease: float) -> None:
        self.rig = rig
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        self.ssh = SshHosts(workdir, {**clean_env(**lease_env(lease)), "PATH": path, "HOME": HOME})
        redis_host = rig.add("r1", 2, storage=True, hosts=False)
        for name, number in (("h1", 11), ("h2", 12), ("w1", 21)):
            rig.add(name, number, storage=True)
        self.admin = rig.add("a1", 31)
        self.redis = HostRedis(redis_host, workdir / "redis").start()
        for name in ("h1", "h2", "w1"):
            self.ssh.prepare(rig.hosts[name])
            self.ssh.start(rig.hosts[name])
        self.admin.run(["mkdir", "-p", "/tmp/admin"])
        self.yaml: dict[str, Path] = {}
        for name, recipe in RECIPES.items():
            self.yaml[name] = workdir / recipe
            self.yaml[name].write_text(yaml.safe_dump(adapted(recipe, rig.hosts, self.redis, self.ssh.key)))
        self.env = self.ssh.environ({**clean_env(RAY_UP_enable_autoscaler_v2="0"), "HOME": "/tmp/admin",
                                     "PATH": path})

    def host(self, name: str) -> Host:
        return self.rig.hosts[name]

    def ray(self, *args: str, yaml_of: str) -> str:
        """`ray ARGS -y <yaml of head yaml_of>` from the admin host; its output (AssertionError if it fails)."""
        result = self.admin.run(["ray", *args, "-y", str(self.yaml[yaml_of])], timeout=300, check=False,
                                env=self.env)
        out = result.stdout + result.stderr
        assert result.returncode == 0, f"ray {' '.join(args)} {yaml_of} exited {result.returncode}:\n{out[-6000:]}"
        return out

    def exec(self, head: str, command: str) -> subprocess.CompletedProcess:
        """`ray exec <yaml of head> COMMAND` from the admin host, run to its end whatever it exits with."""
        return self.admin.run(["ray", "exec", str(self.yaml[head]), command], timeout=300, check=False,
                              env=self.env)

    def up(self, head: str) -> str:
        """`ray up` of `head`'s YAML (no config cache, as a user editing it would)."""
        return self.ray("up", "--no-config-cache", yaml_of=head)

    def leader(self) -> str:
        return self.redis.record().get("node", "")

    def carried_status(self, name: str) -> str:
        """Machine `name`'s node status in the list the leader keeps in Redis for the next ("" if none)."""
        raw = self.redis.command("GET", "{ray-ha:default:leader}:provider")
        nodes = json.loads(raw) if isinstance(raw, str) else {}
        return nodes.get(self.host(name).ip, {}).get("tags", {}).get("ray-node-status", "")

    def ray_ha(self, name: str, *args: str) -> subprocess.CompletedProcess:
        """`ray-ha ARGS` on machine `name`, as its user would run it over SSH (from the admin host, with that
        user's login environment), not tests/conftest.py's ray_ha, which runs it here as the test's user."""
        return self.admin.run(["ssh", "-i", str(self.ssh.key), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                               f"{USER}@{self.host(name).ip}", "source ~/.bashrc && ray-ha " + " ".join(args)],
                              timeout=120, check=False, env=self.env)

    def raylets(self, name: str) -> list[int]:
        """The raylets on machine `name` (a process that ends while being looked at is skipped)."""
        found = []
        for proc in self.host(name).processes():
            try:
                if proc.name() == "raylet":
                    found.append(proc.pid)
            except psutil.Error:
                continue
        return found

    def leftovers(self, name: str) -> list[str]:
        """What runs on machine `name` besides its sshd."""
        left = []
        for proc in self.host(name).processes():
            try:
                if proc.name() not in MACHINE:
                    left.append(describe(proc))
            except psutil.NoSuchProcess:
                continue
        return left
