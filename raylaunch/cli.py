"""`ray-ha`: the thin command-line layer. Parse, build the config, call in, map outcomes to exit codes.

Exit codes of `start`: 0 clean stop, 1 runtime error (e.g. Redis unreachable), 2 usage or configuration
error, 3 leadership lost, 4 head processes died. Passthrough mode exits with `ray start`'s own code.
Heavy imports (redis, the campaign) happen inside the commands that need them, so `ray-ha health`
stays fast enough for a probe.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, TypeVar

import click

from raylaunch import __version__
from raylaunch.config import IDENTITY, START_GROUPS, ConfigError, Exit, Group, Setting
from raylaunch.envfile import load_env_file

COMPLETION_SHELLS = ("bash", "zsh", "fish")
#: The variable click's completion scripts set when they call ray-ha back.
COMPLETE_VAR = "_RAY_HA_COMPLETE"

MAIN_HELP = f"""Hot-standby Ray heads behind a Redis lease; a drop-in for `ray start`.

Run the same `ray-ha start --head ...` on several machines with RAY_ENABLE_HEAD_HA=1 and
RAY_REDIS_ADDRESS set: one wins the lease and runs the real head, the others stand by.

`ray-ha start` takes every `ray start` option, passed through untouched, plus its own
(details: ray-ha start --help):

\b
{chr(10).join("  " + s.flag for group in START_GROUPS for s in group.settings)}
  --ha-env-file
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

if TYPE_CHECKING:  # the light paths (passthrough, health) import no Redis
    from raylaunch.operate import RedisChoice

#: A command function, as click's decorators take and give it back.
F = TypeVar("F", bound=Callable[..., Any])


def _option(group: Group[Any], setting: Setting) -> Callable[[F], F]:
    """A click option for one setting of `group`, its help naming the default and the environment variable."""
    kind = click.Choice(list(setting.choices)) if setting.choices else None
    return click.option(setting.flag, setting.field, metavar=setting.metavar, type=kind,
                        help=f"{group.help_of(setting)} Env: {setting.env}.")


ENV_FILE_OPTION = click.option("--ha-env-file", metavar="PATH",
                               help="Read settings from this file [./.env if present].")


def _settings_options(func: F) -> F:
    """One --ha- option per setting of every group `start` takes (config's tables)."""
    for group, setting in reversed([(g, s) for g in START_GROUPS for s in g.settings]):
        func = _option(group, setting)(func)
    return func


def _redis_options(func: Callable[..., None]) -> Callable[..., None]:
    """What the operator's commands need to reach Redis, named as in `ray start`; the command gets them
    as one RedisChoice, `redis`."""
    @functools.wraps(func)
    def command(*args: Any, key: Optional[str], ha_env_file: Optional[str], redis_username: Optional[str],
                redis_password: Optional[str], **kwargs: Any) -> None:
        from raylaunch.operate import RedisChoice

        func(*args, redis=RedisChoice(key, ha_env_file, redis_username, redis_password), **kwargs)

    wrapped: Callable[..., None] = click.option("--redis-password", metavar="PASSWORD",
                                                help="Redis password [RAY_REDIS_PASSWORD].")(command)
    wrapped = click.option("--redis-username", metavar="USER", help="Redis user name.")(wrapped)
    wrapped = ENV_FILE_OPTION(wrapped)
    key = next(s for s in IDENTITY.settings if s.field == "key")
    return _option(IDENTITY, key)(wrapped)


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

    def main(self, args: Optional[list[str]] = None, *rest: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]  # click: -> Any; ours always exits
        kwargs["standalone_mode"] = False
        bare = not (sys.argv[1:] if args is None else args) and COMPLETE_VAR not in os.environ
        if bare:  # `ray-ha` alone: help and exit 2 (click < 8.2 would exit 0)
            with click.Context(self, info_name=kwargs.get("prog_name", "ray-ha")) as ctx:
                click.echo(ctx.get_help())
            sys.exit(Exit.USAGE)
        try:
            code = super().main(args, *rest, **kwargs)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", Exit.RUNTIME)
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
        fail(str(exc), Exit.USAGE)


