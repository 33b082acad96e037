"""What one `ray-ha start` will do, validated before anything is held or started: the Plan.

Both modes' runtimes read it; everything a user can get wrong is a ConfigError here.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from raylaunch.config import (FOLLOWING, IDENTITY, REPORTING, SAFETY, TIMING, Following, Identity, Reporting, Safety,
                              Timing, settings_from)
from raylaunch.local.state import run_dir
from raylaunch.proc.raycmd import RayCommand, build_head_command, build_worker_command, option_value
from raylaunch.proc.rayexe import find_ray, ray_version, warm_python
from raylaunch.store.connect import RedisTarget, target_from


@dataclass(frozen=True)
class StartRequest:
    """A parsed `ray-ha start`: Ray's arguments, ray-ha's flags by field name, and the flags as typed."""

    ray_args: list[str]
    env_file: Optional[str] = None
    flags: Mapping[str, Optional[str]] = field(default_factory=dict)  # ray-ha's settings, by field name
    ha_argv: list[str] = field(default_factory=list)
    follow: bool = False  # --ha-follow: a worker node that joins whoever leads


@dataclass(frozen=True)
class Plan:
    """Everything a supervisor needs, validated."""

    command: RayCommand  # the head's `ray start` (or, following, the worker's)
    target: RedisTarget
    identity: Identity
    timing: Timing
    reporting: Reporting
    safety: Safety
    node_ip: Optional[str]
    state_dir: Path
    log_path: Path
    warm_python: Optional[str] = None  # the interpreter a standby pre-warms (--ha-prewarm), else None
    follow: bool = False  # a follower: command is a worker's `ray start`
    following: Following = Following()  # a follower's way to the GCS (relay or not)


def make_plan(request: StartRequest, env: Mapping[str, str] = os.environ) -> Plan:
    """Validate flags, environment, Ray and Redis settings into a Plan (ConfigError on any mistake)."""
    timing = settings_from(TIMING, request.flags, env)
    identity = settings_from(IDENTITY, request.flags, env)
    reporting = settings_from(REPORTING, request.flags, env)
    safety = settings_from(SAFETY, request.flags, env)
    following = settings_from(FOLLOWING, request.flags, env)
    ray_exe = find_ray()
    args = request.ray_args
    version = ray_version(ray_exe)
    build = build_worker_command if request.follow else build_head_command
    command = build(ray_exe, args, version, timing.effective_reconnect_timeout, env)
    target = target_from(env, option_value(args, "--redis-username"), option_value(args, "--redis-password"))
    temp_dir = Path(option_value(args, "--temp-dir") or ray_temp_dir(env))
    return Plan(command=command, target=target, identity=identity, timing=timing, reporting=reporting,
                safety=safety, node_ip=option_value(args, "--node-ip-address"), state_dir=run_dir(env),
                log_path=temp_dir / "ray-ha" / f"{identity.node_name}.log",
                warm_python=warm_python(ray_exe, version) if safety.prewarm and not request.follow else None,
                follow=request.follow, following=following)


def ray_temp_dir(env: Mapping[str, str]) -> str:
    """Ray's default --temp-dir: $RAY_TMPDIR/ray, else <system temp dir>/ray, as Ray chooses it."""
    return os.path.join(env.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
