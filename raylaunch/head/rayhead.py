"""The leader's Ray head as the campaign sees it: start it for an epoch, watch it, find its GCS."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, Callable, Optional

import psutil

from raylaunch.proc.net import join_address, tcp_accepts
from raylaunch.proc.prewarm import WarmStart
from raylaunch.proc.raycmd import GCS_NAME, RAYLET_NAME, RayCommand, client_ports, with_redis_credentials
from raylaunch.proc.tree import ProcessTree
from raylaunch.store.errors import RedisRefused, RedisUnavailable
from raylaunch.store.fence import Credentials

log = logging.getLogger("ray-ha")

WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104  (recognised in a bind address, never bound here)


def gcs_address(gcs: psutil.Process, node_ip: Optional[str]) -> Optional[str]:
    """The GCS's `ip:port`: the node IP the user gave, else Ray's, else the socket's own; its listen port."""
    try:
        args = gcs.cmdline()
        listening = sorted((c.laddr.port, c.laddr.ip) for c in tcp_connections(gcs)
                           if c.status == psutil.CONN_LISTEN)
    except psutil.Error:
        return None
    port = int(_arg(args, "--gcs_server_port") or 0) or (listening[0][0] if listening else 0)
    bound = next((ip for p, ip in listening if p == port and ip not in WILDCARDS), None)
    ip = node_ip or _arg(args, "--node-ip-address") or bound
    return join_address(ip, port) if ip and port else None


def tcp_connections(proc: psutil.Process) -> list[Any]:
    """A process's TCP sockets; psutil before 6.0 names the call `connections`."""
    call = getattr(proc, "net_connections", None) or proc.connections
    return call(kind="tcp")


def _arg(args: list[str], name: str) -> Optional[str]:
    """The value of `name=value` in a process's argv."""
    return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None)


class RayHead:
    """Runs `ray start --head --block` under a ProcessTree and reports on its GCS."""

    def __init__(self, command: RayCommand, node_ip: Optional[str],
                 probe: Callable[[str], bool] = tcp_accepts,
                 spare: Callable[[], Collection[int]] = frozenset,
                 credentials: Optional[Callable[[int], Credentials]] = None,
                 warm: Optional[WarmStart] = None,
                 session_name: Callable[[], Optional[str]] = lambda: None) -> None:
        self.command, self.node_ip, self.probe, self.spare = command, node_ip, probe, spare
        self.credentials = credentials  # per-epoch Redis credentials for the GCS (--ha-fence acl)
        self.warm = warm  # a pre-imported `ray start` to hand the command to (--ha-prewarm)
        self.session_name = session_name  # the cluster's session name in Redis, handed to the warm one
        self.tree: Optional[ProcessTree] = None
        self._address: Optional[str] = None

    def start(self, epoch: int) -> None:
        """Start the head with RAY_HA_EPOCH and RAY_HA_LEADER=1 in its environment."""
        env = {**self.command.env, "RAY_HA_EPOCH": str(epoch), "RAY_HA_LEADER": "1"}
        self._address = None  # a head started again (after a switchover) listens somewhere new
        argv = list(self.command.argv)
        if self.credentials is not None:
            issued = self.credentials(epoch)
            argv = with_redis_credentials(argv, issued.username, issued.password)
        self.tree = ProcessTree(argv, env, watch_name=GCS_NAME, drain_name=RAYLET_NAME,
                                spare=self.spare)
        name = self._session_name()
        if name:  # Ray's GCS tables in Redis outlive every head: a cluster started again resumes them
            log.info("resuming session %s%s (Redis keeps the cluster's state; docs/ray-up.md: starting fresh)",
                     name, f" from epoch {epoch - 1}" if epoch > 1 else "")
        warm = self.warm.take(argv, env, name) if self.warm else None
        self.tree.start(adopt=warm)
        if warm:
            log.info("head command handed to the pre-warmed interpreter (pid %d), %s", warm.pid,
                     f"resuming {name}" if name else "a new session or Ray reads it")
        elif self.warm:
            log.info("no pre-warmed interpreter was ready; starting the head command cold")

    def _session_name(self) -> Optional[str]:
        """The cluster's session name, or None (Ray then reads it itself) if Redis does not answer."""
        try:
            return self.session_name()
        except (RedisRefused, RedisUnavailable) as exc:
            log.warning("cannot read the cluster's session name (%s); Ray reads it itself", exc)
            return None

    def prepare(self) -> None:
        """While standing by: keep a pre-warmed interpreter ready (with --ha-prewarm; else nothing)."""
        if self.warm:
            self.warm.ensure()

    def close(self) -> None:
        """Let go of an unused pre-warmed interpreter (the tree itself is stopped by the campaign)."""
        if self.warm:
            self.warm.close()

    def sid(self) -> Optional[int]:
        """The process session id the head's tree runs in (its top's pid), once started."""
        return self.tree.popen.pid if self.tree and self.tree.popen else None

    def failure(self) -> Optional[str]:
        """Why the head is gone (ray start exited, gcs_server died), or None while it runs."""
        return self.tree.failure() if self.tree else None

    def serving_address(self) -> Optional[str]:
        """The GCS address once it accepts connections, else None."""
        gcs = self.tree.watched() if self.tree else None
        if self._address is None and gcs is not None:
            self._address = gcs_address(gcs, self.node_ip)
        return self._address if self._address and self.probe(self._address) else None

    def client_ports(self) -> dict[str, int]:
        """What the head command serves clients on beside its GCS (dashboard, Ray Client), by name."""
        return client_ports(self.command.argv)

    def terminate(self) -> None:
        """Begin a graceful stop: SIGTERM to the raylet, so the node leaves the cluster as Ray does.

        Not to `ray start`: its SIGTERM handler drains the node through the GCS for up to 30 s, which
        never finishes for a node holding a detached actor; the GCS's own state is already in Redis.
        """
        if self.tree:
            self.tree.terminate()

    def drained(self) -> bool:
        """True once the raylet (or, before it exists, ray start) has exited."""
        return self.tree is None or self.tree.drained()

    def kill(self) -> list[int]:
        """SIGKILL everything left of the tree; returns pids that would not die."""
        return self.tree.kill() if self.tree else []

    def stop(self, grace: float) -> list[int]:
        """Graceful stop for up to `grace` s, then SIGKILL all that is left."""
        return self.tree.stop(grace) if self.tree else []
