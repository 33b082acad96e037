"""`ray-ha`: the thin command-line layer. Parse, build the config, call in, map outcomes to exit codes.

Exit codes of `start`: 0 clean stop, 1 runtime error (e.g. Redis unreachable), 2 usage or configuration
error, 3 leadership lost, 4 head processes died. Passthrough mode exits with `ray start`'s own code.
Heavy imports (redis, the campaign) happen inside the commands that need them, so `ray-ha health`
stays fast enough for a probe.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from typing import Any, Callable, NoReturn, Optional

import click

from raylaunch import __version__
from raylaunch.config import REPORTING_SOURCES, SAFETY_SOURCES, TIMING_SOURCES, ConfigError, load_env_file

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

TIMING_HELP = {
    "lease_duration": "How long the lease lasts without renewal [15s].",
    "renew_deadline": "Leader kills its head if no renewal succeeded for this long [10s].",
    "retry_period": "How often to renew / try to acquire [2s].",
    "redis_timeout": "Timeout of every Redis call [2s].",
    "reconnect_timeout": "Raylet reconnect timeout given to the head [lease + 45s].",
    "stop_grace": "On SIGTERM, time the head gets to stop before SIGKILL [10s].",
    "wait_old_gcs": "How long a new leader waits for a still-answering old GCS before starting anyway [3 days].",
}
REPORTING_HELP = {
    "log_format": ("FORMAT", "Log lines as text or json [text]."),
    "http_port": ("PORT", "Serve /healthz, /leader and /metrics on this port [off]."),
    "http_host": ("HOST", "Address the HTTP endpoint binds to [0.0.0.0]."),
    "on_elected": ("CMD", "Shell command run when this node's GCS starts serving as leader."),
    "on_demoted": ("CMD", "Shell command run when this node stops leading."),
    "hook_timeout": ("DURATION", "Kill a hook still running after this long [30s]."),
}
SAFETY_HELP = {
    "min_replicas": ("N", "A lease write counts once Redis WAIT confirms it on N replicas [0]."),
    "fence": ("none|acl", "acl: a Redis ACL user per epoch for the GCS; a new leader locks out the old one [none]."),
    "prewarm": ("on|off", "on: a standby keeps `ray start` imported, ~1 s faster takeover for ~80 MiB [off]."),
}
OTHER_HA_FLAGS = ("--ha-node-name", "--ha-key", "--ha-env-file")
COMPLETION_SHELLS = ("bash", "zsh", "fish")
#: The variable click's completion scripts set when they call ray-ha back.
COMPLETE_VAR = "_RAY_HA_COMPLETE"

MAIN_HELP = f"""Hot-standby Ray heads behind a Redis lease; a drop-in for `ray start`.

Run the same `ray-ha start --head ...` on several machines with RAY_ENABLE_HEAD_HA=1 and
RAY_REDIS_ADDRESS set: one wins the lease and runs the real head, the others stand by.

`ray-ha start` takes every `ray start` option, passed through untouched, plus its own
(details: ray-ha start --help):

\b
{chr(10).join("  " + flag for flag, _ in [*TIMING_SOURCES.values(), *REPORTING_SOURCES.values(),
                                          *SAFETY_SOURCES.values()])}
{chr(10).join("  " + flag for flag in OTHER_HA_FLAGS)}
  --ha-follow
"""

START_HELP = """Start Ray; with RAY_ENABLE_HEAD_HA on and --head, campaign for the head.

Every option not starting with --ha- goes to `ray start` untouched (see `ray start --help`).
Without RAY_ENABLE_HEAD_HA or without --head this simply runs `ray start`; with --ha-follow
(no --head) it starts a worker node that joins whoever leads and re-joins after a failover. With
--block the supervisor stays in the foreground; without it (as under `ray up`) it detaches, and
this command returns once this node leads (head serving), stands by, or has joined the leader.
Durations accept 15, 15s or 1500ms; the RAY_HA_*_MS environment names take milliseconds.

