"""Another local user against root's ray-ha, played for real (testkit/neighbour.py): as root the
neighbour is `nobody`; without root, ray-ha is the root of a user namespace and the neighbour's places
are another uid's directories there. Each test runs on a machine of its own (private /tmp and /run), so
the real default places are used: 0.2's /tmp/ray-ha and the new per-user run dir.

The attacks are the ones measured on 0.2: a run dir made first by the neighbour with links to a
root-owned file and to a path of its choice, and a pid file (flock held) naming a root process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Iterator

import pytest

from conftest import FAST_TIMING, ROOT, wait_for
from testkit.hosts import RigUnavailable
from testkit.neighbour import Neighbourhood, need_tools
from testkit.procs import kill_tree

#: A supervisor of 0.2: holds an flock on its pid file until SIGTERM (its command line is ray-ha's).
OLD_SUPERVISOR = """
import fcntl, signal, sys, time
pid_file = open(sys.argv[1], "w")
fcntl.flock(pid_file, fcntl.LOCK_EX)
pid_file.write(sys.argv[2] + "\\n")  # its text names someone else: only the kernel's answer counts
pid_file.flush()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture
def machine(tmp_path) -> Iterator[Neighbourhood]:
    try:
        need_tools()
        made = Neighbourhood(tmp_path)
    except RigUnavailable as exc:
        pytest.fail(f"cannot play another local user here: {exc}", pytrace=False)
    yield made
    made.close()


