"""Ray Jobs on rig hosts, through a dashboard address as a user's machine would use it (Ray's
JobSubmissionClient), each answer a JSON line.

  submit ADDRESS worker|head SECONDS   a job whose entrypoint runs on the follower (its `pinned` resource)
                                       or on the head (node:__internal_head__), printing a line every 0.5 s
                                       for SECONDS and then "done"; waits until it runs: {"job": id}
  follow ADDRESS SECONDS JOB...        polls each job until it ends (or SECONDS): {"list": [every job id],
                                       JOB: {"seen": [statuses in order], "final": status, "log": tail,
                                       "message": Ray's}}
"""

from __future__ import annotations

import json
import sys

from testkit.hostray import clean_env
from testkit.hosts import Host

_CLIENT = r"""
import json, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
action, address = sys.argv[1], sys.argv[2]
PLACES = {"worker": {"pinned": 0.1}, "head": {"node:__internal_head__": 0.01}}
def client():
    end = time.monotonic() + 120
    while True:
        try:
            c = JobSubmissionClient(address)
            c.list_jobs()
            return c
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
if action == "submit":
    place, seconds = sys.argv[3], int(sys.argv[4])
    entry = ("python -u -c \"import ray, time; ray.init(); f = ray.remote(num_cpus=0)(lambda: 1); "
             f"[print('tick', i + ray.get(f.remote()), flush=True) or time.sleep(0.5) for i in range({seconds * 2})]; "
             "print('done', flush=True)\"")
    c = client()
    job = c.submit_job(entrypoint=entry, entrypoint_resources=PLACES[place], entrypoint_num_cpus=0)
    end = time.monotonic() + 120
    while "tick" not in c.get_job_logs(job):
        if time.monotonic() > end or c.get_job_status(job).is_terminal():
            sys.exit(f"job {job} never ran: {c.get_job_status(job)}\n{c.get_job_logs(job)}")
        time.sleep(0.2)
    print(json.dumps({"job": job}))
else:
    jobs, out, end = sys.argv[4:], {}, time.monotonic() + float(sys.argv[3])
    c = None
    while time.monotonic() < end and len([j for j in jobs if "final" in out.get(j, {})]) < len(jobs):
        try:
            c = c or client()
            for job in jobs:
                seen = out.setdefault(job, {"seen": []})
                if "final" in seen:
                    continue
                status = c.get_job_status(job)
                if not seen["seen"] or seen["seen"][-1] != status.value:
                    seen["seen"].append(status.value)
                if status.is_terminal():
                    seen["final"] = status.value
                    seen["log"] = c.get_job_logs(job)[-300:]
                    seen["message"] = c.get_job_info(job).message
        except Exception:
            c = None
        time.sleep(0.2)
    out["list"] = [j.submission_id for j in (c or client()).list_jobs()]
    print(json.dumps(out))
"""


def jobs(host: Host, *args: str, timeout: float = 300) -> dict:
    """Run the jobs client on `host` with `args`; its JSON answer."""
    result = host.run([sys.executable, "-c", _CLIENT, *args], timeout=timeout, check=False, env=clean_env())
    if result.returncode != 0:
        raise AssertionError(f"jobs {args[:1]} exited {result.returncode}:\n{result.stderr[-6000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
