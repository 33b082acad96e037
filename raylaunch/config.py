"""Settings from flags, environment and `.env`: precedence flag > env > .env > default.

Durations are seconds internally. The ant-ray names (`RAY_HA_*_MS`) are accepted so existing
deployments move over unchanged.
"""

from __future__ import annotations

import enum
import re
import socket
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Generic, Optional, TypeVar

S = TypeVar("S")

#: The spellings of yes and no that RAY_ENABLE_HEAD_HA and the other switches accept.
TRUTHY = frozenset({"1", "true", "yes", "on"})
FALSY = frozenset({"0", "false", "no", "off", ""})


class Exit(enum.IntEnum):
    """Exit codes of `ray-ha start` (the other commands use the first three)."""

    OK = 0
    RUNTIME = 1      # something outside the user's input went wrong
    USAGE = 2        # bad input or a setting that will not work: one line on stderr
    LOST = 3         # the lease was lost
    HEAD_DIED = 4    # the head died


class Role(str, enum.Enum):
    """A supervisor's role, as its state file, status, health and the log spell it (one spelling each)."""

    STARTING = "starting"            # before its first tick
    STANDBY = "standby"
    WAITING = "waiting"              # leads, waiting for the previous leader's GCS to go away
    LEADER = "leader"
    STEPPING_DOWN = "stepping-down"
    DONE = "done"
    FOLLOWER = "follower"

    def __str__(self) -> str:
        return self.value


class ConfigError(ValueError):
    """A user mistake in flags, environment or files: reported as one line, exit code 2."""


#: Seconds a head may take to come up, added to the lease for the default reconnect timeout.
HEAD_START_BUDGET = 45.0
#: One day (s), for durations that --help states in days.
DAY = 24 * 3600.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$", re.IGNORECASE)


def parse_bool(name: str, value: Optional[str]) -> bool:
    """Read a yes/no environment value; anything but the known spellings is a usage error."""
    text = (value or "").strip().lower()
    if text in TRUTHY:
        return True
    if text in FALSY:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use 1/true/yes/on or 0/false/no/off)")


def parse_duration(name: str, text: str, bare_unit: str = "s") -> float:
    """Parse `15`, `15s` or `1500ms` into seconds; a bare number is in `bare_unit`."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{name}={text!r} is not a duration (examples: 15, 15s, 1500ms)")
    number, unit = float(match.group(1)), (match.group(2) or bare_unit).lower()
    return number / 1000.0 if unit == "ms" else number


@dataclass(frozen=True)
class Timing:
    """Lease timing, validated at construction so an unsafe combination can never run.

    The rule is lease_duration > renew_deadline + redis_timeout, renew_deadline >= 2 x
    retry_period, renew_deadline > redis_timeout, everything > 0: a leader that stops
    hearing from Redis gives up (and kills its head) while its lease still stands.
    """

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    redis_timeout: float = 2.0
    reconnect_timeout: Optional[float] = None
    stop_grace: float = 10.0
    wait_old_gcs: float = 3 * DAY

    def __post_init__(self) -> None:
        for name in ("lease_duration", "renew_deadline", "retry_period", "redis_timeout",
                     "stop_grace", "wait_old_gcs"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"inconsistent timings: {name} must be > 0 (got {getattr(self, name)}s)")
        if self.reconnect_timeout is not None and not self.reconnect_timeout > 0:
            raise ConfigError("inconsistent timings: reconnect timeout must be > 0")
        if not self.lease_duration > self.renew_deadline + self.redis_timeout:
            raise ConfigError(
                f"inconsistent timings: lease duration ({self.lease_duration:g}s) must exceed renew deadline "
                f"({self.renew_deadline:g}s) + Redis timeout ({self.redis_timeout:g}s)")
        if not self.renew_deadline >= 2 * self.retry_period:
            raise ConfigError(
                f"inconsistent timings: renew deadline ({self.renew_deadline:g}s) must be at least "
                f"2 x retry period ({self.retry_period:g}s)")
        if not self.renew_deadline > self.redis_timeout:
            raise ConfigError(
                f"inconsistent timings: renew deadline ({self.renew_deadline:g}s) must exceed "
                f"Redis timeout ({self.redis_timeout:g}s)")

    @property
    def priority_yield(self) -> float:
        """How long a candidate yields a free lease to a live one of higher priority (s): two retry
        periods, so the better one's next try falls inside it."""
        return 2 * self.retry_period

    @property
    def effective_reconnect_timeout(self) -> float:
        """The reconnect timeout to give Ray: the user's, else lease + head start budget."""
        if self.reconnect_timeout is not None:
            return self.reconnect_timeout
        return self.lease_duration + HEAD_START_BUDGET


