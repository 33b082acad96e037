"""The operator's commands on one cluster once cli.py has parsed them: status, history, switchover, pause,
resume, address. Each reads or writes through store/, prints its answer and returns an exit code; a
refusal is CommandFailed (one line on stderr, exit 1)."""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Optional

import click

from raylaunch.config import IDENTITY, TIMING, ConfigError, Exit, parse_duration, settings_from
from raylaunch.envfile import load_env_file
from raylaunch.local.peerenv import redis_of_local_supervisor
from raylaunch.local.state import machine_supervisors
from raylaunch.status import change_json, history_table, render, status_json
from raylaunch.store.connect import target_from
from raylaunch.store.errors import RedisRefused, RedisUnavailable
from raylaunch.store.keyspace import Keyspace, open_keyspace
from raylaunch.store.leader import read_leadership
from raylaunch.store.records import Scheduled, SwitchoverError
from raylaunch.store.view import (
    await_switchover,
    pause_cluster,
    read_cluster,
    read_history,
    request_switchover,
    resume_cluster,
    schedule_switchover,
)
from raylaunch.store.view import cancel_switchover as withdraw_switchover

#: A pause's length may also be given in these units (beside config's 90, 90s, 1500ms).
SPAN_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0}


class CommandFailed(Exception):
    """What the operator asked for cannot be done now (no leader, a request pending): exit 1."""


@dataclass(frozen=True)
class RedisChoice:
    """Which cluster a command speaks to, as its options say (the rest from the environment)."""

    key: Optional[str] = None
    env_file: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None

    def keyspace(self) -> Keyspace:
        """The cluster named by the environment, else by this machine's running supervisor; nothing held."""
        load_env_file(self.env_file)
        env: dict[str, str] = dict(os.environ)
        if "RAY_REDIS_ADDRESS" not in env:  # as under `ray up`: the start command alone said where Redis is
            env.update(redis_of_local_supervisor(env))
        target = target_from(env, self.username, self.password)
        timeout = settings_from(TIMING, {}, env).redis_timeout  # the one a supervisor here would use
        return open_keyspace(target, settings_from(IDENTITY, {"key": self.key}, env).key, timeout)


def show_status(redis: RedisChoice, as_json: bool) -> int:
    """Who leads, who stands by, the pause, recent changes, this machine's supervisors; 1 if nobody leads."""
    keyspace = redis.keyspace()
    here = machine_supervisors(os.environ)
    for line in here.notes:
        click.echo(f"ray-ha: note: {line}", err=True)
    view = status_json(read_cluster(keyspace), keyspace.display, here.supervisors)
    click.echo(json.dumps(view, indent=2, sort_keys=True) if as_json else render(view))
    return Exit.OK if view["leader"] else Exit.RUNTIME


#: Terminal controls for --watch: clear the screen once; then home, erase each line's rest, erase below.
CLEAR, HOME, ERASE_LINE, ERASE_BELOW = "\x1b[2J", "\x1b[H", "\x1b[K", "\x1b[J"


def watch_status(redis: RedisChoice, every: float) -> int:
    """The status table again every `every` s, in place on a terminal (blocks otherwise), until Ctrl-C.
    Redis trouble is shown in the frame and the watch goes on."""
    keyspace, terminal = redis.keyspace(), sys.stdout.isatty()
    try:
        click.echo(CLEAR if terminal else "", nl=False)
        while True:
            try:
                text = render(status_json(read_cluster(keyspace), keyspace.display,
                                          machine_supervisors(os.environ).supervisors))
            except (RedisUnavailable, RedisRefused) as exc:
                text = f"cannot read Redis: {exc}"
            lines = [f"ray-ha status, every {every:g}s: {_when(time.time())} (Ctrl-C to stop)", "", *text.splitlines()]
            if terminal:
                click.echo(HOME + "".join(line + ERASE_LINE + "\n" for line in lines) + ERASE_BELOW, nl=False)
            else:
                click.echo("\n".join(lines) + "\n")
            time.sleep(every)
    except KeyboardInterrupt:
        click.echo("")
        return Exit.OK


