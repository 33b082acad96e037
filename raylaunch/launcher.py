"""`ray-ha start`: passthrough to `ray start`, or campaign for the head in the foreground or detached.

Everything a user can get wrong is checked here before anything is held or started; the CLI maps
the exceptions to exit codes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NoReturn, Optional, Sequence

from raylaunch.campaign import Campaign, Outcome, Snapshot, Step, Watcher
from raylaunch.config import (ConfigError, Identity, Reporting, Safety, Timing, identity_from, reporting_from,
                              safety_from, timing_from)
from raylaunch.endpoint import Endpoint
from raylaunch.fence import AclFence
from raylaunch.head import RayHead
from raylaunch.hooks import Hooks
from raylaunch.lease import Holder, Keys, LeaseStoreError, RedisLease, RedisUnavailable, guarded
from raylaunch.localstate import StateFile, local_supervisors, run_dir
from raylaunch.logs import setup_logging
from raylaunch.passthrough import find_ray, pass_through_unless_ha
from raylaunch.prewarm import WarmStart, ray_python
from raylaunch.raycmd import (HeadCommand, build_head_command, build_worker_command, option_value, parse_version,
                              redact)
from raylaunch.redisconn import RedisTarget, connect, target_from
from raylaunch.stopflag import StopFlag
from raylaunch.supervisor import become_subreaper
from raylaunch.watchdog import Watchdog

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_LOST, EXIT_HEAD_DIED = 0, 1, 2, 3, 4
OUTCOME_CODES = {Outcome.STOPPED: EXIT_OK, Outcome.FAILED: EXIT_RUNTIME,
                 Outcome.LOST: EXIT_LOST, Outcome.HEAD_DIED: EXIT_HEAD_DIED}
CONNECT_ATTEMPTS = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: How long a non-block start waits to learn whether it leads or stands by (s).
DETACH_WAIT = 180.0
#: What `ray start` prints once everything is up; a detached leader is reported after it (every Ray
#: from 2.9 to 2.60 says it), or RAY_TEXT_GRACE after its GCS began serving if a Ray says something else.
RAY_STARTED = "Ray runtime started"
RAY_TEXT_GRACE = 20.0

log = logging.getLogger("ray-ha")


class RuntimeProblem(Exception):
    """Something outside the user's input went wrong before the campaign (exit 1)."""


@dataclass(frozen=True)
class StartRequest:
    """A parsed `ray-ha start`: Ray's arguments, ray-ha's flags by field name, and the flags as typed."""

    ray_args: list[str]
    env_file: Optional[str] = None
    node: Optional[str] = None
    key: Optional[str] = None
    timing: Mapping[str, Optional[str]] = field(default_factory=dict)
    reporting: Mapping[str, Optional[str]] = field(default_factory=dict)
    safety: Mapping[str, Optional[str]] = field(default_factory=dict)
    ha_argv: list[str] = field(default_factory=list)
    follow: bool = False  # --ha-follow: a worker node that joins whoever leads


@dataclass(frozen=True)
class Plan:
    """Everything the campaign needs, validated."""

    command: HeadCommand
    target: RedisTarget
    identity: Identity
    timing: Timing
    reporting: Reporting
    safety: Safety
    node_ip: Optional[str]
    state_dir: Path
    log_path: Path
    warm_python: Optional[str] = None  # the interpreter a standby pre-warms (--ha-prewarm), else None
    follow: bool = False  # a follower: command is a worker's `ray start`, run by raylaunch.follower


def run_start(request: StartRequest) -> int:
    """Decide passthrough or HA, validate everything, then campaign here or in a detached supervisor."""
    pass_through_unless_ha(request.ray_args, request.env_file, request.follow)
    plan = make_plan(request)
    if "--block" not in request.ray_args:
        return detach(plan, request)
    return follow_here(plan) if plan.follow else campaign(plan)


def follow_here(plan: Plan) -> int:
    """Follow mode in this process (raylaunch.follower), with this node's state file held."""
    from raylaunch.follower import follow

    state = claim_state(plan)
    try:
        return follow(plan, state)
    finally:
        state.close()


