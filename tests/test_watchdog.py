"""The watchdog: a frozen or killed launcher's head dies before its lease could pass to a standby.

The first tests drive the watchdog program directly, against a stand-in launcher whose tree holds a
child in its own session and a grandchild; the last ones freeze or kill a real launcher (fake ray,
real Redis) and check that its tree was dead before the standby started a head.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import fake_ray_events, tagged_processes, wait_for
from raylaunch.head import watchdog
from raylaunch.proc.tree import is_alive

STAND_IN = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"],
    start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


class StandIn:
    """A process shaped like a launcher: a head in its own session, with a child of its own."""

    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True, env=env)
        self.session = int(self.proc.stdout.readline())
        wait_for(lambda: len(self.tree()) == 2, 10, what="the stand-in's tree")
        self.dog = subprocess.Popen([sys.executable, "-S", "-E", watchdog.__file__, str(self.proc.pid)],
                                    stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def tree(self):
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                if p.status() != psutil.STATUS_ZOMBIE]

    def send(self, line):
        self.dog.stdin.write(line.encode() + b"\n")
        self.dog.stdin.flush()

    def arm(self, seconds):
        self.send(f"arm {self.session} {time.monotonic() + seconds:.6f}")

    def close(self):
        tree = self.tree() if self.proc.poll() is None else []
        for proc in (self.dog, self.proc):
            proc.kill()
            proc.wait()
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(tree, timeout=5)


@pytest.fixture
def stand_in(fake_ray_env):
    launcher = StandIn(fake_ray_env)
    yield launcher
    launcher.close()


def test_an_expired_deadline_kills_the_tree_and_says_so(stand_in):
    stand_in.arm(1.0)
    time.sleep(0.6)
    assert len(stand_in.tree()) == 2, "nothing is killed before the deadline"
    wait_for(lambda: not stand_in.tree(), 3, what="the tree killed at the deadline")
    assert stand_in.proc.poll() is None, "the launcher itself is left alone"
    stand_in.dog.stdin.close()
    assert stand_in.dog.wait(5) == 0
    assert b"no lease renewal confirmed in time" in stand_in.dog.stderr.read()


def test_each_renewal_pushes_the_deadline_back(stand_in):
    for _ in range(6):
        stand_in.arm(0.5)
        time.sleep(0.25)
    assert len(stand_in.tree()) == 2, "a launcher that keeps renewing keeps its head"


def test_disarmed_watchdog_kills_nothing_and_exits_with_the_launcher(stand_in):
    stand_in.arm(0.5)
    stand_in.send("disarm")
    time.sleep(1.0)
    assert len(stand_in.tree()) == 2
    stand_in.dog.stdin.close()
    assert stand_in.dog.wait(5) == 0
    assert len(stand_in.tree()) == 2, "a launcher that exits cleanly has already stopped its own tree"


def test_launcher_death_while_armed_kills_the_head_sid_at_once(stand_in):
    tree = stand_in.tree()
    stand_in.arm(60)
    stand_in.proc.kill()  # our end of the pipe stays open: close it as the launcher's death would
    stand_in.proc.wait()
    stand_in.dog.stdin.close()
    assert stand_in.dog.wait(5) == 0
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree), 3,
             what="the orphaned head session killed")


def test_fire_after_sits_between_the_renew_deadline_and_the_lease():
    dog = watchdog.Watchdog(renew_deadline=10, lease_duration=15, head_sid=lambda: None)
    try:
        assert 10 < dog.fire_after < 15
    finally:
        dog.close()
    assert dog.proc.returncode == 0


def test_a_dead_watchdog_is_replaced_at_the_next_report():
    from types import SimpleNamespace

    dog = watchdog.Watchdog(renew_deadline=10, lease_duration=15, head_sid=lambda: None)
    try:
        first = dog.proc
        first.kill()
        first.wait()
        dog(SimpleNamespace(lease_confirmed_at=None))  # disarmed: nothing can fire during the test
        assert dog.proc is not first and dog.proc.poll() is None
    finally:
        dog.close()
    assert dog.proc.returncode == 0


# -- with real launchers ---------------------------------------------------------------------------

def starts(env):
    return [e for e in fake_ray_events(env) if e["event"] == "start"]


def gcs_of(launcher):
    return launcher.named("gcs_server")[0]


def test_frozen_leader_tree_is_dead_before_the_standby_starts(launch, fake_ray_env, leak_guard):
    leader = launch("a")
    leader.wait_log("GCS serving")
    standby = launch("b")
    standby.wait_log("standing by")
    gcs = gcs_of(leader)
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        standby.wait_log("GCS serving", timeout=15)
        assert "watchdog" in leader.log() and "no lease renewal confirmed in time" in leader.log()
        assert not is_alive(gcs), "the frozen leader's GCS was killed (a zombie, or reaped by its ray start)"
        assert starts(fake_ray_env)[-1]["node"] == "b"
        assert starts(fake_ray_env)[-1]["others"] == [], "no process of epoch 1 lived when epoch 2 started"
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    assert leader.wait(15) != 0, "a thawed leader finds its head gone and exits"
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.wait(15) == 0
    assert tagged_processes(leak_guard) == []


def test_killed_launcher_takes_its_tree_with_it(launch, fake_ray_env, leak_guard):
    leader = launch("a")
    leader.wait_log("GCS serving")
    standby = launch("b")
    standby.wait_log("standing by")
    tree = leader.descendants()
    leader.proc.kill()
    leader.proc.wait()
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree), 3,
             what="the dead launcher's tree and watchdog gone")
    standby.wait_log("GCS serving", timeout=10)
    assert starts(fake_ray_env)[-1]["others"] == []
    standby.proc.send_signal(signal.SIGTERM)
    assert standby.wait(15) == 0
    assert tagged_processes(leak_guard) == []
