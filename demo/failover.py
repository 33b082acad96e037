"""ray-ha demo: a local Redis, two HA heads on this machine, the leader killed, the standby taking over.

Run: python demo/failover.py [--lease SECONDS]
Everything stays on loopback; everything it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raylaunch.store.lease import Keys  # noqa: E402
from testkit.localredis import LocalRedis  # noqa: E402

RECORD = Keys("ray-ha:default:leader").record
TAG = "RAY_HA_DEMO_TAG"
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {message}", flush=True)


def start_head(name: str, workdir: Path, env: dict, lease: float) -> subprocess.Popen:
    args = [sys.executable, "-m", "raylaunch", "start", "--head", "--port=0", "--num-cpus=1",
            "--include-dashboard=false", "--node-ip-address=127.0.0.2", f"--temp-dir={workdir / name}",
            "--disable-usage-stats", f"--ha-node-name={name}", f"--ha-lease-duration={lease}",
            f"--ha-renew-deadline={lease * 0.6}", f"--ha-retry-period={lease / 10}", "--ha-redis-timeout=1",
            "--block"]
    log = open(workdir / f"{name}.log", "wb")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_record(redis_client, epoch: int, timeout: float = 120) -> dict:
    """The leader record once the leader of `epoch` has its GCS serving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = redis_client.get(RECORD)
        if text and json.loads(text)["epoch"] == epoch:
            return json.loads(text)
        time.sleep(0.02)
    raise SystemExit(f"no leader with epoch {epoch} after {timeout}s; see the logs")


def drive(env: dict, address: str, action: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "demo" / "actor_driver.py"), address, action],
                         env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"driver failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_tree(pid: int) -> int:
    """kill -9 of a process and all its descendants at once; returns how many."""
    top = psutil.Process(pid)
    victims = [top, *top.children(recursive=True)]
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(victims)


def stop_all(heads: dict, tag: str) -> None:
    """SIGTERM the launchers (each stops its own tree), then SIGKILL anything of the demo's left."""
    for head in heads.values():
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
    for head in heads.values():
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            pass
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG) == tag:
                proc.kill()
        except psutil.Error:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=float, default=5.0, help="lease duration in seconds [5]")
    lease = parser.parse_args().lease
    workdir = Path(tempfile.mkdtemp(prefix="rha-demo-", dir="/tmp"))
    tag = workdir.name
    redis = LocalRedis(workdir).start()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, TAG: tag,
           "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": redis.address, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT), "RAY_HA_RUN_DIR": str(workdir / "run")}
    heads: dict = {}
    try:
        say(f"redis-server on {redis.address}; logs in {workdir}")
        heads["a"] = start_head("a", workdir, env, lease)
        first = wait_record(redis.client(), 1)
        heads["b"] = start_head("b", workdir, env, lease)
        say(f"{first['node']} leads (epoch 1), GCS serving at {first['gcs_address']}; b stands by")
        before = drive(env, first["gcs_address"], "create")
        say(f"detached actor 'counter' answered through {first['node']}: session {before['session']}")
        time.sleep(1.0)
        killed_at = time.monotonic()
        count = kill_tree(heads[first["node"]].pid)
        say(f"kill -9 of {first['node']}'s launcher and its whole tree ({count} processes)")
        second = wait_record(redis.client(), 2)
        took = time.monotonic() - killed_at
        say(f"{second['node']} leads (epoch 2), GCS serving at {second['gcs_address']}: "
            f"{took:.1f}s after the kill (lease {lease:g}s + head start)")
        after = drive(env, second["gcs_address"], "get")
        same = "unchanged" if after["session"] == before["session"] else "CHANGED"
        say(f"actor 'counter' answers through {second['node']}; session {same}")
    finally:
        say("stopping everything")
        stop_all(heads, tag)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