def make_plan(request: StartRequest) -> Plan:
    """Validate flags, environment, Ray and Redis settings into a Plan (ConfigError on any mistake)."""
    timing = timing_from(request.timing, os.environ)
    identity = identity_from(request.node, request.key, os.environ)
    reporting = reporting_from(request.reporting, os.environ)
    safety = safety_from(request.safety, os.environ)
    ray_exe = find_ray()
    args = request.ray_args
    version = ray_version(ray_exe)
    build = build_worker_command if request.follow else build_head_command
    command = build(ray_exe, args, version, timing.effective_reconnect_timeout, os.environ)
    target = target_from(os.environ, option_value(args, "--redis-username"),
                         option_value(args, "--redis-password"))
    temp_dir = Path(option_value(args, "--temp-dir") or ray_temp_dir(os.environ))
    return Plan(command=command, target=target, identity=identity, timing=timing, reporting=reporting,
                safety=safety, node_ip=option_value(args, "--node-ip-address"), state_dir=run_dir(os.environ),
                log_path=temp_dir / "ray-ha" / f"{identity.node_name}.log",
                warm_python=warm_python(ray_exe, version) if safety.prewarm and not request.follow else None,
                follow=request.follow)


def warm_python(ray_exe: str, version: tuple[int, int]) -> str:
    """The interpreter to pre-warm for --ha-prewarm: the one that runs `ray` (ConfigError if unknown)."""
    try:
        own: Optional[tuple[int, int]] = parse_version(importlib.metadata.version("ray"))
    except importlib.metadata.PackageNotFoundError:
        own = None
    python = ray_python(ray_exe, version, own)
    if python is None:
        raise ConfigError(f"--ha-prewarm: cannot tell which Python runs {ray_exe} (no python in its #! line, "
                          "and this interpreter has no Ray of the same version)")
    return python