Exit codes: 0 clean stop (or, without --block, leading/standing by), 1 runtime error,
2 usage/config error, 3 leadership lost, 4 head processes died.
"""


def _timing_options(func):
    """One --ha-<timing> option per Timing field, named after its flag and environment variable."""
    for field_name, (flag, env_name) in reversed(list(TIMING_SOURCES.items())):
        func = click.option(flag, field_name, metavar="DURATION",
                            help=f"{TIMING_HELP[field_name]} Env: {env_name}.")(func)
    return func


def _reporting_options(func):
    """One --ha-<reporting> option per Reporting field."""
    for field_name, (flag, env_name) in reversed(list(REPORTING_SOURCES.items())):
        metavar, text = REPORTING_HELP[field_name]
        kind = click.Choice(["text", "json"]) if field_name == "log_format" else None
        func = click.option(flag, field_name, metavar=metavar, type=kind,
                            help=f"{text} Env: {env_name}.")(func)
    return func


def _safety_options(func):
    """One --ha-<safety> option per Safety field."""
    for field_name, (flag, env_name) in reversed(list(SAFETY_SOURCES.items())):
        metavar, text = SAFETY_HELP[field_name]
        func = click.option(flag, field_name, metavar=metavar, help=f"{text} Env: {env_name}.")(func)
    return func


def _redis_options(func):
    """What status and switchover need to reach Redis, named as in `ray start`."""
    func = click.option("--redis-password", metavar="PASSWORD", help="Redis password [RAY_REDIS_PASSWORD].")(func)
    func = click.option("--redis-username", metavar="USER", help="Redis user name.")(func)
    func = click.option("--ha-env-file", metavar="PATH", help="Read settings from this file [./.env if present].")(func)
    return click.option("--ha-key", metavar="KEY", help="Lease key [ray-ha:<namespace>:leader].")(func)


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


class OneLineErrors(click.Group):
    """Click's usage errors as one `ray-ha: error:` line and exit 2, like every other error of ours.

    Bare `ray-ha` still prints the help (exit 2, as click does).
    """

    def main(self, args: Optional[list[str]] = None, *rest: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        bare = not (sys.argv[1:] if args is None else args) and COMPLETE_VAR not in os.environ
        if bare:  # `ray-ha` alone: help and exit 2 (click < 8.2 would exit 0)
            with click.Context(self, info_name=kwargs.get("prog_name", "ray-ha")) as ctx:
                click.echo(ctx.get_help())
            sys.exit(EXIT_USAGE)
        try:
            code = super().main(args, *rest, **kwargs)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", EXIT_RUNTIME)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineErrors, help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print ray-ha's and Ray's versions.")
def main() -> None:
    """The `ray-ha` command group."""


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr and the exit code; no traceback for anything a user can fix."""
    click.echo(f"ray-ha: error: {message}", err=True)
    sys.exit(code)


def guard_light(call: Callable[[], None]) -> None:
    """Run a step that can only fail on the user's input, mapping ConfigError to one line (exit 2)."""
    try:
        call()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def guard(call: Callable[[], int]) -> NoReturn:
    """Run a command body, mapping our exception types to one line and an exit code."""
    from raylaunch.launcher import RuntimeProblem
    from raylaunch.lease import LeaseStoreError, RedisUnavailable
    from raylaunch.localstate import AlreadyRunning

    try:
        code = call()
    except (AlreadyRunning, RuntimeProblem) as exc:
        fail(str(exc), EXIT_RUNTIME)
    except (ConfigError, LeaseStoreError) as exc:
        fail(str(exc), EXIT_USAGE)
    except RedisUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    sys.exit(code)


