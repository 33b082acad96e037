"""What one `ray-ha start` will do, validated before anything is held or started: the Plan.

Both modes' runtimes read it; everything a user can get wrong is a ConfigError here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from raylaunch.config import (
    IDENTITY,
    RELAYS,
    REPORTING,
    SAFETY,
    TIMING,
    ConfigError,
    Identity,
    Reporting,
    Safety,
    Timing,
    settings_from,
)
from raylaunch.local.rundir import run_dir
from raylaunch.proc.autoscaling import Autoscaling, LocalCluster, read_autoscaling
from raylaunch.proc.net import split_host_port
from raylaunch.proc.raycmd import (
    CLIENT_SERVICES,
    REWRITTEN_HOSTS,
    RayCommand,
    build_head_command,
    build_worker_command,
    option_value,
)
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
class RelayBind:
    """Where follow mode's relay listens: host None picks the node IP (proc.relay.relay_host), port 0
    any free port."""

    host: Optional[str] = None
    port: int = 0


#: What a head serves clients, by name: its GCS, and what the leader record names beside it.
HEAD_SERVICES = ("gcs", *(name for name, _, _ in CLIENT_SERVICES))


@dataclass(frozen=True)
class ClientPorts:
    """What a standby answers for the head on (--ha-client-ports): services whose ports the leader record
    names, and port numbers relayed as they are (Serve's HTTP port on the head, say)."""

    services: tuple[str, ...] = HEAD_SERVICES
    numbers: tuple[int, ...] = ()


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
    ray_python: Optional[str] = None  # the interpreter that runs Ray, if known (a head's helpers use it)
    follow: bool = False  # a follower: command is a worker's `ray start`
    relay: Optional[RelayBind] = RelayBind()  # a follower's relay; None: --ha-relay=off
    client_ports: Optional[ClientPorts] = ClientPorts()  # what a standby answers for; None: off
    stand_by_again: bool = False  # a candidate stands by again after a loss instead of exiting
    local_cluster: Optional[LocalCluster] = None  # `ray up`'s local provider: its node list is carried


def make_plan(request: StartRequest, env: Mapping[str, str] = os.environ) -> Plan:
    """Validate flags, environment, Ray and Redis settings into a Plan (ConfigError on any mistake)."""
    timing = settings_from(TIMING, request.flags, env)
    identity = settings_from(IDENTITY, request.flags, env)
    reporting = settings_from(REPORTING, request.flags, env)
    safety = settings_from(SAFETY, request.flags, env)
    relays = settings_from(RELAYS, request.flags, env)
    relay = relay_bind(relays.relay)
    ray_exe = find_ray()
    args = request.ray_args
    version = ray_version(ray_exe)
    build = build_worker_command if request.follow else build_head_command
    command = build(ray_exe, args, version, timing.effective_reconnect_timeout, env)
    autoscaling = read_autoscaling(args, env, Path(ray_temp_dir(env))) if not request.follow else Autoscaling()
    never_leads = request.follow or identity.priority == 0  # no head to pre-warm
    warm, warm_warnings = prewarm_python(safety.prewarm, ray_exe, command.env) if not never_leads else (None, ())
    command = replace(command, warnings=command.warnings + autoscaling.warnings + warm_warnings)
    ray_py = None if request.follow else (warm or warm_python(ray_exe, command.env, required=False)[0])
    target = target_from(env, option_value(args, "--redis-username"), option_value(args, "--redis-password"))
    temp_dir = Path(option_value(args, "--temp-dir") or ray_temp_dir(env))
    return Plan(command=command, target=target, identity=identity, timing=timing, reporting=reporting,
                safety=safety, node_ip=option_value(args, "--node-ip-address"), state_dir=run_dir(env),
                log_path=temp_dir / "ray-ha" / f"{identity.node_name}.log",
                warm_python=warm, ray_python=ray_py,
                follow=request.follow, relay=relay, client_ports=client_ports_from(relays.client_ports),
                stand_by_again=stands_by_again(safety.after_loss, "--block" in args),
                local_cluster=autoscaling.local)


def prewarm_python(prewarm: str, ray_exe: str, env: Mapping[str, str]) -> tuple[Optional[str], tuple[str, ...]]:
    """--ha-prewarm: the interpreter a standby keeps warm (`ray_exe` as run in the head's `env`), and a warning
    saying why when auto finds none."""
    if prewarm == "off":
        return None, ()
    python, why = warm_python(ray_exe, env, required=prewarm == "on")
    if python is None:
        return None, (f"--ha-prewarm auto: {why}; a takeover starts it cold",)
    return python, ()


def stands_by_again(after_loss: str, block: bool) -> bool:
    """--ha-after-loss: auto exits in the foreground (systemd, Kubernetes restart it) and stands by again
    when detached (under `ray up` nothing would restart it)."""
    return after_loss == "standby" or (after_loss == "auto" and not block)


def client_ports_from(text: str) -> Optional[ClientPorts]:
    """--ha-client-ports: auto, off (None), or a comma-separated list of services and port numbers."""
    if text in ("auto", "off"):
        return ClientPorts() if text == "auto" else None
    words = [w.strip() for w in text.split(",") if w.strip()]
    wrong = [w for w in words if w not in HEAD_SERVICES and not (w.isdigit() and 0 < int(w) < 65536)]
    if wrong or not words:
        raise ConfigError(f"client ports {text!r}: {', '.join(wrong) or 'an empty list'} is not auto, off, "
                          f"or a list of {', '.join(HEAD_SERVICES)} and port numbers")
    return ClientPorts(services=tuple(dict.fromkeys(w for w in words if not w.isdigit())),
                       numbers=tuple(dict.fromkeys(int(w) for w in words if w.isdigit())))


def relay_bind(text: str) -> Optional[RelayBind]:
    """--ha-relay: auto, off (None) or HOST[:PORT], never a host Ray rewrites."""
    if text in ("auto", "off"):
        return RelayBind() if text == "auto" else None
    try:
        host, port = split_host_port(text, default_port="0")
    except ValueError:
        host, port = "", ""
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"relay {text!r} is not auto, off or HOST[:PORT] (IPv6 in brackets)")
    if host.lower() in REWRITTEN_HOSTS:
        raise ConfigError(f"relay {text!r}: Ray rewrites {host} to the node's outward IP; "
                          "give the node IP or another 127.x address")
    return RelayBind(host, int(port))


def ray_temp_dir(env: Mapping[str, str]) -> str:
    """Ray's default --temp-dir: $RAY_TMPDIR/ray, else <system temp dir>/ray, as Ray chooses it."""
    return os.path.join(env.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
