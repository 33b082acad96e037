"""ray-ha and Ray laid out on rig hosts: a Redis host, head candidates, follow-mode workers, a driver.

Used by the end-to-end tests on hosts, the chaos harness's hosts mode and the bench. Every address is a
rig address (testkit.hosts), every process runs on a host, so closing the rig stops all of it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional, Sequence

import psutil

from testkit.hosts import Host, HostProcess
from testkit.localredis import redis_server_binary, server_major
from testkit.procs import TAG_VAR
from testkit.published import published_gcs_addresses

ROOT = Path(__file__).resolve().parent.parent
REDIS_PORT = 6379
GCS_PORT = 6380
CLIENT_PORT = 10001  # Ray Client, for the driver host
DRIVER = ROOT / "demo" / "actor_driver.py"
DASHBOARD_PORT = 8265
#: A head's dashboard on, reachable from other hosts (Ray Jobs are submitted and read through it).
DASHBOARD = ("--include-dashboard=true", "--dashboard-host=0.0.0.0")

#: Runs Redis commands given as JSON lines on stdin; prints each reply (or {"error": ...}) as a JSON line.
#: Never retried (a retried DEBUG SLEEP would stall Redis again), and given time for a DEBUG SLEEP.
_PROBE = """
import json, sys, redis
from redis.backoff import NoBackoff
from redis.retry import Retry
client = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), decode_responses=True, socket_timeout=30,
                     socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