@dataclass(frozen=True)
class Identity:
    """Who this candidate is and which lease it campaigns for."""

    node_name: str
    key: str
    host: str = field(default_factory=socket.gethostname)
    priority: int = 1  # who leads first after a loss: the highest live one; 0 never leads

    def __post_init__(self) -> None:
        if not self.node_name.strip() or any(ch.isspace() or ch == "/" for ch in self.node_name):
            raise ConfigError(f"node name {self.node_name!r} must be non-empty, without spaces or slashes")
        check_key_name(self.key)


def check_key_name(key: str) -> None:
    """A lease's name is non-empty and has no braces: ray-ha makes it the hash tag of its keys."""
    if not key or "{" in key or "}" in key:
        raise ConfigError(f"lease key {key!r} must be non-empty and must not contain braces: ray-ha puts the "
                          "name in braces itself (a hash tag), so that all its keys share one hash slot")


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Reporting:
    """How a launcher shows itself: log format, HTTP endpoint, notify hooks. Validated at construction."""

    log_format: str = "text"
    http_port: Optional[int] = None
    http_host: str = "0.0.0.0"  # noqa: S104  (a load balancer probes /leader from outside; docs/SECURITY.md says so)
    on_elected: Optional[str] = None
    on_demoted: Optional[str] = None
    hook_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format {self.log_format!r} is not one of: {', '.join(LOG_FORMATS)}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"HTTP port {self.http_port} is not in 0-65535")
        if not self.hook_timeout > 0:
            raise ConfigError(f"hook timeout must be > 0 (got {self.hook_timeout:g}s)")


FENCES = ("none", "acl")
AFTER_LOSS = ("auto", "exit", "standby")
PREWARM = ("auto", "on", "off")


@dataclass(frozen=True)
class Safety:
    """What a candidate buys with extra resources: replica confirmation and storage fencing (Redis
    features), and a faster takeover (memory); and what it does after losing the lease or its head."""

    min_replicas: int = 0
    fence: str = "none"
    prewarm: str = "auto"
    after_loss: str = "auto"

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"minimum replicas must be >= 0 (got {self.min_replicas})")
        if self.fence not in FENCES:
            raise ConfigError(f"fence {self.fence!r} is not one of: {', '.join(FENCES)}")
        if self.prewarm not in PREWARM:
            raise ConfigError(f"prewarm {self.prewarm!r} is not one of: {', '.join(PREWARM)}")
        if self.after_loss not in AFTER_LOSS:
            raise ConfigError(f"after-loss {self.after_loss!r} is not one of: {', '.join(AFTER_LOSS)}")


@dataclass(frozen=True)
class Relays:
    """Where ray-ha relays connections to the leader, checked by the plan (which knows host:port and what
    Ray rewrites): `relay`, a follower's relay for its worker ("auto", "off" or HOST[:PORT]);
    `client_ports`, what a standby answers for the head on ("auto", "off" or a list of services and ports)."""

    relay: str = "auto"
    client_ports: str = "auto"


# -- one table per settings group: field -> flag, environment name, parser, help ---------------------

Parser = Callable[[str, str, bool], Any]
"""(name as given, text, given as a flag?) -> value; raises ConfigError naming `name`."""


def _duration(name: str, text: str, from_flag: bool) -> float:
    """Seconds; a bare number is seconds on a flag and milliseconds in the environment (ant-ray's names)."""
    return parse_duration(name, text, bare_unit="s" if from_flag else "ms")


def _number(what: str) -> Parser:
    def parse(name: str, text: str, _from_flag: bool) -> int:
        if not text.isdigit():
            raise ConfigError(f"{name}={text!r} is not {what}")
        return int(text)
    return parse


def _switch(name: str, text: str, _from_flag: bool) -> bool:
    if text.lower() not in TRUTHY | FALSY:
        raise ConfigError(f"{name}={text!r} is not on or off")
    return text.lower() in TRUTHY


