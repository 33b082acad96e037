"""Where Redis is and how to reach it: every `RAY_REDIS_ADDRESS` form Ray accepts, TLS and credentials.

The client it builds never retries on its own and times out every call, so no Redis call can stall
the lease loop for longer than the configured Redis timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from raylaunch.config import ConfigError
from raylaunch.proc.net import split_host_port

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10; only read by the type checker

TLS_FILE_VARS = ("RAY_REDIS_CA_CERT", "RAY_REDIS_CLIENT_CERT", "RAY_REDIS_CLIENT_KEY")


@dataclass(frozen=True)
class RedisTarget:
    """One Redis endpoint with its TLS files and credentials (the password is never printed)."""

    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    ca_cert: Optional[str] = None
    ca_path: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    others: tuple[tuple[str, int], ...] = ()
    """The rest of a comma-separated RAY_REDIS_ADDRESS: more sentinels when the first is one."""

    @property
    def display(self) -> str:
        """`host:port` (with the scheme for TLS) for logs; carries no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss://' if self.tls else ''}{host}:{self.port}"


def parse_address(text: str) -> tuple[str, int, bool]:
    """Split a RAY_REDIS_ADDRESS into (host, port, tls); the first entry of a list is the primary."""
    first = (text or "").split(",")[0].strip()
    if not first:
        raise ConfigError("RAY_REDIS_ADDRESS is empty: set it to host:port of the Redis that backs the GCS")
    if "@" in first:
        raise ConfigError("RAY_REDIS_ADDRESS must not carry credentials; use --redis-password "
                          "or RAY_REDIS_PASSWORD")
    tls = False
    if "://" in first:
        scheme, first = first.split("://", 1)
        if scheme.lower() not in ("redis", "rediss"):
            raise ConfigError(f"RAY_REDIS_ADDRESS scheme {scheme!r} is not redis:// or rediss://")
        tls = scheme.lower() == "rediss"
    host, port_text = _split_host_port(first)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"RAY_REDIS_ADDRESS {text!r}: port {port_text!r} is not a number in 1..65535")
    return host, int(port_text), tls


def _split_host_port(text: str) -> tuple[str, str]:
    try:
        return split_host_port(text)
    except ValueError as exc:
        raise ConfigError(f"RAY_REDIS_ADDRESS {text!r} {exc}") from None


def _tls_files(env: Mapping[str, str]) -> dict[str, Optional[str]]:
    """Ray's TLS variables, each checked to exist so a typo fails at start, not at first connect."""
    files = {name: env.get(name) or None for name in TLS_FILE_VARS}
    for name, path in files.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS file not found: {name}={path}")
    ca_path = env.get("RAY_REDIS_CA_PATH") or None
    if ca_path and not os.path.isdir(ca_path):
        raise ConfigError(f"TLS directory not found: RAY_REDIS_CA_PATH={ca_path}")
    return {"ca_cert": files["RAY_REDIS_CA_CERT"], "ca_path": ca_path,
            "client_cert": files["RAY_REDIS_CLIENT_CERT"], "client_key": files["RAY_REDIS_CLIENT_KEY"]}


def target_from(env: Mapping[str, str], username: Optional[str], password: Optional[str]) -> RedisTarget:
    """The Redis to campaign on: RAY_REDIS_ADDRESS, with credentials from ray's flags or RAY_REDIS_PASSWORD."""
    if "RAY_REDIS_ADDRESS" not in env:
        raise ConfigError("RAY_REDIS_ADDRESS is not set: head HA needs the Redis that backs the GCS")
    entries = env["RAY_REDIS_ADDRESS"].split(",")
    host, port, tls = parse_address(entries[0])
    others = tuple(parse_address(entry)[:2] for entry in entries[1:] if entry.strip())
    files = _tls_files(env) if tls else {}
    return RedisTarget(host=host, port=port, tls=tls, username=username or None,
                       password=password or env.get("RAY_REDIS_PASSWORD") or None, others=others, **files)