for line in sys.stdin:
    try:
        reply = client.execute_command(*json.loads(line))
    except Exception as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(reply), flush=True)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without RAY_* settings (but a test's leak-guard tag), with the checkout
    importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FAKE_RAY_")) or k == TAG_VAR}
    # GRPC_ENABLE_FORK_SUPPORT=0: with grpcio's fork handlers, the head's Ray Client proxy crashed forking
    # a client's server (grpcio 1.85.1: "Check failed: next_worker->state == KICKED").
    env.update({"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "GRPC_ENABLE_FORK_SUPPORT": "0",
                **extra})
    return env


class HostRedis:
    """redis-server on a host's storage address with an fsync-always AOF; `command` asks it from that host."""

    def __init__(self, host: Host, workdir: Path, binary: Optional[str] = None,
                 env: Optional[dict[str, str]] = None) -> None:
        self.host, self.workdir = host, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary, self.env = binary or redis_server_binary(), env
        self.server: Optional[HostProcess] = None
        self._probe: Optional[HostProcess] = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host.storage_ip}:{REDIS_PORT}"

    def start(self, timeout: float = 15) -> "HostRedis":
        """Start redis-server (on the AOF it already has, if any) and wait until it answers."""
        argv = [self.binary, "--bind", self.host.storage_ip, "--port", str(REDIS_PORT), "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        if server_major(self.binary, self.env) >= 7:  # DEBUG SLEEP stands in for a stalled Redis
            argv += ["--enable-debug-command", "yes"]
        env = {**os.environ, **self.env} if self.env else None
        with open(self.workdir / "redis.log", "ab") as out:
            self.server = self.host.popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.command("PING") is True:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not come up on {self.address}")

    def kill(self) -> None:
        """kill -9 of redis-server (the AOF keeps every acknowledged write)."""
        if self.server and self.server.poll() is None:
            self.server.kill()
            self.server.wait(10)

    def command(self, *args: str):
        """One Redis command run from the Redis host; the reply, or {"error": ...}."""
        with self._lock:
            if self._probe is None or self._probe.poll() is not None:
                self._probe = self.host.popen([sys.executable, "-c", _PROBE, self.host.storage_ip, str(REDIS_PORT)],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env())
            self._probe.proc.stdin.write((json.dumps(args) + "\n").encode())
            self._probe.proc.stdin.flush()
            return json.loads(self._probe.proc.stdout.readline() or b'{"error": "probe died"}')

    def published(self) -> list[str]:
        """Every GCS address ray-ha published here (records, history, heartbeats)."""
        return published_gcs_addresses(self.command)

    def record(self, key: str = "ray-ha:default:leader") -> dict:
        """The leader record ray-ha keeps (empty if none)."""
        raw = self.command("GET", "{%s}:record" % key)
        return json.loads(raw) if isinstance(raw, str) else {}


class HostLauncher:
    """`ray-ha start ARGS --block` on a host, its output appended to `log_path`. With `restart`, a shell
    loop starts it again a second after it exits, as systemd's Restart=always would."""

    def __init__(self, host: Host, args: Sequence[str], env: dict[str, str], log_path: Path,
                 restart: bool = False) -> None:
        self.host, self.log_path = host, Path(log_path)
        argv = [sys.executable, "-m", "raylaunch", "start", *args, "--block"]
        if restart:
            argv = ["sh", "-c", 'while :; do "$@"; echo "[restart] exited $?"; sleep 1; done',
                    "restart-always", *argv]
        with open(self.log_path, "ab") as out:
            self.process = host.popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=str(ROOT))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float, since: int = 0) -> None:
        """Wait until `text` appears in the log after character `since`; AssertionError with the log if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[since:]:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.host.name}: no {text!r} within {timeout}s:\n{self.log()[-4000:]}")


def head_args(host: Host, *extra: str) -> list[str]:
    """`ray-ha start --head` arguments for a head candidate on `host` (one CPU, no dashboard)."""
    return ["--head", f"--port={GCS_PORT}", f"--node-ip-address={host.ip}", "--num-cpus=1",
            "--include-dashboard=false", "--disable-usage-stats", *extra]


def worker_args(host: Host, *extra: str) -> list[str]:
    """`ray-ha start --ha-follow` arguments for a worker on `host` with the custom resource `pinned`."""
    return ["--ha-follow", f"--node-ip-address={host.ip}", "--num-cpus=1", '--resources={"pinned": 1}',
            "--disable-usage-stats", *extra]


def drive(host: Host, head_ip: str, action: str, timeout: float = 180) -> dict:
    """Run demo/actor_driver.py on `host` through Ray Client at `head_ip`; its JSON answer."""
    return drive_at(host, f"ray://{head_ip}:{CLIENT_PORT}", action, timeout)


def drive_at(host: Host, address: str, action: str, timeout: float = 180) -> dict:
    """Run demo/actor_driver.py on `host` at `address` (`auto`: the host's own Ray); its JSON answer."""
    result = host.run([sys.executable, str(DRIVER), address, action], timeout=timeout, check=False, env=clean_env())
    if result.returncode != 0:
        raise AssertionError(f"driver {action} at {address} exited {result.returncode}:\n{result.stderr[-6000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_line(stream: IO[bytes], timeout: float, start: bytes = b"") -> bytes:
    """The first line on `stream` that starts with `start` within `timeout` (Ray may print other lines
    first), stripped; b"" if none (or the stream ended)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([stream], [], [], max(0.0, end - time.monotonic()))
        line = stream.readline() if ready else b""
        if not line:
            return b""
        if line.startswith(start):
            return line.strip()
    return b""


def read_json_line(stream: IO[bytes], timeout: float) -> dict:
    """The first JSON object line on `stream` within `timeout`; {} if none."""
    line = read_line(stream, timeout, b"{")
    return json.loads(line) if line else {}


class ServingDriver:
    """demo/actor_driver.py `serve` on `host`, connected once at `address` (`auto`: this node's Ray, as
    `ray.init("auto")` finds it) and kept: `ask` runs one action in that same driver."""

    def __init__(self, host: Host, address: str = "auto") -> None:
        self.host = host
        self.process = host.popen([sys.executable, str(DRIVER), address, "serve"], env=clean_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def ask(self, action: str, timeout: float = 180) -> dict:
        """The driver's answer to `action`; AssertionError if it errs, dies or says nothing in time."""
        proc = self.process.proc
        proc.stdin.write((action + "\n").encode())
        proc.stdin.flush()
        answer = read_json_line(proc.stdout, timeout) or {
            "error": f"no answer within {timeout}s (driver alive: {self.process.poll() is None})"}
        if "error" in answer:
            raise AssertionError(f"driver on {self.host.name}, {action}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Life:
    """One process seen by a ProcessWatch: where, since when (its start, wall clock), and when it was
    first seen gone (None: still alive at the last look)."""

    host: str
    pid: int
    started: float
    gone: Optional[float] = None


def started_at(pid: int) -> float:
    """When process `pid` started, on the wall clock, to the kernel's tick (10 ms).

    Not psutil's create_time: that adds the boot time in whole seconds (/proc/stat's btime), so it can
    be up to a second early against time.time(), enough to make a successor seem to start first.
    """
    with open(f"/proc/{pid}/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "pid (comm)"
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


class ProcessWatch:
    """Polls the hosts every 20 ms for processes named `name` and keeps when each lived, so a test can
    judge by process life (not logs) that one host's head died before another's started."""

    def __init__(self, hosts: Sequence[Host], name: str = "gcs_server", interval: float = 0.02) -> None:
        self.hosts, self.name, self.interval = list(hosts), name, interval
        self.lives: dict[int, Life] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            self._stop.wait(self.interval)

    def look(self) -> None:
        for host in self.hosts:
            seen: set[int] = set()
            for proc in host.processes():
                try:
                    if proc.name() == self.name:
                        seen.add(proc.pid)
                        if proc.pid not in self.lives:
                            self.lives[proc.pid] = Life(host.name, proc.pid, started_at(proc.pid))
                except (psutil.Error, OSError):
                    continue
            stamp = time.time()  # what this host's listing missed was gone by now
            for life in self.lives.values():
                if life.host == host.name and life.gone is None and life.pid not in seen:
                    life.gone = stamp

    def on(self, host: str) -> list[Life]:
        return sorted((life for life in self.lives.values() if life.host == host), key=lambda life: life.started)

    def alive(self) -> list[Life]:
        return [life for life in self.lives.values() if life.gone is None]

    def overlaps(self) -> list[tuple[Life, Life]]:
        """Pairs of processes on different hosts whose lives may have overlapped (a later one started
        before the earlier one was seen gone)."""
        lives = sorted(self.lives.values(), key=lambda life: life.started)
        return [(a, b) for i, a in enumerate(lives) for b in lives[i + 1:]
                if a.host != b.host and (a.gone is None or b.started < a.gone)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.look()



#: Lists the node table of the GCS at argv[1] as JSON: [{"ip", "alive", "head", "death"}], through the GCS's
#: own GetAllNodeInfo call (not ray-ha's code).
_NODES = """
import json, sys, grpc
from ray.core.generated import gcs_pb2, gcs_service_pb2 as pb, gcs_service_pb2_grpc as rpc
nodes = rpc.NodeInfoGcsServiceStub(grpc.insecure_channel(sys.argv[1])).GetAllNodeInfo(
    pb.GetAllNodeInfoRequest(), timeout=10).node_info_list
print(json.dumps([{"ip": n.node_manager_address, "alive": n.state == gcs_pb2.GcsNodeInfo.ALIVE,
                   "head": n.is_head_node, "death": n.death_info.reason_message} for n in nodes]))
"""


def gcs_nodes(host: Host, gcs_address: str) -> list[dict]:
    """The node table of the GCS at `gcs_address`, asked from `host`."""
    result = host.run([sys.executable, "-c", _NODES, gcs_address], env=clean_env(), timeout=60)
    return json.loads(result.stdout.strip().splitlines()[-1])