def _auto_switch(name: str, text: str, _from_flag: bool) -> str:
    """auto, or on/off in any spelling _switch takes."""
    if text.lower() not in TRUTHY | FALSY | {"auto"}:
        raise ConfigError(f"{name}={text!r} is not auto, on or off")
    return "auto" if text.lower() == "auto" else ("on" if text.lower() in TRUTHY else "off")


def _lower(_name: str, text: str, _from_flag: bool) -> str:
    return text.lower()


def _text(_name: str, text: str, _from_flag: bool) -> str:
    return text


@dataclass(frozen=True)
class Setting:
    """One ray-ha option: the dataclass field it sets, its flag and environment variable, and its help."""

    field: str
    flag: str
    env: str
    parse: Parser
    metavar: str
    help: str  # without the default: --help adds it from the record (Group.help_of)
    choices: Optional[tuple[str, ...]] = None
    worded: Optional[str] = None  # the default in words, where there is no value to show (None, per host)
    note: str = ""                # what the default means, after it: [auto: <note>]


@dataclass(frozen=True)
class Group(Generic[S]):
    """A settings group: the record it builds and its settings (which drive flags, env, .env and --help)."""

    kind: Callable[..., S]
    settings: tuple[Setting, ...]
    defaults: Callable[[Mapping[str, str]], dict[str, Any]] = lambda env: {}  # those that depend on env

    def help_of(self, setting: Setting) -> str:
        """The setting's help with the default the record uses in brackets (in words where it has them)."""
        shown = setting.worded or _shown(_field_default(self.kind, setting.field), setting.parse is _duration)
        if shown and setting.note:
            shown = f"{shown}: {setting.note}"
        return f"{setting.help} [{shown}]." if shown else f"{setting.help}."


def _field_default(kind: Callable[..., Any], name: str) -> Any:
    """The default of dataclass `kind`'s field `name` (None if it has none)."""
    found = next(f for f in fields(kind) if f.name == name)  # type: ignore[arg-type]  # kind is a dataclass
    return None if found.default is MISSING else found.default


def _shown(value: Any, duration: bool) -> Optional[str]:
    """A default as --help writes it: durations in seconds (15s) or whole days, None as nothing."""
    if value is None:
        return None
    if duration and value >= DAY and value % DAY == 0:
        return f"{value / DAY:g} days"
    return f"{value:g}s" if duration else str(value)


def settings_from(group: Group[S], flags: Mapping[str, Optional[str]], env: Mapping[str, str]) -> S:
    """The group's record: each field from its flag (None when absent), else its environment variable,
    else the record's default. Precedence flag > env (which .env fills) > default."""
    values = group.defaults(env)
    for s in group.settings:
        flag = flags.get(s.field)
        text = flag if flag is not None else (env.get(s.env) or "").strip() or None
        if text is not None:
            values[s.field] = s.parse(s.flag if flag is not None else s.env, text, flag is not None)
    return group.kind(**values)


D = "DURATION"
TIMING: Group[Timing] = Group(Timing, (
    Setting("lease_duration", "--ha-lease-duration", "RAY_HA_KEY_EXPIRE_TIME_MS", _duration, D,
            "How long the lease lasts without renewal"),
    Setting("renew_deadline", "--ha-renew-deadline", "RAY_HA_RENEW_DEADLINE_MS", _duration, D,
            "Leader kills its head if no renewal succeeded for this long"),
    Setting("retry_period", "--ha-retry-period", "RAY_HA_CHECK_INTERVAL_MS", _duration, D,
            "How often to renew / try to acquire"),
    Setting("redis_timeout", "--ha-redis-timeout", "RAY_HA_CONNECT_TIMEOUT_MS", _duration, D,
            "Timeout of every Redis call"),
    Setting("reconnect_timeout", "--ha-reconnect-timeout", "RAY_HA_RECONNECT_TIMEOUT_MS", _duration, D,
            "Raylet reconnect timeout given to the head", worded=f"lease + {HEAD_START_BUDGET:g}s"),
    Setting("stop_grace", "--ha-stop-grace", "RAY_HA_STOP_GRACE_MS", _duration, D,
            "On SIGTERM, time the head gets to stop before SIGKILL"),
    Setting("wait_old_gcs", "--ha-wait-old-gcs", "RAY_HA_WAIT_PRE_GCS_STOP_MAX_TIME_MS", _duration, D,
            "How long a new leader waits for a still-answering old GCS before starting anyway"),
))

