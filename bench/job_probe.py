"""A Ray Job across a failover, seen from a client machine: submitted to the leader's dashboard before
the crash, its status read from the new leader's dashboard after it.

Usage (on the poller's host, started before the kill):
  python bench/job_probe.py OLD_HEAD_IP NEW_HEAD_IP WORKER_IP
Submits a job to OLD_HEAD_IP:8265 whose entrypoint (a driver running tiny tasks for ten minutes) needs
a sliver of the worker's node resource (`node:WORKER_IP`), so Ray runs its supervisor and driver on the
worker node, which outlives the crash; prints "ready
<id>" once the job is RUNNING. On a line on stdin (the kill's wall-clock time, sent right after it)
polls NEW_HEAD_IP:8265 and prints one JSON line of CLOCK_MONOTONIC times: when the new dashboard first
answered for the job (and what it said), when it said RUNNING, and when the driver's log read through
it showed a task finished after the kill (RUNNING is then the job's real state, not a record left from
before). The driver stamps each task with the wall clock; the hosts share one.
"""

import json
import sys
import time

from ray.job_submission import JobStatus, JobSubmissionClient

DASHBOARD_PORT = 8265
DEADLINE = 120.0  # s, for the new dashboard to answer
ENTRYPOINT = ("python -u -c \"import ray, time; ray.init(); f = ray.remote(num_cpus=0)(lambda: 1); "
              "[print(i + ray.get(f.remote()), time.time(), flush=True) or time.sleep(0.2) for i in range(3000)]\"")


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def last_task(client: JobSubmissionClient, job: str) -> float:
    """When the job's driver last finished a task (wall clock), from its log; 0 before the first."""
    stamps = [float(words[1]) for words in map(str.split, client.get_job_logs(job).splitlines())
              if len(words) == 2 and words[0].isdigit()]
    return stamps[-1] if stamps else 0.0


def submit(old_ip: str, worker_ip: str) -> str:
    """Submit the job to the leader and wait until its driver runs tasks; its id."""
    client = JobSubmissionClient(f"http://{old_ip}:{DASHBOARD_PORT}")
    job = client.submit_job(entrypoint=ENTRYPOINT, entrypoint_resources={f"node:{worker_ip}": 0.01},
                            entrypoint_num_cpus=0)
    end = now() + DEADLINE
    while client.get_job_status(job) != JobStatus.RUNNING or not last_task(client, job):
        if now() > end or client.get_job_status(job).is_terminal():
            raise SystemExit(f"job {job} never ran: {client.get_job_status(job)}\n{client.get_job_logs(job)}")
        time.sleep(0.2)
    return job


def watch(new_ip: str, job: str, killed: float) -> dict:
    """Poll the new leader's dashboard for the job: when it first answers, when it says RUNNING, and when
    the driver's log shows a task finished after the kill (so RUNNING is the truth, not a stale record)."""
    out: dict = {}
    end = now() + DEADLINE
    client = None
    while now() < end and "progressed" not in out:
        try:
            client = client or JobSubmissionClient(f"http://{new_ip}:{DASHBOARD_PORT}")
            status = client.get_job_status(job)
            done = last_task(client, job) if status == JobStatus.RUNNING else 0.0
        except Exception:  # noqa: BLE001 - the new dashboard is not up yet, whatever the client says
            client = None
            time.sleep(0.1)
            continue
        out.setdefault("answered", now())
        out.setdefault("first status", str(status.value))
        if status == JobStatus.RUNNING:
            out.setdefault("running", now())
            if done > killed:
                out["progressed"] = now()
        elif status.is_terminal():
            out["final"] = str(status.value)
            return out
        time.sleep(0.1)
    return out


def main() -> None:
    old_ip, new_ip, worker_ip = sys.argv[1:4]
    job = submit(old_ip, worker_ip)
    print(f"ready {job}", flush=True)
    killed = float(sys.stdin.readline())
    out = watch(new_ip, job, killed)
    out["job"] = job
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
