"""End to end with real Ray 2.60: two HA heads on this machine sharing one Redis.

Each head has its own --temp-dir, --port=0, one CPU, no dashboard and --node-ip-address=127.0.0.2.
A detached actor created through the leader must answer again after the standby takes over, in the
same Ray session (GCS fault tolerance resumes it from Redis).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import KEYS, TAG_VAR, Launcher, LaunchPad, ray_ha, tagged_processes, wait_for
from raylaunch.proc.net import split_host_port
from raylaunch.store.keys import Keys
from raylaunch.store.raysession import read_session_name
from raylaunch.store.keyspace import Keyspace
from testkit.localredis import free_port
from rediscluster import LocalCluster

pytestmark = pytest.mark.ray

KEY = KEYS.lease  # {ray-ha:default:leader}; the rest of the layout is KEY:<suffix>

DRIVER = Path(__file__).resolve().parent.parent / "demo" / "actor_driver.py"
#: The heads' and followers' timing here: a 5 s lease, short enough for a takeover within a test.
TIMING = ["--ha-lease-duration=5", "--ha-renew-deadline=3", "--ha-retry-period=0.5", "--ha-redis-timeout=1"]


@pytest.fixture
def ray_launch(redis_server, leak_guard, tmp_path):
    """Launchers running the real `ray` with short temp dirs (Ray's socket paths are length-limited)."""
    yield from ray_pad(redis_server.address, leak_guard, tmp_path)


def ray_pad(redis_address, leak_guard, tmp_path):
    """What ray_launch yields, for the Redis at `redis_address`."""
    if shutil.which("ray") is None:
        pytest.fail("real Ray is needed: pip install 'ray[default]==2.60.0'")
    short = Path(tempfile.mkdtemp(prefix="rha-", dir="/tmp"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
           TAG_VAR: leak_guard, "RAY_USAGE_STATS_ENABLED": "0", "RAY_HA_RUN_DIR": str(short / "run"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    pad = LaunchPad(env, tmp_path, redis_address, TIMING)

    def start(name, *args, **kw):
        return pad(name, "--port=0", "--num-cpus=1", "--include-dashboard=false",
                   "--node-ip-address=127.0.0.2", f"--temp-dir={short / name}", "--disable-usage-stats", *args,
                   **kw)

    start.env = env
    yield start
    pad.close()
    shutil.rmtree(short, ignore_errors=True)


def gcs_address(redis_server, key: str = KEY) -> str:
    return json.loads(redis_server.client().get(f"{key}:record"))["gcs_address"]


def drive(env, address: str, action: str) -> dict:
    result = subprocess.run([sys.executable, str(DRIVER), address, action], env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_crash_failover_resumes_the_session_and_the_actor(ray_launch, redis_server, leak_guard):
    leader = ray_launch("a")
    leader.wait_log("GCS serving", timeout=90)
    standby = ray_launch("b")
    standby.wait_log("standing by; leader is a", timeout=60)
    before = drive(ray_launch.env, gcs_address(redis_server), "create")
    assert before["value"] == 1

    killed_at = time.monotonic()
    leader.kill_tree()
    standby.wait_log("GCS serving", timeout=90)
    took = time.monotonic() - killed_at
    after = drive(ray_launch.env, gcs_address(redis_server), "get")
    assert after["session"] == before["session"], "the new head must resume the same session"
    assert after["value"] >= 1
    assert json.loads(redis_server.client().get(f"{KEY}:record"))["epoch"] == 2
    print(f"crash failover: kill -9 -> new GCS serving in {took:.1f}s (lease 5s)")

    # Plain `ray start --block` leaves ray::DashboardAgent and ray::RuntimeEnvAgent behind when its
    # GCS dies; ray-ha must leave nothing of the tree.
    gcs = standby.named("gcs_server")[0]
    gcs.kill()
    assert standby.wait(60) == 4
    survivors = tagged_processes(leak_guard)
    assert survivors == [], f"left behind: {[p.name() for p in survivors]}"
    assert redis_server.client().get(KEY) is None, "the lease is released once the tree is gone"


def test_crash_failover_on_a_one_shard_cluster_mode_redis(leak_guard, tmp_path):
    """As MemoryDB / ElastiCache in cluster mode give: Ray's GCS and ray-ha's lease on one shard."""
    cluster = LocalCluster(tmp_path / "cluster", shards=1).start()
    launches = ray_pad(cluster.address, leak_guard, tmp_path)
    ray_launch = next(launches)
    try:
        record = lambda: json.loads(cluster.nodes[0].client().get(KEYS.record) or "{}")  # noqa: E731
        leader = ray_launch("a")
        leader.wait_log("GCS serving", timeout=90)
        standby = ray_launch("b")
        standby.wait_log("standing by; leader is a", timeout=60)
        before = drive(ray_launch.env, record()["gcs_address"], "create")
        leader.kill_tree()
        standby.wait_log("GCS serving", timeout=90)
        after = drive(ray_launch.env, record()["gcs_address"], "get")
        assert after["session"] == before["session"] and record()["epoch"] == 2
        standby.proc.terminate()
        assert standby.wait(60) == 0
    finally:
        next(launches, None)  # the pad's own clean-up
        cluster.stop()
    assert tagged_processes(leak_guard) == []


#: read(2)'s number in /proc/<pid>/syscall, by machine (os.uname().machine).
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}


def waits_on_its_stdin(pid: int) -> bool:
    """Whether process `pid` is blocked in read(2) of its stdin (fd 0), as /proc/<pid>/syscall shows it: a
    warm interpreter does that once `from ray.scripts.scripts import main` is done (prewarm.serve)."""
    machine = os.uname().machine
    if machine not in READ_SYSCALL:
        pytest.fail(f"read(2)'s syscall number on {machine} is not known here: add it to READ_SYSCALL")
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except PermissionError as exc:
        pytest.fail(f"cannot see what the warm interpreter waits on: {exc}")
    except FileNotFoundError:
        pytest.fail(f"the warm interpreter (pid {pid}) is gone")
    return len(fields) > 1 and fields[0] == str(READ_SYSCALL[machine]) and int(fields[1], 16) == 0


def test_a_prewarmed_standby_becomes_the_head_in_its_waiting_interpreter(ray_launch, redis_server, leak_guard):
    """...and is handed the cluster's session name, read from the GCS's own key in Redis (a namespace of
    the user's choice here, as KubeRay sets), so Ray's head resumes it without reading it again."""
    namespace = {"RAY_external_storage_namespace": "ns-e2e"}
    leader = ray_launch("a", env=namespace)
    leader.wait_log("GCS serving", timeout=90)
    standby = ray_launch("b", "--ha-prewarm=on", env=namespace)
    standby.wait_log("standing by; leader is a", timeout=60)
    keys = Keys("ray-ha:ns-e2e:leader")  # ray-ha's lease follows the namespace too
    before = drive(ray_launch.env, gcs_address(redis_server, keys.lease), "create")
    store = Keyspace(redis_server.client(), keys)
    assert read_session_name(store, "ns-e2e") == before["session"], "ray-ha reads the key Ray's head reads"
    wait_for(lambda: any("prewarm.py" in " ".join(p.cmdline()) for p in standby.descendants()), 30,
             what="a warm interpreter")
    warm = next(p for p in standby.descendants() if "prewarm.py" in " ".join(p.cmdline()))
    wait_for(lambda: waits_on_its_stdin(warm.pid), 60,
             what="the warm interpreter to finish importing Ray's CLI and wait for its go line on stdin")

    killed_at = time.monotonic()
    leader.kill_tree()
    standby.wait_log("GCS serving", timeout=90)
    took = time.monotonic() - killed_at
    assert f"handed to the pre-warmed interpreter (pid {warm.pid}), resuming {before['session']}" in standby.log()
    gcs = standby.named("gcs_server")[0]
    assert warm.pid in [p.pid for p in gcs.parents()], "the warm interpreter runs the head's tree"
    host, port = split_host_port(redis_server.address)
    assert {f"--redis_address={host}", f"--redis_port={port}"} <= set(gcs.cmdline()), \
        "the pre-warmed head's GCS keeps its state in the cluster's Redis (GCS fault tolerance on)"
    after = drive(ray_launch.env, gcs_address(redis_server, keys.lease), "get")
    assert after["session"] == before["session"] and after["value"] >= 1, "the cluster's state, resumed"
    print(f"prewarmed crash failover: kill -9 -> new GCS serving in {took:.1f}s (lease 5s)")
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.wait(60) == 0
    assert tagged_processes(leak_guard) == []


def wrapper_ray(bin_dir: Path, calls: Path, marker: str) -> Path:
    """A site's `ray`: a shell script that logs "<pid> <args>" to `calls`, exports WRAPPED_RAY=<marker> and
    execs this interpreter's real Ray console script (so its pid becomes `ray`'s)."""
    real = Path(sys.executable).parent / "ray"
    if not real.is_file():
        pytest.fail(f"real Ray's console script is needed at {real}: pip install 'ray[default]==2.60.0'", pytrace=False)
    bin_dir.mkdir()
    wrapper = bin_dir / "ray"
    wrapper.write_text(f'#!/bin/sh\necho "$$ $*" >> {calls}\nexport WRAPPED_RAY={marker}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_a_wrapper_ray_is_not_prewarmed_and_the_takeover_head_runs_through_it(ray_launch, redis_server, leak_guard,
                                                                               tmp_path):
    """With --ha-prewarm auto a standby whose `ray` is a shell wrapper warns and starts cold: the new head's
    `ray start` is the wrapper's process, and its GCS has the wrapper's environment."""
    calls = tmp_path / "wrapper-calls.log"
    wrapper = wrapper_ray(tmp_path / "site-bin", calls, leak_guard)
    path = {"PATH": f"{wrapper.parent}{os.pathsep}{ray_launch.env['PATH']}"}
    leader = ray_launch("a", "--ha-prewarm=auto", env=path)
    leader.wait_log("GCS serving", timeout=90)
    standby = ray_launch("b", "--ha-prewarm=auto", env=path)
    standby.wait_log("standing by; leader is a", timeout=60)
    assert (f"--ha-prewarm auto: cannot tell which Python runs {wrapper}: its #! line (#!/bin/sh) names no Python "
            "alone, and it is not a pyenv shim: a wrapper, which pre-warming would bypass; a takeover starts it "
            "cold") in standby.log()
    time.sleep(2)  # a standby that pre-warms has spawned its interpreter by now
    assert not any("prewarm.py" in " ".join(p.cmdline()) for p in standby.descendants()), "no warm interpreter"

    leader.kill_tree()
    standby.wait_log("GCS serving", timeout=90)
    assert "pre-warmed interpreter" not in standby.log()
    gcs = standby.named("gcs_server")[0]
    assert gcs.environ().get("WRAPPED_RAY") == leak_guard, "the new head's GCS has the wrapper's environment"
    starts = {int(line.split()[0]) for line in calls.read_text().splitlines() if " start --head " in f"{line} "}
    assert starts & {p.pid for p in gcs.parents()}, "the new head's `ray start` is the wrapper's process"
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.wait(60) == 0
    assert tagged_processes(leak_guard) == []


def follower(ray_launch, redis_server, tmp_path, *args: str) -> Launcher:
    """Follow-mode worker `f` of real Ray (one CPU, a `pinned` resource, on 127.0.0.2) with the heads' timing."""
    return Launcher("f", ["--ha-follow", "--ha-node-name=f", *TIMING, "--num-cpus=1", '--resources={"pinned": 1}',
                          "--node-ip-address=127.0.0.2", "--disable-usage-stats", *args, "--block"],
                    {**ray_launch.env, "RAY_REDIS_ADDRESS": redis_server.address}, tmp_path)


def test_a_follower_rejoins_the_new_leader_and_its_pinned_task_runs_again(ray_launch, redis_server, leak_guard,
                                                                          tmp_path):
    leader = ray_launch("a")
    leader.wait_log("GCS serving", timeout=90)
    standby = ray_launch("b")
    standby.wait_log("standing by; leader is a", timeout=60)
    worker = follower(ray_launch, redis_server, tmp_path, "--ha-relay=off")
    try:
        worker.wait_log("joining leader a (epoch 1)", timeout=30)
        before = drive(ray_launch.env, gcs_address(redis_server), "pinned")

        killed_at = time.monotonic()
        leader.kill_tree()
        worker.wait_log("joining leader b (epoch 2)", timeout=90)
        after = drive(ray_launch.env, gcs_address(redis_server), "pinned")
        took = time.monotonic() - killed_at
        assert after["session"] == before["session"]
        assert after["node"] != before["node"], "the task ran on the follower's new raylet"
        assert took < 5 + 10 + 30, f"re-join took {took:.1f}s (lease 5 s + head start + 30 s bound)"
        print(f"follower re-join: kill -9 of the leader -> pinned task ran on the follower in {took:.1f}s")
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.proc.poll() is None:
            worker.kill_tree()


def test_a_follower_keeps_its_worker_when_the_new_leader_serves_at_the_same_address(ray_launch, redis_server,
                                                                                     tmp_path):
    """Both heads on one fixed port of 127.0.0.2 stand in for a VIP: the worker's raylet reconnects by itself."""
    port = free_port()
    leader = ray_launch("a", f"--port={port}")
    leader.wait_log("GCS serving", timeout=90)
    standby = ray_launch("b", f"--port={port}")
    standby.wait_log("standing by; leader is a", timeout=60)
    worker = follower(ray_launch, redis_server, tmp_path)
    try:
        worker.wait_log("joining leader a (epoch 1)", timeout=30)
        before = drive(ray_launch.env, gcs_address(redis_server), "pinned")
        raylet = worker.named("raylet")[0]
        leader.kill_tree()
        worker.wait_log("the worker stays", timeout=90)
        after = drive(ray_launch.env, gcs_address(redis_server), "pinned")
        assert after["node"] == before["node"], "the same raylet, reconnected by Ray's GCS fault tolerance"
        assert raylet.is_running() and "restarting the worker" not in worker.log()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.proc.poll() is None:
            worker.kill_tree()


def test_sigterm_hands_over_without_waiting_for_the_lease(ray_launch, redis_server, leak_guard):
    long_lease = ["--ha-lease-duration=60", "--ha-renew-deadline=20", "--ha-retry-period=5",
                  "--ha-redis-timeout=2"]
    leader = ray_launch("a", timing=long_lease)
    leader.wait_log("GCS serving", timeout=90)
    standby = ray_launch("b", timing=long_lease)
    standby.wait_log("standing by", timeout=60)
    before = drive(ray_launch.env, gcs_address(redis_server), "create")

    t0 = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    standby.wait_log("GCS serving", timeout=90)
    took = time.monotonic() - t0
    assert leader.wait(30) == 0
    assert took < 20, f"handover took {took:.1f}s: the standby waited for the 60 s lease"
    after = drive(ray_launch.env, gcs_address(redis_server), "get")
    assert after["session"] == before["session"]
    print(f"graceful handover: SIGTERM -> new GCS serving in {took:.1f}s (lease 60s)")
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.wait(60) == 0
    assert tagged_processes(leak_guard) == []


def test_non_block_start_health_and_stop_with_real_ray(redis_server, leak_guard, tmp_path):
    """`ray up` style: start returns once the real head serves, the probe passes, `ray-ha stop` cleans up."""
    short = Path(tempfile.mkdtemp(prefix="rha-", dir="/tmp"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, TAG_VAR: leak_guard,
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_HA_RUN_DIR": str(short / "run"), "RAY_ENABLE_HEAD_HA": "1",
           "RAY_REDIS_ADDRESS": redis_server.address, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    try:
        started = ray_ha("start", "--head", "--port=0", "--num-cpus=1", "--include-dashboard=false",
                         "--node-ip-address=127.0.0.2", f"--temp-dir={short / 'a'}", "--disable-usage-stats",
                         "--ha-node-name=a", env=env, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Ray runtime started" in started.stdout and "ray-ha: leading as a (epoch 1)" in started.stdout
        health = ray_ha("health", env=env, timeout=30)
        assert health.returncode == 0, health.stdout + health.stderr
        stopped = ray_ha("stop", env=env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped the ray-ha supervisor of node a" in stopped.stdout
        assert redis_server.client().get(KEY) is None
        assert tagged_processes(leak_guard) == []
    finally:
        ray_ha("stop", env=env, timeout=120)
        shutil.rmtree(short, ignore_errors=True)


def test_acl_fence_locks_a_stale_gcs_out_of_redis(ray_launch, redis_server, leak_guard):
    """A leader whose launcher and watchdog are frozen leaves a live GCS of epoch 1 behind; the next
    leader's fence cuts it off Redis for good, so it exits, and the new head serves."""
    import psutil

    old = ray_launch("a", "--ha-fence=acl")
    old.wait_log("GCS serving", timeout=90)
    clients = redis_server.client().execute_command("CLIENT", "LIST")
    assert f"user={KEYS.gcs_user_prefix}1" in clients, "the GCS talks to Redis as its epoch's user"
    stale_gcs = old.named("gcs_server")[0]
    dog = next(p for p in old.descendants() if any(a.endswith("watchdog.py") for a in p.cmdline()))
    frozen = [dog, psutil.Process(old.pid)]
    for proc in frozen:
        proc.suspend()
    try:
        new = ray_launch("b", "--ha-fence=acl")
        new.wait_log(f"older GCS users removed: {KEYS.gcs_user_prefix}1", timeout=60)
        fenced_at = time.monotonic()
        psutil.wait_procs([stale_gcs], timeout=30)
        assert not stale_gcs.is_running() or stale_gcs.status() == psutil.STATUS_ZOMBIE, \
            "the fenced GCS could not reach Redis and exited"
        print(f"stale GCS exited {time.monotonic() - fenced_at:.1f}s after the fence went up")
        assert f"user={KEYS.gcs_user_prefix}1" not in redis_server.client().execute_command("CLIENT", "LIST")
        new.wait_log("GCS serving", timeout=90)
        assert f"user={KEYS.gcs_user_prefix}2" in redis_server.client().execute_command("CLIENT", "LIST")
    finally:
        for proc in frozen:
            proc.resume()
    assert old.wait(60) in (3, 4), "thawed, the old leader finds its head gone and gives up"
    new.proc.terminate()
    assert new.wait(60) == 0
    assert tagged_processes(leak_guard) == []
