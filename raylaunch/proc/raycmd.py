"""The `ray start ... --block` commands a leader (head) and a follower (worker) run. Pure: no I/O.

User arguments pass through untouched except `--system-config` on a head, into which the raylet
reconnect setting for the installed Ray version is merged (the user's own keys always win), and
`--address` on a worker, which is the current leader's GCS.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from raylaunch.config import FALSY, ConfigError

RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
NEW_KEY = "gcs_rpc_server_reconnect_timeout_s"
OLD_RETRIES_KEY = "ping_gcs_rpc_server_max_retries"
OLD_INTERVAL_KEY = "ping_gcs_rpc_server_interval_milliseconds"
#: Environment a follower reads but its worker node must not inherit.
WORKER_DROPS = ("RAY_REDIS_ADDRESS", "RAY_REDIS_PASSWORD")
#: Where Ray takes the GCS's storage namespace in Redis from (the key in --system-config, or the env).
NAMESPACE_KEY = "external_storage_namespace"
NAMESPACE_ENV = "RAY_external_storage_namespace"
#: Ray's process names: the GCS (whose death ends a head), and the raylet, which goes first on a graceful
#: stop (it unregisters the node and stops its workers and agents).
GCS_NAME = "gcs_server"
RAYLET_NAME = "raylet"
#: Hosts Ray rewrites to the node's outward IP in a worker's --address (so a relay never listens there).
REWRITTEN_HOSTS = ("127.0.0.1", "localhost", "::1")
#: ray start options whose value is a secret, hidden from every log line.
SECRET_OPTIONS = ("--redis-password",)


@dataclass(frozen=True)
class RayCommand:
    """What a leader (or a follower) runs: argv, the child's full environment, and warnings to log once."""

    argv: tuple[str, ...]
    env: dict[str, str]
    warnings: tuple[str, ...]


def parse_version(text: str) -> tuple[int, int]:
    """`2.60.0`, `1.9.2`, `3.0.0.dev0` -> (major, minor)."""
    match = re.match(r"\s*(\d+)\.(\d+)", text or "")
    if not match:
        raise ConfigError(f"cannot read the Ray version from {text!r}")
    return int(match.group(1)), int(match.group(2))


def reconnect_config(version: tuple[int, int], timeout: float) -> dict[str, int]:
    """The --system-config keys that set the raylet reconnect timeout on this Ray version.

    Ray <= 1.9 only knows the ping retry pair; later Ray has one timeout key and crashes its GCS on
    the old ones, so exactly one family is ever emitted.
    """
    seconds = int(math.ceil(timeout))
    if version < (1, 10):
        return {OLD_RETRIES_KEY: seconds, OLD_INTERVAL_KEY: 1000}
    return {NEW_KEY: seconds}


def option_values(args: Sequence[str], name: str) -> list[str]:
    """Every value given to option `name`, as `--name value` or `--name=value`, in order."""
    values, i = [], 0
    while i < len(args):
        if args[i] == name and i + 1 < len(args):
            values.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith(name + "="):
            values.append(args[i][len(name) + 1:])
        i += 1
    return values


def option_value(args: Sequence[str], name: str) -> Optional[str]:
    """The value option `name` takes (the last one given, as click does), or None."""
    values = option_values(args, name)
    return values[-1] if values else None


def without_option(args: Sequence[str], name: str) -> list[str]:
    """`args` with every occurrence of option `name` and its value removed."""
    out, i = [], 0
    while i < len(args):
        if args[i] == name:
            i += 2
            continue
        if not args[i].startswith(name + "="):
            out.append(args[i])
        i += 1
    return out


def merge_system_config(user_text: Optional[str], ours: Mapping[str, int]) -> tuple[dict[str, Any], list[str]]:
    """Our keys under the user's JSON object (theirs win), with a warning for each shorter user value."""
    user: dict[str, Any] = {}
    if user_text is not None:
        try:
            user = json.loads(user_text)
        except ValueError as exc:
            raise ConfigError(f"--system-config is not valid JSON: {exc}") from None
        if not isinstance(user, dict):
            raise ConfigError("--system-config must be a JSON object, e.g. '{\"key\": 1}'")
    warnings = [f"--system-config sets {key}={user[key]}, shorter than the {value} ray-ha recommends "
                f"(lease + head start); raylets may give up during a failover"
                for key, value in ours.items() if _shorter(user.get(key), value)
                and key != OLD_INTERVAL_KEY]
    return {**ours, **user}, warnings


def _shorter(user_value: Any, ours: float) -> bool:
    """True if a user's numeric value is below ours; non-numbers are left for Ray to judge."""
    try:
        return user_value is not None and float(user_value) < ours
    except (TypeError, ValueError):
        return False