def show_history(redis: RedisChoice, as_json: bool, count: int) -> int:
    changes = [change_json(c) for c in read_history(redis.keyspace(), count)]
    if as_json:
        click.echo(json.dumps(changes, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(history_table(changes)) if changes else "no leadership change recorded")
    return Exit.OK


def switch_over(redis: RedisChoice, target: Optional[str], timeout: float) -> int:
    """Ask for the handover and wait until the new leader's GCS serves (else withdraw it)."""
    keyspace = redis.keyspace()
    try:
        request = request_switchover(keyspace, target, ttl=timeout)
    except SwitchoverError as exc:
        raise CommandFailed(str(exc)) from None
    click.echo(f"ray-ha: asked {request.source} (epoch {request.epoch}) to hand over to "
               f"{request.target or 'any standby'}")
    leader = await_switchover(keyspace, request, timeout)
    if leader is None or leader.holder is None or leader.serving is None:
        raise CommandFailed(f"no new leader serving within {timeout:g}s; the request was withdrawn")
    click.echo(f"ray-ha: {leader.holder.node} leads (epoch {leader.epoch}), GCS serving at "
               f"{leader.serving.gcs_address}")
    return Exit.OK


def plan_switchover(redis: RedisChoice, target: Optional[str], at: float, window: float) -> int:
    """Plan a switchover for `at`; the leader of that moment makes it a request."""
    try:
        plan = schedule_switchover(redis.keyspace(), Scheduled(target or "", at, operator_name(), window))
    except SwitchoverError as exc:
        raise CommandFailed(str(exc)) from None
    click.echo(f"ray-ha: switchover to {plan.target or 'the standby of highest priority'} planned for "
               f"{_when(plan.at)}; dropped if no leader acts on it within {window:g}s of that")
    return Exit.OK


def cancel_switchover(redis: RedisChoice) -> int:
    planned, request = withdraw_switchover(redis.keyspace())
    if planned is not None:
        click.echo(f"ray-ha: cancelled the switchover planned for {_when(planned.at)} by {planned.by}")
    if request is not None:
        click.echo(f"ray-ha: withdrew the pending switchover {request.source} -> {request.target or 'any'}")
    if planned is None and request is None:
        click.echo("ray-ha: no switchover was planned or pending")
    return Exit.OK


def parse_when(text: str) -> float:
    """A time for `--at`, as a Unix time: ISO 8601 (2026-12-07T03:00, with or without a zone; local time if
    none), HH:MM (the next one, local time), or +DURATION (+90s, +30m, +2h)."""
    stripped = text.strip()
    if stripped.startswith("+"):
        return time.time() + parse_span(stripped[1:], "--at")
    now = datetime.datetime.now().astimezone()
    try:
        if len(stripped) <= 5 and ":" in stripped:
            clock = datetime.time.fromisoformat(stripped.zfill(5))
            moment = now.replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)
            return (moment if moment > now else moment + datetime.timedelta(days=1)).timestamp()
        moment = datetime.datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(f"--at={text!r} is not a time (examples: 2026-12-07T03:00, 03:00, +2h)") from None
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def pause(redis: RedisChoice, seconds: Optional[float], reason: str) -> int:
    """Pause automatic takeovers; one without an end says so on stderr."""
    keyspace = redis.keyspace()
    paused = pause_cluster(keyspace, operator_name(), seconds, reason)
    if paused.until is None:
        click.echo("ray-ha: warning: paused with no end: no candidate takes over, whatever happens to the "
                   "leader, until `ray-ha resume` (pause --for DURATION ends by itself)", err=True)
    end = f" until {_when(paused.until)}" if paused.until else ""
    click.echo(f"ray-ha: paused {keyspace.keys.lease}{end}")
    return Exit.OK


def resume(redis: RedisChoice) -> int:
    keyspace = redis.keyspace()
    ended = resume_cluster(keyspace)
    click.echo(f"ray-ha: resumed {keyspace.keys.lease} (paused by {ended.by})" if ended
               else f"ray-ha: {keyspace.keys.lease} was not paused")
    return Exit.OK


def print_address(redis: RedisChoice, service: str) -> int:
    """host:port of `service` on the head that serves now."""
    leadership = read_leadership(redis.keyspace())
    record = leadership.serving
    if record is None:
        holder = leadership.holder
        raise CommandFailed(f"no leader serves: {holder.node} leads (epoch {leadership.epoch}), its GCS not "
                            "serving yet" if holder else "no leader serves: nobody holds the lease")
    found = record.address(service)
    if found is None:
        raise CommandFailed(f"{record.node} (epoch {record.epoch}) serves no {service} (the record names "
                            f"{', '.join(['gcs', *record.ports])})")
    click.echo(found)
    return Exit.OK


def parse_span(text: str, name: str = "--for") -> float:
    """A length of time, > 0: a duration (90, 90s, 1500ms) or 15m, 2h, 1d; else ConfigError naming `name`."""
    stripped = text.strip().lower()
    number = stripped[:-1]
    if stripped[-1:] in SPAN_UNITS and number.replace(".", "", 1).isdigit():
        seconds = float(number) * SPAN_UNITS[stripped[-1]]
    else:
        seconds = parse_duration(name, text)
    if not seconds > 0:
        raise ConfigError(f"{name}={text!r} must be longer than 0")
    return seconds


def operator_name() -> str:
    """Who runs this command, for a pause's record: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for our uid (a container)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"