def guard(call: Callable[[], int]) -> NoReturn:
    """Run a command body, mapping our exception types to one line and an exit code."""
    from raylaunch.local.state import AlreadyRunning
    from raylaunch.operate import CommandFailed
    from raylaunch.store.errors import RedisRefused, RedisUnavailable
    from raylaunch.supervisor import RuntimeProblem

    try:
        code = call()
    except (AlreadyRunning, RuntimeProblem, CommandFailed) as exc:
        fail(str(exc), Exit.RUNTIME)
    except (ConfigError, RedisRefused) as exc:
        fail(str(exc), Exit.USAGE)
    except RedisUnavailable as exc:
        fail(str(exc), Exit.RUNTIME)
    sys.exit(code)


@main.command("start", help=START_HELP,
              context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@_settings_options
@ENV_FILE_OPTION
@click.option("--ha-follow", is_flag=True,
              help="Worker node (no --head): join whoever leads, re-join after a failover. Needs RAY_REDIS_ADDRESS.")
@click.argument("ray_args", nargs=-1, type=click.UNPROCESSED)
def start(ray_args: tuple[str, ...], ha_env_file: Optional[str], ha_follow: bool, **flags: Optional[str]) -> None:
    """Parse, then exec `ray start`, campaign or follow in the foreground, or detach a supervisor."""
    from raylaunch.start.passthrough import pass_through_unless_ha

    guard_light(lambda: pass_through_unless_ha(ray_args, ha_env_file, ha_follow))  # before the heavy imports
    from raylaunch.plan import StartRequest
    from raylaunch.start.run import run_start

    flag_of = {s.field: s.flag for group in START_GROUPS for s in group.settings}
    ha_argv = [f"{flag_of[k]}={v}" for k, v in flags.items() if v is not None]
    ha_argv += [f"--ha-env-file={ha_env_file}"] * (ha_env_file is not None) + ["--ha-follow"] * ha_follow
    request = StartRequest(ray_args=list(ray_args), env_file=ha_env_file, flags=flags, ha_argv=ha_argv,
                           follow=ha_follow)
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
    from raylaunch.local.control import stop_supervisors
    from raylaunch.proc.rayexe import exec_ray, find_ray

    def body() -> int:
        load_env_file(None)
        report = stop_supervisors(os.environ, ha_node_name)
        for line in report.notes:
            click.echo(f"ray-ha: note: {line}", err=True)
        for line in report.stopped:
            click.echo(f"ray-ha: {line}")
        for line in report.failed:
            click.echo(f"ray-ha: error: {line}", err=True)
        if not report.failed:
            exec_ray(["stop", *ray_args])
        import subprocess
        subprocess.run([find_ray(), "stop", *ray_args], check=False)
        return Exit.RUNTIME

    guard(body)


@main.command("completion", context_settings={"help_option_names": ["--help"]})
@click.argument("shell", type=click.Choice(COMPLETION_SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    The script matches the click this ray-ha runs on. Load it from your shell's startup file, e.g.
    eval "$(ray-ha completion bash)"; packaged installs use the loaders in completions/, which ask
    for it when the shell first completes ray-ha.
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
    from raylaunch.local.control import health as probe

    try:
        load_env_file(None)  # RAY_HA_RUN_DIR may come from ./.env, as for start
        ok, why = probe(os.environ, ha_node_name, role)
    except ConfigError as exc:  # an unsafe run dir or env file
        fail(str(exc), Exit.USAGE)
    click.echo(why, err=not ok)
    sys.exit(Exit.OK if ok else Exit.RUNTIME)


@main.command("status", context_settings={"help_option_names": ["--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON (schema: docs/operations.md).")
@click.option("--watch", "every", is_flag=False, flag_value=2.0, type=click.FloatRange(min=0.1), default=None,
              metavar="[SECONDS]", help="Show the view again every SECONDS [2], in place, until Ctrl-C.")
@_redis_options
def status(as_json: bool, every: Optional[float], redis: RedisChoice) -> None:
    """Who leads, who stands by, a pause, recent leadership changes, and this machine's supervisors.

    Reads RAY_REDIS_ADDRESS like `ray-ha start`. Exit 0 when a leader exists, 1 otherwise; with
    --watch, 0 when Ctrl-C ends it.
    """
    from raylaunch.operate import show_status, watch_status

    if every is not None and as_json:
        fail("--watch shows the table; --json prints the view once", Exit.USAGE)
    guard(lambda: show_status(redis, as_json) if every is None else watch_status(redis, every))


@main.command("history", context_settings={"help_option_names": ["--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print the changes as a JSON list (docs/operations.md).")
@click.option("-n", "--lines", "count", type=click.IntRange(1, None), default=20, show_default=True, metavar="N",
              help="How many changes, newest first (Redis keeps the last 50).")
@_redis_options
def history(as_json: bool, count: int, redis: RedisChoice) -> None:
    """Every leadership change, newest first: the epoch, the new leader and the one before, why the
    tenure before ended, and how long no head served. Exit 0, 1 Redis unreachable, 2 bad input."""
    from raylaunch.operate import show_history

    guard(lambda: show_history(redis, as_json, count))


@main.command("switchover", context_settings={"help_option_names": ["--help"]})
@click.option("--to", "target", metavar="NODE", help="The standby to take over [the highest priority].")
@click.option("--timeout", default=60.0, show_default=True, metavar="SECONDS",
              help="How long to wait for the new leader's GCS to serve; with --at, how long after TIME "
                   "the plan stands if no leader acts on it.")
@click.option("--at", "when", metavar="TIME", help="Plan it for TIME (2026-12-07T03:00, 03:00 = the next "
              "03:00 here, +2h) and return; the leader of that moment hands over.")
@click.option("--cancel", is_flag=True, help="Withdraw the planned switchover and any pending request.")
@_redis_options
def switchover(target: Optional[str], timeout: float, when: Optional[str], cancel: bool,
               redis: RedisChoice) -> None:
    """Planned handover: the leader steps down, a standby (or NODE) takes over; also while paused.

    The old leader stops its head gracefully, releases the lease and stands by again. Exit 0 once
    the new leader's GCS serves (with --at: once planned; --cancel: always), 1 if it could not be
    asked for or did not finish in time, 2 bad input.
    """
    from raylaunch.operate import cancel_switchover, parse_when, plan_switchover, switch_over

    if cancel and (when or target):
        fail("--cancel takes no --to or --at", Exit.USAGE)
    if cancel:
        guard(lambda: cancel_switchover(redis))
    if when is None:
        guard(lambda: switch_over(redis, target, timeout))
    at: list[float] = []
    guard_light(lambda: at.append(parse_when(when)))
    guard(lambda: plan_switchover(redis, target, at[0], timeout))


@main.command("pause", context_settings={"help_option_names": ["--help"]})
@click.option("--for", "duration", metavar="DURATION",
              help="End the pause by itself after this long (90s, 15m, 2h, 1d) [no end: warns].")
@click.option("--reason", default="", metavar="TEXT", help="Why, shown by status.")
@_redis_options
def pause(duration: Optional[str], reason: str, redis: RedisChoice) -> None:
    """Maintenance mode: no candidate takes the lease by itself until `ray-ha resume` or DURATION.

    The leader keeps renewing and its head runs; if the head dies meanwhile, the leader keeps the lease
    and leaves it down (no failover) until the resume. `ray-ha switchover` still works. Pausing a
    paused cluster replaces its end. Exit 0 paused, 1 Redis unreachable, 2 bad input.
    """
    from raylaunch.operate import parse_span
    from raylaunch.operate import pause as pause_cluster

    seconds: list[Optional[float]] = [None]

    def check() -> None:
        seconds[0] = parse_span(duration) if duration is not None else None

    guard_light(check)
    guard(lambda: pause_cluster(redis, seconds[0], reason))


@main.command("resume", context_settings={"help_option_names": ["--help"]})
@_redis_options
def resume(redis: RedisChoice) -> None:
    """End maintenance mode: automatic takeover is on again (a leader whose head died while paused now
    hands over). Exit 0 (also when the cluster was not paused), 1 Redis unreachable, 2 bad input."""
    from raylaunch.operate import resume as resume_cluster

    guard(lambda: resume_cluster(redis))


@main.command("address", context_settings={"help_option_names": ["--help"]})
@click.option("--gcs", "service", flag_value="gcs", default=True, help="The GCS, for `ray start --address` [default].")
@click.option("--dashboard", "service", flag_value="dashboard",
              help="The dashboard and Jobs API, for `ray job submit --address http://...`.")
@click.option("--client", "service", flag_value="client", help="The Ray Client server, for `ray://...`.")
@_redis_options
def address(service: str, redis: RedisChoice) -> None:
    """Print host:port of a service on the head that leads now, for scripts:

    ray job submit --address "http://$(ray-ha address --dashboard)" -- python job.py

    Reads RAY_REDIS_ADDRESS like `ray-ha start`. Exit 0 with the address, 1 when no leader serves (or
    it serves no such service).
    """
    from raylaunch.operate import print_address

    guard(lambda: print_address(redis, service))