def connect(target: RedisTarget, timeout: float) -> redis.Redis:
    """A client whose connect and every call time out after `timeout` s and never retry by themselves.

    What the address is decides the client, as it does for Ray's GCS: a Redis Sentinel gives a client
    of the one master it watches (each new connection asks the sentinels where it is now); a node of a
    cluster-mode Redis gives redis-py's cluster client, which follows MOVED to whichever node owns
    ray-ha's hash slot. Telling them apart costs a round trip; a Redis that cannot be reached raises
    redis-py's own errors, to be mapped by the caller.
    """
    kwargs = _client_kwargs(target, timeout)
    client = redis.Redis(host=target.host, port=target.port, **kwargs)
    mode = server_mode(client)
    if mode == "cluster":
        client.close()
        return cluster_client(target, kwargs)  # type: ignore[return-value]  # callers use the commands both share
    master = sentinel_master(client) if mode == "sentinel" else None
    if master is None:
        return client
    sentinels = [(target.host, target.port), *target.others]
    watcher = Sentinel(sentinels, sentinel_kwargs=kwargs, **kwargs)
    return cast(redis.Redis, watcher.master_for(master, **kwargs))


def server_mode(client: redis.Redis) -> Optional[str]:
    """`standalone`, `sentinel` or `cluster` (INFO's redis_mode); None if the user may not run INFO."""
    try:
        return str(client.info("server").get("redis_mode") or "standalone")
    except redis.exceptions.NoPermissionError:
        return None  # an ACL user denied INFO: treat the address as the Redis itself


def cluster_client(target: RedisTarget, kwargs: dict[str, Any]) -> RedisCluster:
    """redis-py's cluster client over the given nodes, retrying nothing itself (one try per call).

    A call that fails on a node refreshes the slot map from the nodes it knows (redis-py does that
    inside the call), so a failed call can take one Redis timeout per unreachable node; the
    watchdog's deadline does not depend on it.
    """
    if target.ca_path and "ssl_ca_path" not in REDIS_ALLOWED_KEYS:
        raise ConfigError(f"RAY_REDIS_CA_PATH with a cluster-mode Redis needs redis-py 7.2 or later (this is "
                          f"{redis.__version__}): use RAY_REDIS_CA_CERT, or upgrade redis")
    nodes = [ClusterNode(target.host, target.port), *(ClusterNode(h, p) for h, p in target.others)]
    options = {k: v for k, v in kwargs.items() if k != "retry"}
    if int(redis.__version__.split(".")[0]) >= 6:
        options["retry"] = Retry(NoBackoff(), 0)
    else:  # before 6.0 the cluster client counts its own retries here
        options["cluster_error_retry_attempts"] = 0
    return RedisCluster(startup_nodes=nodes, require_full_coverage=False, **options)


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    return isinstance(client, RedisCluster)


def on_slot_owner(client: redis.Redis, key: str, *command: object) -> Any:
    """Run a keyless command (WAIT) on the node that owns `key`'s slot, so it speaks of our writes."""
    if is_cluster(client):
        node = client.get_node_from_key(key)
        return client.execute_command(*command, target_nodes=node)
    return client.execute_command(*command)


def on_every_node(client: redis.Redis, *command: object) -> list[Any]:
    """Run a node-local command (ACL, CLIENT KILL) on every node; one reply per node."""
    if is_cluster(client):
        return [client.execute_command(*command, target_nodes=node) for node in client.get_nodes()]
    return [client.execute_command(*command)]


def drop_connections(client: redis.Redis) -> None:
    """Close pooled connections, so the next call connects (and resolves the address) anew."""
    if is_cluster(client):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


def _client_kwargs(target: RedisTarget, timeout: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(username=target.username, password=target.password, socket_timeout=timeout,
                        socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), decode_responses=True)
    if target.tls:
        kwargs.update(ssl=True, ssl_ca_certs=target.ca_cert, ssl_ca_path=target.ca_path,
                      ssl_certfile=target.client_cert, ssl_keyfile=target.client_key)
    return kwargs


def sentinel_master(client: redis.Redis) -> str:
    """The name of the master the Sentinel at `client` watches; like Ray's GCS, exactly one."""
    masters = client.sentinel_masters()
    if len(masters) != 1:
        raise ConfigError(f"the Redis Sentinel at {client.connection_pool.connection_kwargs.get('host')}:"
                          f"{client.connection_pool.connection_kwargs.get('port')} watches {len(masters)} "
                          "masters; Ray (and ray-ha) need exactly one")
    return str(next(iter(masters)))
