"""Settings from flags, environment and `.env`: precedence flag > env > .env > default.

Durations are seconds internally. The ant-ray names (`RAY_HA_*_MS`) are accepted so existing
deployments move over unchanged.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Mapping, Optional

import dotenv

from raylaunch.entry import FALSY, TRUTHY  # the one list of yes/no spellings, in the light entry module


class ConfigError(ValueError):
    """A user mistake in flags, environment or files: reported as one line, exit code 2."""



#: Seconds a head may take to come up, added to the lease for the default reconnect timeout.
HEAD_START_BUDGET = 45.0

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
    """How long a lease lasts in Redis without renewal (s). Default 15."""
    renew_deadline: float = 10.0
    """A leader with no successful renewal for this long kills its head and exits (s). Default 10."""
    retry_period: float = 2.0
    """How often the leader renews and a standby tries to acquire (s). Default 2."""
    redis_timeout: float = 2.0
    """Socket timeout of every Redis call, so a hung connection cannot stall the loop (s). Default 2."""
    reconnect_timeout: Optional[float] = None
    """Raylet reconnect timeout given to the head (s). Default: lease_duration + 45 s."""
    stop_grace: float = 10.0
    """On SIGTERM/SIGINT, how long the head may take to stop before SIGKILL (s). Default 10."""
    wait_old_gcs: float = 259200.0
    """How long a new leader waits for the previous GCS to stop accepting connections (s). Default 3
    days, as in ant-ray: a GCS that still answers is almost always a live old head, and starting a
    second one beside it would corrupt the cluster's state; while waiting, the old head keeps serving."""

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
    def effective_reconnect_timeout(self) -> float:
        """The reconnect timeout to give Ray: the user's, else lease + head start budget."""
        if self.reconnect_timeout is not None:
            return self.reconnect_timeout
        return self.lease_duration + HEAD_START_BUDGET


#: Timing field -> (flag name, environment name). Environment values are milliseconds, as in ant-ray.
TIMING_SOURCES: dict[str, tuple[str, str]] = {
    "lease_duration": ("--ha-lease-duration", "RAY_HA_KEY_EXPIRE_TIME_MS"),
    "renew_deadline": ("--ha-renew-deadline", "RAY_HA_RENEW_DEADLINE_MS"),
    "retry_period": ("--ha-retry-period", "RAY_HA_CHECK_INTERVAL_MS"),
    "redis_timeout": ("--ha-redis-timeout", "RAY_HA_CONNECT_TIMEOUT_MS"),
    "reconnect_timeout": ("--ha-reconnect-timeout", "RAY_HA_RECONNECT_TIMEOUT_MS"),
    "stop_grace": ("--ha-stop-grace", "RAY_HA_STOP_GRACE_MS"),
    "wait_old_gcs": ("--ha-wait-old-gcs", "RAY_HA_WAIT_PRE_GCS_STOP_MAX_TIME_MS"),
}


def timing_from(flags: Mapping[str, Optional[str]], env: Mapping[str, str]) -> Timing:
    """Build the Timing from flag values (keyed by field name, None when absent) and the environment."""
    values = {}
    for field_name, (flag_name, env_name) in TIMING_SOURCES.items():
        flag = flags.get(field_name)
        if flag is not None:
            values[field_name] = parse_duration(flag_name, flag)
        elif env.get(env_name, "").strip():
            values[field_name] = parse_duration(env_name, env[env_name], bare_unit="ms")
    return Timing(**values)


@dataclass(frozen=True)
class Identity:
    """Who this candidate is and which lease it campaigns for."""

    node_name: str
    key: str
    host: str = field(default_factory=socket.gethostname)


def identity_from(node_flag: Optional[str], key_flag: Optional[str], env: Mapping[str, str]) -> Identity:
    """Node name (flag > RAY_HA_NODE_NAME > host name) and lease key (flag > RAY_HA_LEADER_KEY > default)."""
    node = node_flag or env.get("RAY_HA_NODE_NAME", "").strip() or socket.gethostname()
    namespace = env.get("RAY_external_storage_namespace", "").strip() or "default"
    key = key_flag or env.get("RAY_HA_LEADER_KEY", "").strip() or f"ray-ha:{namespace}:leader"
    if not node.strip() or any(ch.isspace() or ch == "/" for ch in node):
        raise ConfigError(f"node name {node!r} must be non-empty, without spaces or slashes")
    check_key_name(key)
    return Identity(node_name=node, key=key)


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
    """`text` (one stamped line per event) or `json` (one object per line, for log shippers)."""
    http_port: Optional[int] = None
    """Port of the /healthz, /leader and /metrics endpoint; None (the default) means no endpoint."""
    http_host: str = "0.0.0.0"
    """Address the endpoint binds to. Default all interfaces, so probes and load balancers reach it."""
    on_elected: Optional[str] = None
    """Shell command run when this node's GCS starts serving as leader. Default none."""
    on_demoted: Optional[str] = None
    """Shell command run when this node stops leading (head stopped, lease released). Default none."""
    hook_timeout: float = 30.0
    """A hook still running after this long is killed (s). Default 30."""

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log format {self.log_format!r} is not one of: {', '.join(LOG_FORMATS)}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"HTTP port {self.http_port} is not in 0-65535")
        if not self.hook_timeout > 0:
            raise ConfigError(f"hook timeout must be > 0 (got {self.hook_timeout:g}s)")