def ray_temp_dir(env: Mapping[str, str]) -> str:
    """Ray's default --temp-dir: $RAY_TMPDIR/ray, else <system temp dir>/ray, as Ray chooses it."""
    return os.path.join(env.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")


def ray_version(ray_exe: str) -> tuple[int, int]:
    """The installed Ray's version: from package metadata when `ray` is ours, else `ray --version`."""
    if os.path.dirname(os.path.realpath(ray_exe)) == os.path.dirname(sys.executable):
        try:
            return parse_version(importlib.metadata.version("ray"))
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        out = subprocess.run([ray_exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run `{ray_exe} --version`: {exc}") from None
    return parse_version(out.rsplit("version", 1)[-1])


class LiveContext:
    """Role, epoch and leader for every log line, read from the campaign at the moment of logging."""

    def __init__(self) -> None:
        self.campaign: Optional[Campaign] = None

    def __call__(self) -> dict[str, object]:
        c = self.campaign
        return {} if c is None else {"role": c.role.value, "epoch": c.epoch, "leader": c.leader}


def state_of(snapshot: Snapshot) -> dict[str, object]:
    """The state-file fields that describe a campaign."""
    return {"role": snapshot.role.value, "epoch": snapshot.epoch, "leader": snapshot.leader,
            "gcs_address": snapshot.gcs_address, "serving": snapshot.serving,
            "transitions": snapshot.transitions, "renew_failures": snapshot.renew_failures,
            "takeover_seconds": snapshot.takeover_seconds,
            "waiting_old_gcs": snapshot.step is Step.WAITING_OLD_GCS, "redis_refused": snapshot.redis_refused}


def campaign(plan: Plan) -> int:
    """Run the campaign in this process until leadership ends; returns the exit code."""
    context = LiveContext()
    setup_logging(plan.reporting.log_format, plan.identity.node_name, context)
    stop = StopFlag()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    state = claim_state(plan)
    try:
        return _campaign(plan, state, context, stop)
    finally:
        state.close()


def claim_state(plan: Plan) -> StateFile:
    """This node's local state file, locked for our life (one supervisor per node and machine)."""
    r = plan.reporting
    static = {"node": plan.identity.node_name, "key": plan.identity.key, "redis": plan.target.display,
              "lease_duration": plan.timing.lease_duration, "retry_period": plan.timing.retry_period,
              "stop_grace": plan.timing.stop_grace, "started": time.time(),
              "http": f"{r.http_host}:{r.http_port}" if r.http_port is not None else None}
    state = StateFile(plan.state_dir, plan.identity.node_name, static, heartbeat=plan.timing.retry_period)
    try:
        state.claim()
    except OSError as exc:
        raise RuntimeProblem(f"cannot keep state in {plan.state_dir} (set RAY_HA_RUN_DIR): "
                             f"{exc.strerror or exc}") from None
    return state


def _campaign(plan: Plan, state: StateFile, context: LiveContext, stop: StopFlag) -> int:
    for warning in plan.command.warnings:
        log.warning("%s", warning)
    if not become_subreaper():
        log.warning("cannot become a child subreaper; orphaned head processes may escape supervision")
    endpoint = start_endpoint(plan)
    hooks = Hooks(plan.reporting.on_elected, plan.reporting.on_demoted, plan.reporting.hook_timeout,
                  plan.command.env)
    lease = watchdog = None
    head: Optional[RayHead] = None
    try:
        lease = connect_lease(plan, stop)
        log.info("campaigning as %s for %s on %s (lease %gs, renew deadline %gs, retry %gs)",
                 plan.identity.node_name, lease.key, plan.target.display, plan.timing.lease_duration,
                 plan.timing.renew_deadline, plan.timing.retry_period)
        log.info("head command: %s", " ".join(redact(plan.command.argv)))
        watchdog = dog = Watchdog(plan.timing.renew_deadline, plan.timing.lease_duration,
                                  lambda: head.session() if head else None)
        fence = make_fence(plan, lease)
        warm = WarmStart(plan.warm_python, plan.command.env) if plan.warm_python else None
        head = RayHead(plan.command, plan.node_ip, spare=lambda: hooks.pids() | dog.pids(),
                       credentials=fence.credentials if fence else None, warm=warm)
        watchers: list[Watcher] = [dog, lambda snap: state.update(state_of(snap)), hooks]
        watchers += [endpoint] if endpoint else []
        context.campaign = Campaign(lease, head, plan.timing, stop, name=plan.identity.node_name,
                                    watchers=watchers, fence=fence)
        return OUTCOME_CODES[context.campaign.run()]
    finally:
        if head:
            head.close()  # an unused pre-warmed interpreter
        if watchdog:
            watchdog.close()  # the campaign has stopped the tree by now
        hooks.close()
        if endpoint:
            endpoint.close()
        if lease:
            lease.close()


def start_endpoint(plan: Plan) -> Optional[Endpoint]:
    """The HTTP endpoint if asked for; a port that cannot be bound is a runtime problem (exit 1)."""
    r = plan.reporting
    if r.http_port is None:
        return None
    try:
        endpoint = Endpoint(r.http_host, r.http_port, stale_after=plan.timing.lease_duration)
    except OSError as exc:
        raise RuntimeProblem(f"cannot serve HTTP on {r.http_host}:{r.http_port}: {exc.strerror or exc}") from None
    log.info("HTTP endpoint on %s:%d (/healthz, /leader, /metrics)", r.http_host, endpoint.port)
    return endpoint


def connect_lease(plan: Plan, stop: StopFlag) -> RedisLease:
    """A checked lease handle; Redis gets a few quiet tries, one second apart, before we give up."""
    target, identity, timing = plan.target, plan.identity, plan.timing
    me = Holder.me(identity.node_name, identity.host)
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            client = guarded(lambda: connect(target, timing.redis_timeout), identity.key)
            lease = RedisLease(client, Keys(identity.key), me, timing.lease_duration,
                               min_replicas=plan.safety.min_replicas, wait_timeout=timing.redis_timeout / 2)
            lease.check()
            return lease
        except RedisUnavailable as exc:
            if attempt == CONNECT_ATTEMPTS or stop.is_set():
                raise RedisUnavailable(f"cannot reach Redis at {target.display}: {exc}") from None
            stop.wait(1.0)
        except LeaseStoreError as exc:
            raise LeaseStoreError(f"Redis at {target.display}: {exc}") from None
    raise AssertionError("unreachable")


def detach(plan: Plan, request: StartRequest) -> int:
    """Non-block mode, for `ray up`: start the supervisor in its own session and report how it went."""
    check_redis(plan)
    claim_state(plan).close()  # fails now, in the foreground, if this node already has a supervisor
    plan.log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = plan.log_path.stat().st_size if plan.log_path.exists() else 0
    argv = [sys.executable, "-m", "raylaunch", "start", *request.ha_argv, *request.ray_args, "--block"]
    with open(plan.log_path, "ab") as out:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    return follow_detached(plan, child, offset)


def check_redis(plan: Plan) -> None:
    """Reach Redis once before detaching, so a wrong address or password fails in the foreground."""
    lease = connect_lease(plan, StopFlag())
    try:
        make_fence(plan, lease)
    finally:
        lease.close()


def make_fence(plan: Plan, lease: RedisLease) -> Optional[AclFence]:
    """The storage fence asked for, checked (LeaseStoreError if our user may not manage ACLs)."""
    if plan.safety.fence != "acl":
        return None
    fence = AclFence(lease.client, lease.keys)
    fence.check()
    return fence


def follow_detached(plan: Plan, child: subprocess.Popen, offset: int) -> int:
    """Echo the supervisor's log until it leads, stands by or exits; never wait longer than DETACH_WAIT.

    A leader is reported once its GCS serves and `ray start` has said it is done (or the wait is up),
    so the user sees Ray's own guidance as with `ray start`.
    """
    deadline = time.monotonic() + DETACH_WAIT
    shown, leading_since = "", None
    with open(plan.log_path, "rb") as log_file:
        log_file.seek(offset)
        while True:
            time.sleep(0.1)
            shown += _echo(log_file)
            code = child.poll()
            if code is not None:
                _echo(log_file)
                print(f"ray-ha: the supervisor exited with code {code}; see {plan.log_path}", file=sys.stderr)
                return code or EXIT_RUNTIME
            verdict, leading = _verdict_of(plan, child.pid)
            leading_since = leading_since or (time.monotonic() if leading else None)
            timed_out = time.monotonic() > deadline
            if verdict and (not leading or RAY_STARTED in shown or _past(leading_since, RAY_TEXT_GRACE) or timed_out):
                return _settled(plan, child.pid, verdict, quiet_ray=leading and RAY_STARTED not in shown)
            if timed_out:
                print(f"ray-ha: error: no outcome after {DETACH_WAIT:.0f}s; the supervisor (pid {child.pid}) "
                      f"keeps trying, see {plan.log_path}", file=sys.stderr)
                return EXIT_RUNTIME


def _verdict_of(plan: Plan, pid: int) -> tuple[Optional[str], bool]:
    found = [s for s in local_supervisors(plan.state_dir, plan.identity.node_name) if s.pid == pid]
    return _verdict(found[0].state) if found else (None, False)


def _past(since: Optional[float], seconds: float) -> bool:
    return since is not None and time.monotonic() - since > seconds


def _settled(plan: Plan, pid: int, verdict: str, quiet_ray: bool) -> int:
    """Report where the detached supervisor stands (exit 0)."""
    if quiet_ray:
        print(f"ray-ha: note: `ray start` has not said {RAY_STARTED!r} {RAY_TEXT_GRACE:.0f}s after its GCS "
              "began serving; reporting without it")
    print(f"ray-ha: {verdict}")
    print(f"ray-ha: supervisor pid {pid}, log {plan.log_path}; stop it with: ray-ha stop")
    return EXIT_OK


def _verdict(state: Mapping[str, object]) -> tuple[Optional[str], bool]:
    """A line for a settled supervisor state (None while it is on its way), and whether it leads."""
    role, epoch, leader = state.get("role"), state.get("epoch"), state.get("leader")
    if role == "leader" and state.get("serving"):
        return f"leading as {state.get('node')} (epoch {epoch}); GCS serving at {state.get('gcs_address')}", True
    if role == "standby" and leader:
        return f"standing by; leader is {leader} (epoch {epoch})", False
    if role == "follower" and state.get("joined"):
        return f"following {leader} (epoch {epoch}); worker joined {state.get('gcs_address')}", True
    if role == "follower" and state.get("step") == "waiting-leader":
        return "no leader serves yet; the follower joins one as soon as it does", False
    if role == "waiting" and state.get("waiting_old_gcs"):
        return (f"elected (epoch {epoch}) but waiting for the previous GCS to go away before starting "
                "the head; the supervisor carries on"), False
    return None, False


def _echo(log_file) -> str:
    """Copy what the supervisor logged since last time to our stdout; returns it."""
    text = log_file.read().decode(errors="replace")
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
    return text
