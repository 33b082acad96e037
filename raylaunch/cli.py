"""`ray-ha`: the thin command-line layer. Parse, build the config, call in, map outcomes to exit codes.

Exit codes: 0 clean stop, 1 runtime error (e.g. Redis unreachable), 2 usage or configuration error,
3 leadership lost, 4 head processes died. Passthrough mode exits with `ray start`'s own code.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import signal
import subprocess
import sys
from typing import NoReturn, Optional, Sequence

import click

from raylaunch import __version__
from raylaunch.campaign import Campaign, Outcome
from raylaunch.config import (TIMING_SOURCES, ConfigError, Identity, Timing, identity_from, load_env_file,
                              parse_bool, timing_from)
from raylaunch.head import RayHead
from raylaunch.lease import Holder, LeaseStoreError, RedisLease, RedisUnavailable
from raylaunch.raycmd import HeadCommand, build_head_command, option_value, parse_version, redact
from raylaunch.redisconn import RedisTarget, connect, target_from
from raylaunch.stopflag import StopFlag
from raylaunch.supervisor import become_subreaper

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_LOST, EXIT_HEAD_DIED = 0, 1, 2, 3, 4
OUTCOME_CODES = {Outcome.STOPPED: EXIT_OK, Outcome.FAILED: EXIT_RUNTIME,
                 Outcome.LOST: EXIT_LOST, Outcome.HEAD_DIED: EXIT_HEAD_DIED}
CONNECT_ATTEMPTS = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("ray-ha")

TIMING_HELP = {
    "lease_duration": "How long the lease lasts without renewal [15s].",
    "renew_deadline": "Leader kills its head if no renewal succeeded for this long [10s].",
    "retry_period": "How often to renew / try to acquire [2s].",
    "redis_timeout": "Timeout of every Redis call [2s].",
    "reconnect_timeout": "Raylet reconnect timeout given to the head [lease + 45s].",
    "stop_grace": "On SIGTERM, time the head gets to stop before SIGKILL [10s].",
    "wait_old_gcs": "How long a new leader waits for a still-answering old GCS before starting anyway [3 days].",
}

MAIN_HELP = f"""Hot-standby Ray heads behind a Redis lease; a drop-in for `ray start`.

Run the same `ray-ha start --head ...` on several machines with RAY_ENABLE_HEAD_HA=1 and
RAY_REDIS_ADDRESS set: one wins the lease and runs the real head, the others stand by.

`ray-ha start` takes every `ray start` option, passed through untouched, plus its own
(details: ray-ha start --help):

\b
{chr(10).join("  " + flag for flag, _ in TIMING_SOURCES.values())}
  --ha-node-name
  --ha-key
  --ha-env-file
"""

START_HELP = """Start Ray; with RAY_ENABLE_HEAD_HA on and --head, campaign for the head.

Every option not starting with --ha- goes to `ray start` untouched (see `ray start --help`).
Without RAY_ENABLE_HEAD_HA or without --head this simply runs `ray start`. Durations accept
15, 15s or 1500ms; the RAY_HA_*_MS environment names take milliseconds.

Exit codes: 0 clean stop, 1 runtime error, 2 usage/config error, 3 leadership lost,
4 head processes died.
"""


def _timing_options(func):
    """One --ha-<timing> option per Timing field, named after its flag and environment variable."""
    for field_name, (flag, env_name) in reversed(list(TIMING_SOURCES.items())):
        func = click.option(flag, field_name, metavar="DURATION",
                            help=f"{TIMING_HELP[field_name]} Env: {env_name}.")(func)
    return func


def _version_text() -> str:
    try:
        ray = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        ray = "not installed"
    return f"ray-ha {__version__} (ray {ray})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit(0)


@click.group(help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print ray-ha's and Ray's versions.")
def main() -> None:
    """The `ray-ha` command group."""


@main.command("start", help=START_HELP,
              context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@_timing_options
@click.option("--ha-node-name", metavar="NAME", help="This candidate's name [host name]. Env: RAY_HA_NODE_NAME.")
@click.option("--ha-key", metavar="KEY", help="Lease key [ray-ha:<namespace>:leader]. Env: RAY_HA_LEADER_KEY.")
@click.option("--ha-env-file", metavar="PATH", help="Read settings from this file [./.env if present].")
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def start(ray_args: tuple[str, ...], ha_node_name: Optional[str], ha_key: Optional[str],
          ha_env_file: Optional[str], **timing_flags: Optional[str]) -> None:
    """Parse, then either exec `ray start` or campaign; user mistakes end as one line and exit 2."""
    try:
        code = run_start(list(ray_args), ha_env_file, ha_node_name, ha_key, timing_flags)
    except (ConfigError, LeaseStoreError) as exc:
        fail(str(exc), EXIT_USAGE)
    except RedisUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    sys.exit(code)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr and the exit code; no traceback for anything a user can fix."""
    click.echo(f"ray-ha: error: {message}", err=True)
    sys.exit(code)


