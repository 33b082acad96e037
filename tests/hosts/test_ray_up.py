"""Ray 2.60's own `ray up` (local provider, over SSH) with the recipes in docs/, on rig hosts with sshd
(testkit/rayup.py): two head candidates, one follow-mode worker, Redis on its own host, lease 5 s. sshd, ssh
and rsync are the machine's, else Debian's fetched without root (testkit/sshtools.py): never a skip.

kill -9 of every process on the leader's machine: the standby leads, the worker keeps its raylet and its
detached actor, the new leader's autoscaler (given the old one's node list) leaves the worker alone, and a
third `ray up` brings the killed machine back as a standby. `ray down` of the leader's
YAML: the other candidate leads, the downed machine's supervisor stands by again (and `ray-ha status`
there finds Redis by itself). `ray-ha stop` on every machine leaves nothing of Ray or ray-ha.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import wait_for
from testkit.debian import Unavailable
from testkit.hostray import ServingDriver
from testkit.hosts import Rig
from testkit.rayup import RayUp

pytestmark = [pytest.mark.ray, pytest.mark.hosts]

LEASE = 5.0


@pytest.fixture
def ray_up(rig: Rig, tmp_path) -> RayUp:
    """The rig with sshd on its machines; fails with one line if ray is missing or sshd, ssh or rsync can be
    neither found nor fetched."""
    if shutil.which("ray") is None:
        pytest.fail("`ray` is needed: pip install 'ray[client]==2.60.0'", pytrace=False)
    try:
        return RayUp(rig, tmp_path, LEASE)
    except Unavailable as exc:
        why = str(exc)
    pytest.fail(why, pytrace=False)


def test_ray_up_with_a_hot_standby_survives_kill_9_of_the_leaders_machine_and_ray_down(ray_up: RayUp):
    out = ray_up.up("h1")
    assert "ray-ha: leading as h1 (epoch 1)" in out, out[-4000:]
    raylet = wait_for(lambda: ray_up.raylets("w1"), 180, interval=0.5, what="h1's autoscaler to start w1")
    # Until its setup has finished, w1 is rightly set up again by the next leader: wait for the end of it
    # in the list h1 keeps for the next leader.
    wait_for(lambda: ray_up.carried_status("w1") == "up-to-date", 120, interval=0.5, what="w1 up to date in Redis")
    out = ray_up.up("h2")
    assert "ray-ha: standing by; leader is h1 (epoch 1)" in out, out[-4000:]

    w1, h2_ip = ray_up.host("w1"), ray_up.host("h2").ip
    driver = ServingDriver(w1)
    try:
        first = driver.ask("worker-create")
        logins_before = ray_up.ssh.logins_from(w1, h2_ip)
        killed_at = time.monotonic()
        ray_up.host("h1").kill_all()
        wait_for(lambda: ray_up.leader() == "h2", 60, interval=0.1, what="h2 to lead")
        answer = driver.ask("worker-get")
        took = time.monotonic() - killed_at
        assert (answer["value"], answer["pid"], answer["node"]) == (2, first["pid"], first["node"]), answer
        assert ray_up.raylets("w1") == raylet, "w1's raylet is the one h1's autoscaler started"
        time.sleep(30)  # h2's autoscaler: time to "launch" w1 if it thought it must
        reruns = ray_up.ssh.logins_from(w1, h2_ip) - logins_before
        assert reruns == 0, "h1's node list was carried: h2's autoscaler knows w1 runs and leaves it alone"
        again = driver.ask("worker-get")
        assert (again["value"], again["pid"]) == (3, first["pid"]), again
        assert ray_up.raylets("w1") == raylet, "no worker was relaunched"

        ray_up.ssh.start(ray_up.host("h1"))  # the machine is back
        out = ray_up.up("h1")
        assert "ray-ha: standing by; leader is h2 (epoch 2)" in out, out[-4000:]

        ray_up.ray("down", yaml_of="h2")  # `ray stop` on h2 only
        wait_for(lambda: ray_up.leader() == "h1", 60, interval=0.1, what="h1 to lead after ray down of h2")
        after_down = driver.ask("worker-get")
        assert (after_down["value"], after_down["pid"]) == (4, first["pid"]), after_down
        assert ray_up.raylets("w1") == raylet, "ray down stopped no worker"
    finally:
        driver.close()
    status = ray_up.ray_ha("h2", "status", "--json")  # the environment there names no Redis
    assert status.returncode == 0, status.stdout + status.stderr
    view = json.loads(status.stdout)
    assert view["leader"]["node"] == "h1"
    assert [s["role"] for s in view["local"]] == ["standby"], "h2's supervisor outlived ray down and stands by"
    print(f"ray up, kill -9 of h1: w1's actor answered with its state {took:.1f}s after the kill; h2's "
          "autoscaler left w1 alone (no login); ray down of h2: h1 leads, h2 stands by again; same raylet and "
          f"actor throughout; fetched: {', '.join(ray_up.ssh.tools.fetched) or 'nothing'}")

    # The heads first (the standby, then the leader): a leader's autoscaler would start a stopped worker
    # again ("no recent heartbeat, restarting Ray to recover"), as it does after a stock `ray stop` there.
    for name in ("h2", "h1", "w1"):
        stopped = ray_up.ray_ha(name, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for name in ("w1", "h1", "h2"):
        try:
            wait_for(lambda: not ray_up.leftovers(name), 30, interval=0.5, what=f"nothing left on {name}")
        except pytest.fail.Exception:
            pytest.fail(f"still on {name} 30 s after ray-ha stop: {ray_up.leftovers(name)}")