def child_env(base: Mapping[str, str], version: tuple[int, int], timeout: float) -> tuple[dict[str, str], list[str]]:
    """The head's environment: the reconnect env var (the user's wins) and no RAY_ENABLE_HEAD_HA.

    Ray 2.x raylets read the reconnect timeout from their own environment, not from the head's
    --system-config; RAY_ENABLE_HEAD_HA is removed so a Ray with built-in head HA never campaigns too.
    """
    env = {k: v for k, v in base.items() if k != "RAY_ENABLE_HEAD_HA"}
    warnings: list[str] = []
    if version < (1, 10):
        return env, warnings
    seconds = int(math.ceil(timeout))
    if RECONNECT_ENV not in env:
        env[RECONNECT_ENV] = str(seconds)
    elif _shorter(env[RECONNECT_ENV], seconds):
        warnings.append(f"{RECONNECT_ENV}={env[RECONNECT_ENV]} is shorter than the {seconds} ray-ha "
                        "recommends (lease + head start); raylets may give up during a failover")
    return env, warnings


def build_head_command(ray_exe: str, user_args: Sequence[str], version: tuple[int, int],
                       reconnect_timeout: float, base_env: Mapping[str, str]) -> RayCommand:
    """`ray start <user args> --block --system-config <merged>` with the environment the head needs."""
    merged, warnings = merge_system_config(option_value(user_args, "--system-config"),
                                           reconnect_config(version, reconnect_timeout))
    args = without_option(user_args, "--system-config")
    if "--block" not in args:
        args.append("--block")
    env, env_warnings = child_env(base_env, version, reconnect_timeout)
    argv = (ray_exe, "start", *args, "--system-config", json.dumps(merged, sort_keys=True))
    return RayCommand(argv=argv, env=env, warnings=tuple(warnings + env_warnings))


def build_worker_command(ray_exe: str, user_args: Sequence[str], version: tuple[int, int],
                         reconnect_timeout: float, base_env: Mapping[str, str]) -> RayCommand:
    """`ray start <user args> --block` for a follower, its --address left to with_address().

    The worker's own raylet reads the reconnect timeout from its environment (not from the head's
    --system-config on Ray 2.60), so the env carries it: a worker outlives a failover in place.
    """
    args = without_option(user_args, "--address")
    if "--block" not in args:
        args.append("--block")
    env, warnings = child_env(base_env, version, reconnect_timeout)
    for name in WORKER_DROPS:  # a worker never talks to Redis: keep its password out of every process
        env.pop(name, None)
    return RayCommand(argv=(ray_exe, "start", *args), env=env, warnings=tuple(warnings))


#: A relayed worker's GCS reconnect settings: its GCS is a relay on its own host, so retrying often costs
#: nothing. A 500 ms backoff ceiling (Ray's: 2 s) and a 200 ms look at a broken channel (Ray's: 1 s) took
#: the new GCS answering -> the worker's actor answering from ~2.5 s to 0.2-0.6 s on the bench's hosts.
RELAY_ENV = {"RAY_gcs_grpc_max_reconnect_backoff_ms": "500",
             "RAY_grpc_client_check_connection_status_interval_milliseconds": "200"}


def with_relay_env(command: RayCommand) -> RayCommand:
    """`command` with the relayed worker's environment (a value the user set wins)."""
    return replace(command, env={**RELAY_ENV, **command.env})


def storage_namespace(command: RayCommand) -> str:
    """The GCS storage namespace a head command uses: its --system-config wins over the environment,
    as in Ray's RayConfig, and Ray's default is `default`."""
    text = option_value(command.argv, "--system-config")
    chosen = json.loads(text).get(NAMESPACE_KEY) if text else None
    return str(chosen or command.env.get(NAMESPACE_ENV) or "default")


#: What a head serves to clients beside its GCS: (name, the `ray start` option of its port, Ray's default).
CLIENT_SERVICES = (("dashboard", "--dashboard-port", 8265), ("client", "--ray-client-server-port", 10001))


def client_ports(argv: Sequence[str]) -> dict[str, int]:
    """The ports a head command serves clients on beside its GCS, by name: the dashboard and Jobs API
    (unless --include-dashboard=false) and the Ray Client server. A value that is no port is left out."""
    ports = {}
    for name, option, default in CLIENT_SERVICES:
        text = option_value(argv, option)
        if text is None or text.isdigit() and 0 < int(text) < 65536:
            ports[name] = int(text) if text else default
    if (option_value(argv, "--include-dashboard") or "").strip().lower() in FALSY - {""}:
        ports.pop("dashboard", None)
    return ports


def with_address(argv: Sequence[str], address: str) -> list[str]:
    """`argv` (a `ray start` command) joining the cluster whose GCS is at `address`."""
    return [*argv[:2], f"--address={address}", *without_option(argv[2:], "--address")]


def with_redis_credentials(argv: Sequence[str], username: str, password: str) -> list[str]:
    """`argv` with any Redis user name and password replaced by these (for a fenced GCS)."""
    args = without_option(without_option(argv, "--redis-username"), "--redis-password")
    return [*args, f"--redis-username={username}", f"--redis-password={password}"]


def redact(argv: Sequence[str]) -> list[str]:
    """argv with secret option values replaced by `***`, fit for a log line."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in SECRET_OPTIONS:
            out.append(arg)
            hide_next = True
        elif any(arg.startswith(opt + "=") for opt in SECRET_OPTIONS):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out