def run_start(ray_args: list[str], env_file: Optional[str], node_flag: Optional[str],
              key_flag: Optional[str], timing_flags: dict[str, Optional[str]]) -> int:
    """Decide passthrough or HA, validate everything, then campaign."""
    unknown = next((a for a in ray_args if a.startswith("--ha-")), None)
    if unknown:
        raise ConfigError(f"no such option: {unknown.split('=')[0]} (see ray-ha start --help)")
    load_env_file(env_file)
    enabled = parse_bool("RAY_ENABLE_HEAD_HA", os.environ.get("RAY_ENABLE_HEAD_HA"))
    if not enabled or "--head" not in ray_args:
        exec_ray(["start", *ray_args])
    timing = timing_from(timing_flags, os.environ)
    identity = identity_from(node_flag, key_flag, os.environ)
    ray_exe = find_ray()
    command = build_head_command(ray_exe, ray_args, ray_version(ray_exe),
                                 timing.effective_reconnect_timeout, os.environ)
    target = target_from(os.environ, option_value(ray_args, "--redis-username"),
                         option_value(ray_args, "--redis-password"))
    return campaign(command, target, identity, timing, option_value(ray_args, "--node-ip-address"))


def find_ray() -> str:
    """The `ray` executable on PATH, or a usage error saying how to get it."""
    ray = shutil.which("ray")
    if ray is None:
        raise ConfigError("`ray` not found on PATH: install Ray (pip install 'ray[default]')")
    return ray


def exec_ray(args: Sequence[str]) -> NoReturn:
    """Replace this process with `ray <args>`: same arguments, same exit code, no extra process."""
    ray = find_ray()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(ray, ["ray", *args])


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


def campaign(command: HeadCommand, target: RedisTarget, identity: Identity, timing: Timing,
             node_ip: Optional[str]) -> int:
    """Connect, then run the campaign until leadership ends; returns the exit code."""
    setup_logging()
    stop = StopFlag()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    for warning in command.warnings:
        log.warning("%s", warning)
    if not become_subreaper():
        log.warning("cannot become a child subreaper; orphaned head processes may escape supervision")
    lease = connect_lease(target, identity, timing, stop)
    log.info("campaigning as %s for %s on %s (lease %gs, renew deadline %gs, retry %gs)",
             identity.node_name, identity.key, target.display, timing.lease_duration,
             timing.renew_deadline, timing.retry_period)
    log.info("head command: %s", " ".join(redact(command.argv)))
    try:
        outcome = Campaign(lease, RayHead(command, node_ip), timing, stop).run()
    finally:
        lease.close()
    return OUTCOME_CODES[outcome]


def connect_lease(target: RedisTarget, identity: Identity, timing: Timing,
                  stop: StopFlag) -> RedisLease:
    """A checked lease handle; Redis gets a few quiet tries, one second apart, before we give up."""
    me = Holder.me(identity.node_name, identity.host)
    lease = RedisLease(connect(target, timing.redis_timeout), identity.key, me, timing.lease_duration)
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            lease.check()
            return lease
        except RedisUnavailable as exc:
            if attempt == CONNECT_ATTEMPTS or stop.is_set():
                raise RedisUnavailable(f"cannot reach Redis at {target.display}: {exc}") from None
            stop.wait(1.0)
        except LeaseStoreError as exc:
            raise LeaseStoreError(f"Redis at {target.display}: {exc}") from None
    raise AssertionError("unreachable")


def setup_logging() -> None:
    """One line per event on stderr, stamped, with the launcher's pid."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s ray-ha[%(process)d] %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