REPORTING: Group[Reporting] = Group(Reporting, (
    Setting("log_format", "--ha-log-format", "RAY_HA_LOG_FORMAT", _lower, "FORMAT",
            "Log lines as text or json", choices=LOG_FORMATS),
    Setting("http_port", "--ha-http-port", "RAY_HA_HTTP_PORT", _number("a port number"), "PORT",
            "Serve /healthz, /leader and /metrics on this port", worded="off"),
    Setting("http_host", "--ha-http-host", "RAY_HA_HTTP_HOST", _text, "HOST",
            "Address the HTTP endpoint binds to"),
    Setting("on_elected", "--ha-on-elected", "RAY_HA_ON_ELECTED", _text, "CMD",
            "Shell command run when this node's GCS starts serving as leader"),
    Setting("on_demoted", "--ha-on-demoted", "RAY_HA_ON_DEMOTED", _text, "CMD",
            "Shell command run when this node stops leading"),
    Setting("hook_timeout", "--ha-hook-timeout", "RAY_HA_HOOK_TIMEOUT_MS", _duration, D,
            "A hook still running after this long is killed"),
))

SAFETY: Group[Safety] = Group(Safety, (
    Setting("min_replicas", "--ha-min-replicas", "RAY_HA_MIN_REPLICAS", _number("a number of replicas"), "N",
            "A lease write counts once Redis WAIT confirms it on N replicas"),
    Setting("fence", "--ha-fence", "RAY_HA_FENCE", _lower, "none|acl",
            "acl: a Redis ACL user per epoch for the GCS; a new leader locks out the old one"),
    Setting("prewarm", "--ha-prewarm", "RAY_HA_PREWARM", _auto_switch, "auto|on|off",
            "A standby keeps `ray start` imported and hands it the session name: its head serves ~1.5 s "
            "sooner for ~70 MiB; on: refuse where it cannot; auto: start cold there"),
    Setting("after_loss", "--ha-after-loss", "RAY_HA_AFTER_LOSS", _lower, "auto|exit|standby",
            "After losing the lease or the head: exit (for systemd or Kubernetes to restart) or stand by "
            "again after a backoff (1 s doubling to 30 s)",
            choices=AFTER_LOSS, note="exit with --block, standby when detached"),
))


RELAYS: Group[Relays] = Group(Relays, (
    Setting("relay", "--ha-relay", "RAY_HA_RELAY", _lower, "auto|off|HOST[:PORT]",
            "--ha-follow: the worker reaches the GCS through a relay here that follows the leader, so it "
            "survives a failover; off: restart it against each new leader (for an address that moves "
            "with the leader)", note="node IP, any port"),
    Setting("client_ports", "--ha-client-ports", "RAY_HA_CLIENT_PORTS", _lower, "auto|off|LIST",
            "A standby answers for the head: on its node IP it listens on the ports the leader's head serves "
            "clients and relays each connection to the leader; LIST: gcs, dashboard, client and port "
            "numbers, comma-separated; off: listen on nothing", note="gcs,dashboard,client"),
))


def _identity_defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """The host name, and the lease named after Ray's storage namespace."""
    namespace = env.get("RAY_external_storage_namespace", "").strip() or "default"
    return {"node_name": socket.gethostname(), "key": f"ray-ha:{namespace}:leader"}


IDENTITY: Group[Identity] = Group(Identity, (
    Setting("node_name", "--ha-node-name", "RAY_HA_NODE_NAME", _text, "NAME",
            "This candidate's name", worded="host name"),
    Setting("key", "--ha-key", "RAY_HA_LEADER_KEY", _text, "KEY",
            "Lease key", worded="ray-ha:<namespace>:leader"),
    Setting("priority", "--ha-priority", "RAY_HA_PRIORITY", _number("a priority (0 or more)"), "N",
            "When the leader is lost, the live candidate with the highest priority takes over; lower ones "
            "yield a free lease to it for 2 x retry period. 0: never leads (no pre-warmed head)"),
), _identity_defaults)

#: The groups whose settings `ray-ha start` takes, in the order --help lists them.
START_GROUPS = (TIMING, REPORTING, SAFETY, RELAYS, IDENTITY)