#: Reporting field -> (flag name, environment name).
REPORTING_SOURCES: dict[str, tuple[str, str]] = {
    "log_format": ("--ha-log-format", "RAY_HA_LOG_FORMAT"),
    "http_port": ("--ha-http-port", "RAY_HA_HTTP_PORT"),
    "http_host": ("--ha-http-host", "RAY_HA_HTTP_HOST"),
    "on_elected": ("--ha-on-elected", "RAY_HA_ON_ELECTED"),
    "on_demoted": ("--ha-on-demoted", "RAY_HA_ON_DEMOTED"),
    "hook_timeout": ("--ha-hook-timeout", "RAY_HA_HOOK_TIMEOUT_MS"),
}


def reporting_from(flags: Mapping[str, Optional[str]], env: Mapping[str, str]) -> Reporting:
    """Build Reporting from flag values (keyed by field name, None when absent) and the environment."""
    values: dict[str, object] = {}
    for field_name, (flag_name, env_name) in REPORTING_SOURCES.items():
        from_flag = flags.get(field_name)
        text = from_flag if from_flag is not None else env.get(env_name, "").strip() or None
        if text is None:
            continue
        name = flag_name if from_flag is not None else env_name
        if field_name == "http_port":
            if not text.isdigit():
                raise ConfigError(f"{name}={text!r} is not a port number")
            values[field_name] = int(text)
        elif field_name == "hook_timeout":
            values[field_name] = parse_duration(name, text, bare_unit="s" if from_flag is not None else "ms")
        else:
            values[field_name] = text.lower() if field_name == "log_format" else text
    return Reporting(**values)  # type: ignore[arg-type]


FENCES = ("none", "acl")


@dataclass(frozen=True)
class Safety:
    """What a candidate buys with extra resources: replica confirmation and storage fencing (Redis
    features), and a faster takeover (memory)."""

    min_replicas: int = 0
    """A lease write counts only once Redis WAIT confirms it on this many replicas, so a Redis
    failover cannot lose a lease the leader believes it holds. Default 0 (no waiting)."""
    fence: str = "none"
    """`acl`: each epoch's GCS gets its own Redis ACL user, and a new leader disables the previous
    epoch's user and kills its connections, so a stale GCS cannot write Ray's state. Default `none`."""
    prewarm: bool = False
    """A standby keeps Ray's `ray start` imported in a waiting interpreter (about 80 MiB RSS here) and
    hands it the head command on takeover, taking most of Ray's import off the failover path (start to
    GCS answering 2.2 s -> 1.15 s here). Default off."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"minimum replicas must be >= 0 (got {self.min_replicas})")
        if self.fence not in FENCES:
            raise ConfigError(f"fence {self.fence!r} is not one of: {', '.join(FENCES)}")


#: Safety field -> (flag name, environment name).
SAFETY_SOURCES: dict[str, tuple[str, str]] = {
    "min_replicas": ("--ha-min-replicas", "RAY_HA_MIN_REPLICAS"),
    "fence": ("--ha-fence", "RAY_HA_FENCE"),
    "prewarm": ("--ha-prewarm", "RAY_HA_PREWARM"),
}


def safety_from(flags: Mapping[str, Optional[str]], env: Mapping[str, str]) -> Safety:
    """Build Safety from flag values (keyed by field name, None when absent) and the environment."""
    values: dict[str, object] = {}
    for field_name, (flag_name, env_name) in SAFETY_SOURCES.items():
        from_flag = flags.get(field_name)
        text = from_flag if from_flag is not None else env.get(env_name, "").strip() or None
        if text is None:
            continue
        name = flag_name if from_flag is not None else env_name
        if field_name == "min_replicas":
            if not text.isdigit():
                raise ConfigError(f"{name}={text!r} is not a number of replicas")
            values[field_name] = int(text)
        elif field_name == "prewarm":
            if text.lower() not in TRUTHY | FALSY:
                raise ConfigError(f"{name}={text!r} is not on or off")
            values[field_name] = text.lower() in TRUTHY
        else:
            values[field_name] = text.lower()
    return Safety(**values)  # type: ignore[arg-type]


def load_env_file(path: Optional[str]) -> None:
    """Load `path` (or ./.env if present) into os.environ without overriding what is already set."""
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"env file not found: {path}")
    candidate = path or os.path.join(os.getcwd(), ".env")
    if os.path.isfile(candidate):
        dotenv.load_dotenv(candidate, override=False)
