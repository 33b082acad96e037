"""What a user runs, across a failover on the rig's hosts with real Ray 2.60: Ray Serve (its data plane on a
worker, its controller on the head), Ray Jobs, the dashboard and Ray Client drivers, reached through a
standby's address.

The cluster is tests/conftest.py's: Redis on r1, h1 leading, h2 standing by, w1 following through its relay,
a lease of 5 s. Faults are kill -9 of every process on the leader's machine, or its links cut.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import HOSTS_LEASE as LEASE
from conftest import Cluster, named, wait_for

from testkit.hostray import CLIENT_PORT, DASHBOARD_PORT, ServingDriver, drive, drive_at
from testkit.jobs import jobs
from testkit.serving import PORT, HttpLoad, ServeWatch, serve_app

pytestmark = [pytest.mark.ray, pytest.mark.hosts]


@pytest.fixture(scope="module", autouse=True)
def ray_extras() -> None:
    """Serve, the dashboard and the Jobs client are Ray extras (the e2e extra has them): fail, never skip.
    Checked in a child, so Serve's import warnings stay out of this process."""
    check = "import ray.serve.api, ray.dashboard.optional_deps, ray.job_submission"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["?"])[-1]
        pytest.fail(f"ray[serve] and ray[default] are needed: pip install -e '.[e2e]' ({why})", pytrace=False)


def worker_ready(cluster: Cluster) -> None:
    """w1's node has joined: its raylet runs and `ray.init("auto")` there finds it."""
    w1 = cluster.rig.hosts["w1"]
    wait_for(lambda: named(w1.processes(), "raylet"), 90, what="w1's raylet")
    drive_at(w1, "auto", "pinned")


def fault(cluster: Cluster, how: str) -> None:
    h1 = cluster.head("h1")
    h1.kill_all() if how == "kill -9" else h1.cut()


@pytest.mark.parametrize("how", ["kill -9", "cut"])
def test_serve_answers_every_request_through_a_failover(cluster: Cluster, tmp_path, how: str):
    """A Serve replica and a proxy on w1, an HTTP client on w1 calling that proxy every 50 ms: through the
    fault no request fails and the same replica process answers with its count going on; Serve's
    controller (on the head) is back on h2 and says the app runs; a redeploy afterwards reaches the
    traffic."""
    w1 = cluster.rig.hosts["w1"]
    worker_ready(cluster)
    assert serve_app(w1, "auto", "deploy", "v1")["status"].endswith("RUNNING")
    load = HttpLoad(w1, f"http://{w1.ip}:{PORT}/", tmp_path / "load.jsonl")
    watch = ServeWatch(w1)
    try:
        time.sleep(2)
        fault_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        fault(cluster, how)
        watch.go()
        cluster.heads["h2"].wait_log("GCS serving", timeout=90)
        back = watch.result()
        assert "running" in back, f"Serve's controller never said the app runs through h2: {back}"
        running = back["running"] - fault_at
        time.sleep(2)
        serve_app(w1, "auto", "deploy", "v2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(a.version == "v2" for a in load.answers()):
            time.sleep(0.2)
    finally:
        watch.close()
        answers = load.stop()
    failed = [a for a in answers if not a.ok]
    v1 = [a for a in answers if a.ok and a.version == "v1"]
    through = [a for a in v1 if a.t > fault_at]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, first: {failed[0]}"
    assert through and through[-1].t > fault_at + running, "requests were answered through the whole failover"
    assert len({a.pid for a in v1}) == 1, "the same replica process answered before and after"
    assert [a.count for a in v1] == list(range(v1[0].count, v1[0].count + len(v1))), "its count went on"
    assert any(a.version == "v2" for a in answers), "the redeploy after the failover reached the traffic"
    assert running < 45, f"Serve's app RUNNING through h2 {running:.1f}s after the {how} (bound 45 s)"
    assert cluster.watch.overlaps() == []
    print(f"Serve through {how} of h1: {len(answers)} requests, none failed, {len(through)} of them after the "
          f"fault, one replica (pid {v1[0].pid}) counting on; the app RUNNING through h2 {running:.1f}s after "
          f"the fault (lease {LEASE:g}s); the redeploy answered")


@pytest.mark.parametrize("cluster", [{"dashboard": True}], indirect=True)
def test_jobs_the_dashboard_and_ray_client_through_a_standbys_address(cluster: Cluster):
    """A user's machine (d1) that only knows h2's address, while h2 stands by: Ray Jobs submitted there
    (relayed to h1's dashboard), one with its entrypoint on w1 and one on the head, and a Ray Client
    driver connected there. After kill -9 of h1, the same address is h2's own dashboard: it lists both
    jobs; the one on w1 is seen RUNNING and then SUCCEEDED with its whole log; the one on the old head
    ends FAILED, never stuck RUNNING: Ray makes the JobManager that recovers running jobs on a head only
    at the first job request its dashboard agent gets, which h2 makes at takeover. A new Ray Client
    connection through the same address works."""
    h1, h2, d1 = cluster.head("h1"), cluster.head("h2"), cluster.driver
    worker_ready(cluster)
    cluster.heads["h2"].wait_log("answering for h1's head (epoch 1)", timeout=60)
    address = f"http://{h2.ip}:{DASHBOARD_PORT}"
    on_worker = jobs(d1, "submit", address, "worker", "40")["job"]
    on_head = jobs(d1, "submit", address, "head", "600")["job"]
    connected = ServingDriver(d1, f"ray://{h2.ip}:{CLIENT_PORT}")
    before = connected.ask("create")
    try:
        killed_at = time.monotonic()
        h1.kill_all()
        cluster.heads["h2"].wait_log("GCS serving", timeout=90)
        cluster.heads["h2"].wait_log("Ray's job recovery on this head: started now", timeout=60)
        seen = jobs(d1, "follow", address, "120", on_worker, on_head)
        try:
            during = f"answered {connected.ask('get', timeout=90)}"
        except AssertionError as exc:
            during = f"failed: {str(exc)[:300]}"
    finally:
        connected.close()
    after = drive(d1, h2.ip, "get")  # a new Ray Client connection through the same address
    took = time.monotonic() - killed_at
    assert {on_worker, on_head} <= set(seen["list"]), f"h2's dashboard lists the jobs from before: {seen['list']}"
    job = seen[on_worker]
    assert job.get("final") == "SUCCEEDED" and "RUNNING" in job["seen"], f"the job on w1 ran on to its end: {job}"
    assert job["log"].rstrip().endswith("done"), f"its log, read through h2, is whole: {job['log']!r}"
    lost = seen[on_head]
    assert lost.get("final") == "FAILED", f"the job on the old head ended, not stuck RUNNING: {lost}"
    assert after["session"] == before["session"] and after["value"] >= 1
    assert cluster.watch.overlaps() == []
    print(f"through h2's address after kill -9 of h1: the job on w1 {' -> '.join(job['seen'])}; the job on the "
          f"old head {' -> '.join(lost['seen'])} ({lost.get('message')!r}); a Ray Client driver connected "
          f"through the failover {during}; a new one answered {took:.1f}s after the kill")