@main.command("start", help=START_HELP,
              context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@_timing_options
@_reporting_options
@_safety_options
@click.option("--ha-node-name", metavar="NAME", help="This candidate's name [host name]. Env: RAY_HA_NODE_NAME.")
@click.option("--ha-key", metavar="KEY", help="Lease key [ray-ha:<namespace>:leader]. Env: RAY_HA_LEADER_KEY.")
@click.option("--ha-env-file", metavar="PATH", help="Read settings from this file [./.env if present].")
@click.option("--ha-follow", is_flag=True,
              help="Worker node (no --head): join whoever leads, re-join after a failover. Needs RAY_REDIS_ADDRESS.")
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def start(ray_args: tuple[str, ...], ha_node_name: Optional[str], ha_key: Optional[str],
          ha_env_file: Optional[str], ha_follow: bool, **flags: Optional[str]) -> None:
    """Parse, then exec `ray start`, campaign or follow in the foreground, or detach a supervisor."""
    from raylaunch.passthrough import pass_through_unless_ha

    guard_light(lambda: pass_through_unless_ha(ray_args, ha_env_file, ha_follow))  # before the heavy imports
    from raylaunch.launcher import StartRequest, run_start

    timing = {k: v for k, v in flags.items() if k in TIMING_SOURCES}
    reporting = {k: v for k, v in flags.items() if k in REPORTING_SOURCES}
    safety = {k: v for k, v in flags.items() if k in SAFETY_SOURCES}
    sources = {**TIMING_SOURCES, **REPORTING_SOURCES, **SAFETY_SOURCES}
    ha_argv = [f"{sources[k][0]}={v}" for k, v in flags.items() if v is not None]
    ha_argv += [f"{flag}={value}" for flag, value in zip(OTHER_HA_FLAGS, (ha_node_name, ha_key, ha_env_file))
                if value is not None]
    request = StartRequest(ray_args=list(ray_args), env_file=ha_env_file, node=ha_node_name, key=ha_key,
                           timing=timing, reporting=reporting, safety=safety,
                           ha_argv=ha_argv + ["--ha-follow"] * ha_follow, follow=ha_follow)
    guard(lambda: run_start(request))


@main.command("stop", context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@click.option("--ha-node-name", metavar="NAME", help="Stop only this node's supervisor [all on this machine].")
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def stop(ha_node_name: Optional[str], ray_args: tuple[str, ...]) -> None:
    """Step down gracefully, then run `ray stop [options]`.

    Every ray-ha supervisor on this machine (leader or standby, foreground or detached) is asked to
    stop: a leader stops its head and releases the lease. Then `ray stop` runs with the options given,
    and its exit code is ours (1 if a supervisor did not stop in time).
    """
    from raylaunch.control import stop_supervisors
    from raylaunch.passthrough import exec_ray, find_ray
    from raylaunch.localstate import run_dir

    def body() -> int:
        load_env_file(None)
        stopped, failed = stop_supervisors(run_dir(os.environ), ha_node_name)
        for line in stopped:
            click.echo(f"ray-ha: {line}")
        for line in failed:
            click.echo(f"ray-ha: error: {line}", err=True)
        if not failed:
            exec_ray(["stop", *ray_args])
        import subprocess
        subprocess.run([find_ray(), "stop", *ray_args])
        return EXIT_RUNTIME

    guard(body)


@main.command("completion", context_settings={"help_option_names": ["--help"]})
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    The script matches the click this ray-ha runs on, so generate it on the machine that uses it:
    ray-ha completion bash > /etc/bash_completion.d/ray-ha (again after upgrading ray-ha or click).
    """
    from click.shell_completion import get_completion_class

    script_class = get_completion_class(shell)
    assert script_class is not None  # click.Choice admits only the shells click knows
    click.echo(script_class(main, {}, "ray-ha", COMPLETE_VAR).source())


@main.command("health", context_settings={"help_option_names": ["--help"]})
@click.option("--role", type=click.Choice(["leader", "any"]), default="leader", show_default=True,
              help="leader: this node leads and its GCS accepts connections (readiness); "
                   "any: the supervisor is alive and its loop is not stuck (liveness).")
@click.option("--ha-node-name", metavar="NAME", help="Probe this node's supervisor [the one on this machine].")
def health(role: str, ha_node_name: Optional[str]) -> None:
    """Probe this machine's supervisor: exit 0 if healthy, 1 if not. No Redis, no Ray."""
    from raylaunch.control import health as probe
    from raylaunch.localstate import run_dir

    load_env_file(None)  # RAY_HA_RUN_DIR may come from ./.env, as for start
    ok, why = probe(run_dir(os.environ), ha_node_name, role)
    click.echo(why, err=not ok)
    sys.exit(EXIT_OK if ok else EXIT_RUNTIME)


def _redis_for(ha_key: Optional[str], ha_env_file: Optional[str], username: Optional[str],
               password: Optional[str]):
    """(client, keys, target) for the cluster named by the environment; nothing held."""
    from raylaunch.config import identity_from
    from raylaunch.lease import Keys, guarded
    from raylaunch.redisconn import connect, target_from

    load_env_file(ha_env_file)
    target = target_from(os.environ, username, password)
    key = identity_from(None, ha_key, os.environ).key
    return guarded(lambda: connect(target, 2.0), key), Keys(key), target


@main.command("status", context_settings={"help_option_names": ["--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON (schema in the README).")
@_redis_options
def status(as_json: bool, ha_key: Optional[str], ha_env_file: Optional[str], redis_username: Optional[str],
           redis_password: Optional[str]) -> None:
    """Who leads, who stands by, recent leaders, and this machine's supervisors.

    Reads RAY_REDIS_ADDRESS like `ray-ha start`. Exit 0 when a leader exists, 1 otherwise.
    """
    from raylaunch.clusterview import read_view, render
    from raylaunch.localstate import local_supervisors, run_dir

    def body() -> int:
        client, keys, target = _redis_for(ha_key, ha_env_file, redis_username, redis_password)
        view = read_view(client, keys, target.display, local_supervisors(run_dir(os.environ)))
        click.echo(json.dumps(view, indent=2, sort_keys=True) if as_json else render(view))
        return EXIT_OK if view["leader"] else EXIT_RUNTIME

    guard(body)


@main.command("switchover", context_settings={"help_option_names": ["--help"]})
@click.option("--to", "target", metavar="NODE", help="The standby to take over [any standby].")
@click.option("--timeout", default=60.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the new leader's GCS to serve.")
@_redis_options
def switchover(target: Optional[str], timeout: float, ha_key: Optional[str], ha_env_file: Optional[str],
               redis_username: Optional[str], redis_password: Optional[str]) -> None:
    """Planned handover: the leader steps down, a standby (or NODE) takes over.

    The old leader stops its head gracefully, releases the lease and stands by again. Exit 0 once
    the new leader's GCS serves, 1 if the switchover could not be asked for or did not finish in time.
    """
    from raylaunch.clusterview import SwitchoverError, await_switchover, request_switchover

    def body() -> int:
        client, keys, _ = _redis_for(ha_key, ha_env_file, redis_username, redis_password)
        try:
            request = request_switchover(client, keys, target, ttl=timeout)
        except SwitchoverError as exc:
            fail(str(exc), EXIT_RUNTIME)
        click.echo(f"ray-ha: asked {request.source} (epoch {request.epoch}) to hand over to "
                   f"{request.target or 'any standby'}")
        leader = await_switchover(client, keys, request, timeout)
        if leader is None:
            fail(f"no new leader serving within {timeout:g}s; the request was withdrawn", EXIT_RUNTIME)
        click.echo(f"ray-ha: {leader['node']} leads (epoch {leader['epoch']}), GCS serving at "
                   f"{leader['gcs_address']}")
        return EXIT_OK

    guard(body)