@pytest.fixture
def env(fake_ray_env) -> dict[str, str]:
    """ray-ha's environment on that machine: the fake `ray`, the default run dir, HA on."""
    base = {k: v for k, v in fake_ray_env.items() if k != "RAY_HA_RUN_DIR"}
    return {**base, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": "127.0.0.1:1"}


def ray_ha(machine: Neighbourhood, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`ray-ha ARGS` as ray-ha's user on `machine`: through its namespaces (machine.run), so with its private
    /tmp and /run and, without root, as the root of its user namespace. conftest.ray_ha runs ray-ha on this
    machine as the test's user, which is not the attack these tests play."""
    return machine.run([sys.executable, "-m", "raylaunch", *args], env=env, timeout=90)


@pytest.fixture
def victim(machine, env) -> Iterator[int]:
    """A process of ray-ha's user that nobody may signal through ray-ha."""
    proc = machine.popen(["sleep", "1000"], env=env)
    wait_for(lambda: _inner_pid(proc.pid, "sleep"), 10, what="the victim to start")
    yield _inner_pid(proc.pid, "sleep")
    end(proc)


def _inner_pid(outer: int, name: str) -> int:
    """The pid of `name` started through nsenter (itself, or its child when nsenter forked)."""
    import psutil

    top = psutil.Process(outer)
    for proc in (top, *top.children(recursive=True)):
        if proc.name() == name:
            return proc.pid
    return 0


def end(proc: subprocess.Popen) -> None:
    """kill -9 of what a test started inside, with everything under it (flock's command, say)."""
    kill_tree(proc.pid)
    proc.wait()


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize("place", ["sticky", "private"])
def test_a_run_dir_the_neighbour_prepared_is_refused_and_nothing_is_written_through_its_links(machine, env,
                                                                                              place):
    node = f"n{uuid.uuid4().hex[:8]}"
    machine.sh("echo keep me > /tmp/precious")  # ray-ha's user's own file
    shared = machine.neighbour_sticky_dir() if place == "sticky" else machine.neighbour_private_dir()
    planted = [f"{shared}/{node}.{suffix}" for suffix in ("pid", "tmp", "json", "json.tmp")]
    if place == "sticky":
        machine.sh(f"ln -s /tmp/precious {planted[0]} && ln -s /tmp/precious {planted[2]} && "
                   f"ln -s /tmp/new-path {planted[1]} && ln -s /tmp/new-path {planted[3]}", neighbour=True)
    try:
        result = ray_ha(machine, {**env, "RAY_HA_RUN_DIR": shared}, "start", "--head", f"--ha-node-name={node}",
                        "--port=0", "--block")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"ray-ha: error: unsafe directory {shared}: it is owned by uid "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert machine.path("/tmp/precious").read_text() == "keep me\n"
        assert not machine.path("/tmp/new-path").exists()
    finally:
        if place == "sticky" and not machine.as_root:  # the machine's own /var/tmp: take the links away
            machine.sh(f"rm -f {' '.join(planted)}")


def test_an_env_file_the_neighbour_left_in_the_working_directory_is_refused(machine, env):
    """ray-ha reads ./.env, which can set hooks it runs: one planted in a shared place must not be read."""
    shared = machine.neighbour_sticky_dir()
    env_file = f"{shared}/.env"
    if not machine.as_root and os.path.exists(env_file):
        pytest.fail(f"{env_file} exists already on this machine: cannot plant one there", pytrace=False)
    # Without root the neighbour is this user, so its file must differ by mode rather than by owner.
    loose = "" if machine.as_root else f" && chmod 666 {env_file}"
    machine.sh(f"echo 'RAY_HA_ON_ELECTED=touch /tmp/hooked' > {env_file}{loose}", neighbour=True)
    try:
        result = machine.run(["sh", "-c", f"cd {shared} && exec {sys.executable} -m raylaunch start --head --block"],
                             env=env, timeout=90)
        assert result.returncode == 2, result.stdout + result.stderr
        why = "is owned by uid 65534" if machine.as_root else "is writable by group or others"
        assert result.stderr.startswith(f"ray-ha: error: env file {env_file} {why}"), result.stderr
        assert not machine.path("/tmp/hooked").exists()
    finally:
        if not machine.as_root:
            machine.sh(f"rm -f {env_file}")


def test_the_default_run_dir_is_private_and_the_old_shared_one_is_left_alone(machine, env, redis_server):
    machine.sh("echo keep me > /tmp/precious")
    machine.sh("mkdir -m 1777 /tmp/ray-ha && ln -s /tmp/precious /tmp/ray-ha/a.pid && "
               "ln -s /tmp/new-path /tmp/ray-ha/a.tmp", neighbour=True)
    env = {**env, "RAY_REDIS_ADDRESS": redis_server.address}
    started = ray_ha(machine, env, "start", "--head", "--ha-node-name=a", "--port=0", *FAST_TIMING)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "ray-ha: leading as a (epoch 1)" in started.stdout
        run = machine.path("/run/ray-ha")
        assert (run.stat().st_uid, run.stat().st_mode & 0o777) == (os.geteuid(), 0o700)
        assert sorted(p.name for p in run.iterdir()) == ["a.json", "a.pid"]
        log_dir = machine.path("/tmp/ray/ray-ha")
        assert log_dir.stat().st_mode & 0o777 == 0o700 and (log_dir / "a.log").exists()
        health = ray_ha(machine, env, "health")
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        stopped = ray_ha(machine, env, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped the ray-ha supervisor of node a" in stopped.stdout
    assert machine.path("/tmp/precious").read_text() == "keep me\n"
    assert not machine.path("/tmp/new-path").exists()
    if machine.as_root:  # nobody's /tmp/ray-ha is 0.2's place: looked at for one release, under the checks
        assert "not looking for 0.2's supervisors: unsafe directory /tmp/ray-ha" in stopped.stderr


def test_stop_leaves_a_pid_file_the_neighbour_locked_alone(machine, env, victim):
    """0.2's measured attack: the neighbour makes /tmp/ray-ha (mode 1777), writes a pid of ray-ha's user
    into evil.pid and holds an flock on it."""
    machine.sh(f"mkdir -m 1777 /tmp/ray-ha && echo {victim} > /tmp/ray-ha/evil.pid", neighbour=True)
    holder = machine.popen(["flock", "/tmp/ray-ha/evil.pid", "sleep", "1000"], env=env, neighbour=True)
    try:
        wait_for(lambda: _inner_pid(holder.pid, "sleep"), 10, what="the neighbour's lock")
        result = ray_ha(machine, env, "stop")
        assert result.returncode == 0, result.stdout + result.stderr  # nothing of ours ran; `ray stop` ran
        why = "owned by uid 65534" if machine.as_root else "writable by group or others"
        assert f"not looking for 0.2's supervisors: unsafe directory /tmp/ray-ha: it is {why}" in result.stderr
        assert "stopped" not in result.stdout
        assert alive(victim) and holder.poll() is None, "neither the named pid nor the lock's holder was signalled"
    finally:
        end(holder)


def test_stop_signals_the_kernels_holder_only_when_it_is_a_supervisor_of_ours(machine, env, victim):
    """In a place that passes the checks (0.2's /tmp/ray-ha made by ray-ha's user): a lock held by a
    program that is not ray-ha is reported and left alone; a 0.2 supervisor is stopped by the pid the
    kernel names, whatever its file says."""
    machine.sh(f"mkdir -m 755 /tmp/ray-ha /tmp/bin && echo {victim} > /tmp/ray-ha/evil.pid")
    impostor = machine.popen(["flock", "/tmp/ray-ha/evil.pid", "sleep", "1000"], env=env)
    machine.path("/tmp/bin/ray-ha").write_text(OLD_SUPERVISOR)
    old = machine.popen([sys.executable, "/tmp/bin/ray-ha", "/tmp/ray-ha/old.pid", str(victim)], env=env,
                        stdout=subprocess.PIPE)
    try:
        assert old.stdout is not None and old.stdout.readline() == b"ready\n"
        wait_for(lambda: _inner_pid(impostor.pid, "sleep"), 10, what="the impostor's lock")
        result = ray_ha(machine, env, "stop")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "ray-ha: error: node evil: not signalled: held by pid" in result.stderr
        assert "which is not ray-ha" in result.stderr
        assert "ray-ha: stopped the ray-ha supervisor of node old (pid " in result.stdout
        assert old.wait(30) is not None, "the 0.2 supervisor got SIGTERM and exited"
        assert alive(victim) and impostor.poll() is None
        health = ray_ha(machine, env, "health", "--role", "any")
        assert health.returncode == 1 and "no ray-ha supervisor runs here" in health.stderr
    finally:
        end(impostor)
        end(old)


def test_the_repository_root_is_reachable_inside(machine):
    """The machine binds back what ray-ha runs from (the checkout, the interpreter)."""
    assert machine.run([sys.executable, "-c", "import raylaunch"], env={"PYTHONPATH": str(ROOT)}).returncode == 0
