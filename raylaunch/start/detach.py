"""Non-block `ray-ha start` (as under `ray up`): check in the foreground, start the supervisor in its own
session, echo its log until it leads, stands by or has joined, and say where it stands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import BinaryIO, Optional

from raylaunch.config import Exit, Role
from raylaunch.local.rundir import PrivateDir
from raylaunch.local.state import SupervisorState, local_supervisors
from raylaunch.plan import Plan, StartRequest
from raylaunch.supervisor import Mode, claim_state

#: How long a non-block start waits to learn whether it leads or stands by (s).
DETACH_WAIT = 180.0
#: What `ray start` prints once everything is up; a detached leader is reported after it (every Ray
#: from 2.9 to 2.60 says it), or RAY_TEXT_GRACE after its GCS began serving if a Ray says something else.
RAY_STARTED = "Ray runtime started"
RAY_TEXT_GRACE = 20.0
#: What to do about an unsafe log dir (`<ray temp dir>/ray-ha`).
LOG_DIR_FIX = "Remove it, or make it yours (mode 0700), or give ray-ha another --temp-dir (or RAY_TMPDIR)"


def detach(plan: Plan, request: StartRequest, mode: Mode) -> int:
    """Start the supervisor in its own session and report how it went; a wrong address, password or a
    second supervisor for this node fails here, in the foreground."""
    mode.check_redis()
    claim_state(plan).close()
    after_loss = "standby" if plan.stand_by_again else "exit"  # decided here: the child runs with --block
    argv = [sys.executable, "-m", "raylaunch", "start", *request.ha_argv, f"--ha-after-loss={after_loss}",
            *request.ray_args, "--block"]
    with PrivateDir.open(plan.log_path.parent, create=True, above=False, fix=LOG_DIR_FIX) as logs:
        out = logs.open_file(plan.log_path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        reader = os.fdopen(logs.open_file(plan.log_path.name, os.O_RDONLY), "rb")
    with reader:
        reader.seek(os.fstat(out).st_size)
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        finally:
            os.close(out)
        return echo_until_settled(plan, child, reader)


def echo_until_settled(plan: Plan, child: subprocess.Popen[bytes], log_file: BinaryIO) -> int:
    """Echo the supervisor's log until it leads, stands by or exits; never wait longer than DETACH_WAIT.

    A leader is reported once its GCS serves and `ray start` has said it is done (or the wait is up),
    so the user sees Ray's own guidance as with `ray start`.
    """
    deadline = time.monotonic() + DETACH_WAIT
    shown, leading_since = "", None
    while True:
        time.sleep(0.1)
        shown += _echo(log_file)
        code = child.poll()
        if code is not None:
            _echo(log_file)
            print(f"ray-ha: the supervisor exited with code {code}; see {plan.log_path}", file=sys.stderr)
            return code or Exit.RUNTIME
        line, leading = _verdict_of(plan, child.pid)
        leading_since = leading_since or (time.monotonic() if leading else None)
        timed_out = time.monotonic() > deadline
        if line and (not leading or RAY_STARTED in shown or _past(leading_since, RAY_TEXT_GRACE) or timed_out):
            return _settled(plan, child.pid, line, quiet_ray=leading and RAY_STARTED not in shown)
        if timed_out:
            print(f"ray-ha: error: no outcome after {DETACH_WAIT:.0f}s; the supervisor (pid {child.pid}) "
                  f"keeps trying, see {plan.log_path}", file=sys.stderr)
            return Exit.RUNTIME


def _verdict_of(plan: Plan, pid: int) -> tuple[Optional[str], bool]:
    found = [s.state for s in local_supervisors(plan.state_dir, plan.identity.node_name) if s.pid == pid]
    return verdict(found[0]) if found and found[0] is not None else (None, False)


def _past(since: Optional[float], seconds: float) -> bool:
    return since is not None and time.monotonic() - since > seconds


def _settled(plan: Plan, pid: int, line: str, quiet_ray: bool) -> int:
    """Report where the detached supervisor stands (exit 0)."""
    if quiet_ray:
        print(f"ray-ha: note: `ray start` has not said {RAY_STARTED!r} {RAY_TEXT_GRACE:.0f}s after its GCS "
              "began serving; reporting without it")
    print(f"ray-ha: {line}")
    print(f"ray-ha: supervisor pid {pid}, log {plan.log_path}; stop it with: ray-ha stop")
    return Exit.OK


def verdict(state: SupervisorState) -> tuple[Optional[str], bool]:
    """A line for a settled supervisor state (None while it is on its way), and whether it leads."""
    if state.role == Role.LEADER and state.serving:
        return f"leading as {state.node} (epoch {state.epoch}); GCS serving at {state.gcs_address}", True
    if state.role == Role.STANDBY and state.leader:
        return f"standing by; leader is {state.leader} (epoch {state.epoch})", False
    if state.role == Role.FOLLOWER and state.joined:
        via = f" through the relay at {state.relay}" if state.relay else ""
        return (f"following {state.leader} (epoch {state.epoch}); worker joined {state.gcs_address}{via}"), True
    if state.role == Role.FOLLOWER and state.step == "waiting-leader":
        return "no leader serves yet; the follower joins one as soon as it does", False
    if state.role == Role.WAITING and state.waiting_old_gcs:
        return (f"elected (epoch {state.epoch}) but waiting for the previous GCS to go away before starting "
                "the head; the supervisor carries on"), False
    return None, False


def _echo(log_file: BinaryIO) -> str:
    """Copy what the supervisor logged since last time to our stdout; returns it."""
    text = log_file.read().decode(errors="replace")
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
    return text
