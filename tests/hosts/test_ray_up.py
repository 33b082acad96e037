"""Ray 2.60's own `ray up` (local provider, over SSH) with the recipes in docs/, on rig hosts with sshd
(testkit/rayup.py): two head candidates, one follow-mode worker, Redis on its own host, lease 5 s. sshd, ssh
and rsync are the machine's, else Debian's fetched without root (testkit/sshtools.py): never a skip.

The table of docs/ray-up.md, row by row: kill -9 of every process on the leader's machine (the standby
leads, the worker keeps its raylet and its detached actor, the new leader's autoscaler, given the old one's
node list, leaves the worker alone) and `ray up` again; `ray up` again on the leader; `ray down` of the
leader and of a standby (the machine runs nothing of Ray or ray-ha); `ray exec ... 'ray-ha stop'`; the
whole cluster down. `ray exec` of `ray-ha status` (which finds Redis by itself there) on each YAML after
each step.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Optional

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


def exec_status(ray_up: RayUp, head: str) -> Optional[dict]:
    """`ray exec <head's yaml> 'ray-ha status --json'`: the view, or None when Ray's launcher finds no head
    for that YAML (one downed)."""
    result = ray_up.exec(head, "ray-ha status --json")
    out = result.stdout + result.stderr
    if "not found" in out and "Head node of cluster" in out:
        assert result.returncode != 0, out[-3000:]
        return None
    assert result.returncode in (0, 1), out[-4000:]
    lines = result.stdout.splitlines()
    try:  # `status --json` prints a lone "{" ... "}" among ray exec's own lines
        return json.loads("\n".join(lines[lines.index("{"):lines.index("}") + 1]))
    except ValueError:
        pytest.fail(f"no status JSON in ray exec's output:\n{out[-4000:]}")


def walks(ray_up: RayUp, leader: str, standbys: list[str], downed: tuple[str, ...] = ()) -> None:
    """After a step: `ray exec` of `ray-ha status` on each YAML says who leads and who stands by, and
    fails (no head recorded) on the downed ones, as the table in docs/ray-up.md says."""
    for head in ("h1", "h2"):
        view = exec_status(ray_up, head)
        if head in downed:
            assert view is None, f"ray exec on {head}'s downed YAML reached it: {view}"
            continue
        assert view is not None, f"ray exec on {head}'s YAML found no head"
        assert view["leader"]["node"] == leader, view
        assert sorted(s["node"] for s in view["standbys"]) == standbys, view


def out_of_it(ray_up: RayUp, name: str, within: float = 60) -> None:
    """Machine `name` runs nothing of Ray or ray-ha (its sshd aside) within `within` seconds."""
    try:
        wait_for(lambda: not ray_up.leftovers(name), within, interval=0.5, what=f"nothing left on {name}")
    except pytest.fail.Exception:
        pytest.fail(f"still on {name}: {ray_up.leftovers(name)}")


def test_every_row_of_the_ray_up_table_as_written(ray_up: RayUp):
    """The table in docs/ray-up.md, row by row: ray up of both YAMLs, kill -9 of the leader's machine and
    ray up again, ray up again on the leader, ray down of the leader and of a standby, ray exec 'ray-ha
    stop', the whole cluster down; `ray exec` of `ray-ha status` on each YAML after each step. w1's actor
    carries on throughout, on the raylet h1's autoscaler started."""
    out = ray_up.up("h1")
    assert "ray-ha: leading as h1 (epoch 1)" in out, out[-4000:]
    raylet = wait_for(lambda: ray_up.raylets("w1"), 180, interval=0.5, what="h1's autoscaler to start w1")
    # Until its setup has finished, w1 is rightly set up again by the next leader: wait for the end of it
    # in the list h1 keeps for the next leader.
    wait_for(lambda: ray_up.carried_status("w1") == "up-to-date", 120, interval=0.5, what="w1 up to date in Redis")
    out = ray_up.up("h2")
    assert "ray-ha: standing by; leader is h1 (epoch 1)" in out, out[-4000:]
    walks(ray_up, "h1", ["h2"])

    w1, h2_ip = ray_up.host("w1"), ray_up.host("h2").ip
    driver = ServingDriver(w1)
    count = 1
    try:
        first = driver.ask("worker-create")

        def carries_on() -> None:
            nonlocal count
            count += 1
            answer = driver.ask("worker-get")
            assert (answer["value"], answer["pid"], answer["node"]) == (count, first["pid"], first["node"]), answer
            assert ray_up.raylets("w1") == raylet, "w1's raylet is the one h1's autoscaler started"

        # kill -9 of the leader's machine
        logins_before = ray_up.ssh.logins_from(w1, h2_ip)
        killed_at = time.monotonic()
        ray_up.host("h1").kill_all()
        wait_for(lambda: ray_up.leader() == "h2", 60, interval=0.1, what="h2 to lead")
        carries_on()
        took = time.monotonic() - killed_at
        time.sleep(30)  # h2's autoscaler: time to "launch" w1 if it thought it must
        reruns = ray_up.ssh.logins_from(w1, h2_ip) - logins_before
        assert reruns == 0, "h1's node list was carried: h2's autoscaler knows w1 runs and leaves it alone"
        carries_on()
        ray_up.ssh.start(ray_up.host("h1"))  # the machine is back
        out = ray_up.up("h1")
        assert "ray-ha: standing by; leader is h2 (epoch 2)" in out, out[-4000:]
        walks(ray_up, "h2", ["h1"])

        # ray up again on the leader: it hands over and stands by
        out = ray_up.up("h2")
        assert "ray-ha: standing by; leader is h1 (epoch 3)" in out, out[-4000:]
        carries_on()
        walks(ray_up, "h1", ["h2"])

        # ray down of the leader: its machine runs nothing, the standby leads
        ray_up.ray("down", yaml_of="h1")
        wait_for(lambda: ray_up.leader() == "h2", 60, interval=0.1, what="h2 to lead after ray down of h1")
        out_of_it(ray_up, "h1")
        carries_on()
        walks(ray_up, "h2", [], downed=("h1",))
        out = ray_up.up("h1")
        assert "ray-ha: standing by; leader is h2 (epoch 4)" in out, out[-4000:]
        walks(ray_up, "h2", ["h1"])

        # ray down of a standby: its machine runs nothing, the leader carries on
        ray_up.ray("down", yaml_of="h1")
        out_of_it(ray_up, "h1")
        assert ray_up.leader() == "h2" and ray_up.redis.record()["epoch"] == 4
        walks(ray_up, "h2", [], downed=("h1",))
        out = ray_up.up("h1")
        assert "ray-ha: standing by; leader is h2 (epoch 4)" in out, out[-4000:]

        # ray exec 'ray-ha stop': the same, and the launcher still reaches the machine
        stopped = ray_up.exec("h1", "ray-ha stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        out_of_it(ray_up, "h1")
        reached = ray_up.exec("h1", "ray-ha status")  # the launcher still reaches it; no supervisor there says
        assert "RAY_REDIS_ADDRESS is not set" in reached.stdout + reached.stderr, reached.stdout + reached.stderr
        view = exec_status(ray_up, "h2")
        assert view is not None and view["leader"]["node"] == "h2" and view["standbys"] == [], view
        carries_on()
    finally:
        driver.close()
    print(f"ray up: kill -9 of h1, w1's actor answered with its state {took:.1f}s after it (lease {LEASE:g}s); "
          "h2's autoscaler left w1 alone; ray up again on the leader, ray down of the leader and of a standby, "
          "ray exec 'ray-ha stop': each as the table says, same raylet and actor throughout; fetched: "
          f"{', '.join(ray_up.ssh.tools.fetched) or 'nothing'}")

    whole_cluster_down(ray_up, "h1", "h2")

    # The cluster started again: Redis keeps the session and the node list, but w1 runs no follower, so
    # h1's autoscaler starts it at once rather than wait for a heartbeat that never comes.
    out = ray_up.up("h1")
    serving_at = time.monotonic()
    assert "ray-ha: leading as h1" in out, out[-4000:]
    wait_for(lambda: ray_up.raylets("w1"), 30, interval=0.5, what="w1 started again within 30 s of h1 serving")
    started = time.monotonic() - serving_at
    out = ray_up.up("h2")
    assert "ray-ha: standing by; leader is h1" in out, out[-4000:]
    resumed = ray_up.exec("h1", "grep -h 'resuming session' /tmp/ray/ray-ha/*.log")
    assert "resuming session session_" in resumed.stdout, resumed.stdout + resumed.stderr
    print(f"ray up after the whole cluster was down: w1's raylet {started:.1f}s after h1 served")
    whole_cluster_down(ray_up, "h2", "h1")


def whole_cluster_down(ray_up: RayUp, standby: str, leader: str) -> None:
    """The table's last row: `ray down` of the standby's YAML, then of the leader's; the worker leaves by
    itself once its reconnect timeout (lease + 45 s) has passed with nobody leading. No SSH."""
    ray_up.ray("down", yaml_of=standby)
    ray_up.ray("down", yaml_of=leader)
    down_at = time.monotonic()
    out_of_it(ray_up, standby)
    out_of_it(ray_up, leader)
    assert exec_status(ray_up, standby) is None and exec_status(ray_up, leader) is None
    out_of_it(ray_up, "w1", within=LEASE + 45 + 60)
    print(f"whole cluster down: w1 ran nothing {time.monotonic() - down_at:.1f}s after the last ray down")
