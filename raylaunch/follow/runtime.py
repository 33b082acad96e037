"""Follow mode: the follower's decisions (follow.follower) wired to Redis and the worker's process tree.

`ray-ha start --ha-follow [ray start options]` runs `ray start --address=<relay> --block` (or, with
`--ha-relay=off`, `--address=<leader's GCS>`) and supervises it like a head (subreaper, whole-tree stop)
under the shared runtime (raylaunch.supervisor). The relay is a thread of this process: it cannot
outlive the follower, and it closes only after the worker's tree has stopped (a raylet drains through it).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import replace
from typing import Optional, Union

import psutil

from raylaunch.config import ConfigError, Exit, Role
from raylaunch.follow.follower import Follower, FollowStep, FollowTiming
from raylaunch.local.state import SupervisorState
from raylaunch.plan import Plan, RelayBind
from raylaunch.proc.net import join_address, split_address
from raylaunch.proc.raycmd import RAYLET_NAME, RayCommand, with_address, with_relay_env
from raylaunch.proc.relay import Relay, Target, relay_host
from raylaunch.proc.stopflag import StopFlag, StopSignal
from raylaunch.proc.tree import ProcessTree
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.leader import LeaderReader
from raylaunch.supervisor import Supervision, connect

log = logging.getLogger("ray-ha")


class RayWorker:
    """`ray start --address=<GCS> --block <options>` under a ProcessTree, raylet watched and drained."""

    relayed = False
    relay_address: Optional[str] = None  # it dials the leader itself

    def __init__(self, command: RayCommand) -> None:
        self.command = command
        self.tree: Optional[ProcessTree] = None

    def open(self) -> None:
        """No relay to listen."""

    def retarget(self, address: Optional[str]) -> None:
        """Nothing to point: this worker dials the leader itself."""

    def start(self, address: str, epoch: int) -> None:
        env = {**self.command.env, "RAY_HA_EPOCH": str(epoch), "RAY_HA_FOLLOWER": "1"}
        self.tree = ProcessTree(with_address(self.command.argv, address), env, watch_name=RAYLET_NAME,
                                drain_name=RAYLET_NAME)
        self.tree.start()

    def failure(self) -> Optional[str]:
        return self.tree.failure() if self.tree else None

    def stop(self, grace: float) -> list[int]:
        return self.tree.stop(grace) if self.tree else []

    def close(self) -> None:
        """Nothing held besides the tree."""


def resolve(address: str) -> Target:
    """`host:port` as the (ip, port) the relay connects to; None (refuse) if the name does not resolve."""
    host, port = split_address(address)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve the leader's GCS address %s (%s); the relay refuses until it can", address, exc)
        return None
    return str(info[0][4][0]), port


class RelayedWorker:
    """A RayWorker whose processes dial a relay on this host instead of the leader; the relay follows it."""

    relayed = True

    def __init__(self, worker: RayWorker, bind: RelayBind, node_ip: Optional[str]) -> None:
        self.worker, self.bind, self.node_ip = worker, bind, node_ip
        self.relay: Optional[Relay] = None

    @property
    def relay_address(self) -> Optional[str]:
        """What the worker's processes dial (None before the first start)."""
        return join_address(*self.relay.address) if self.relay else None

    def open(self, leader_gcs: Optional[str] = None) -> None:
        """Listen (again, if its thread ended); the host is known without a leader only if it was given."""
        if self.relay is not None and self.relay.alive:
            return
        host = relay_host(self.bind.host, self.node_ip, leader_gcs)
        if host is None:
            return
        try:
            self.relay = Relay(host, self.bind.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen for the GCS relay on {join_address(host, self.bind.port)}: "
                              f"{exc.strerror or exc} (see --ha-relay)") from None
        log.info("GCS relay listening on %s", self.relay_address)

    def start(self, address: str, epoch: int) -> None:
        self.open(address)
        assert self.relay_address is not None
        self.retarget(address)
        self.worker.start(self.relay_address, epoch)

    def retarget(self, address: Optional[str]) -> None:
        if self.relay is not None:
            self.relay.retarget(resolve(address) if address else None)

    def failure(self) -> Optional[str]:
        if self.relay is not None and not self.relay.alive:
            return "the GCS relay stopped"
        return self.worker.failure()

    def stop(self, grace: float) -> list[int]:
        return self.worker.stop(grace)  # the relay stays: a draining raylet still talks to the GCS

    def close(self) -> None:
        """Close the relay (after the tree has stopped)."""
        if self.relay is not None:
            self.relay.close()


def follow_state(base: SupervisorState, follower: Follower, step: FollowStep,
                 relay: Optional[str] = None) -> SupervisorState:
    """The state record of a follower after a tick (read by status, health and a detached start)."""
    following = follower.following
    return replace(base, role=Role.FOLLOWER, step=step.value, joined=following is not None,
                   epoch=following.epoch if following else None, leader=following.node if following else None,
                   gcs_address=following.gcs_address if following else None, serving=False,
                   restarts=follower.restarts, redis_refused=follower.trouble.refused, relay=relay)


class FollowMode:
    """A worker node that follows whoever leads."""

    noun = "worker"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.follower: Optional[Follower] = None

    def context(self) -> Mapping[str, object]:
        following = self.follower.following if self.follower else None
        return {"role": Role.FOLLOWER.value, "epoch": following.epoch if following else 0,
                "leader": following.node if following else None}

    def check_redis(self) -> None:
        """Reach Redis once and check the lease's keys (before detaching)."""
        connect_keyspace(self.plan, StopFlag()).close()

    def run(self, supervision: Supervision) -> int:
        """Follow the leader until a stop is asked; 0 once the worker's tree is gone."""
        plan = self.plan
        worker = make_worker(plan)
        worker.open()  # a relay's given host and port are checked now, not at the first leader
        keyspace = connect_keyspace(plan, supervision.stop)
        source = LeaderReader(keyspace, plan.identity.node_name,
                              ttl=max(plan.timing.lease_duration, 3 * plan.timing.retry_period),
                              addresses=machine_addresses())
        self.follower = follower = Follower(source, worker,
                                            FollowTiming(plan.timing.retry_period, plan.timing.stop_grace,
                                                         stopped_for=plan.timing.effective_reconnect_timeout),
                                            supervision.stop)
        log.info("following the leader of %s on %s%s", keyspace.keys.lease, plan.target.display,
                 "" if worker.relayed else " (no relay: the worker is restarted when the leader moves)")

        def report(step: FollowStep) -> None:
            supervision.state.update(follow_state(supervision.state.base, follower, step, worker.relay_address))
        try:
            follower.run(report=report)
        except ConfigError as exc:  # the relay cannot listen where --ha-relay says
            log.error("%s", exc)
            return Exit.USAGE
        except Exception:
            log.exception("internal error; stopping the worker")
            return 1
        finally:
            worker.stop(0.0)  # after an internal error too: no worker outlives its supervisor
            worker.close()    # the relay last, once nothing dials it
            try:
                source.forget()
            except Exception as exc:  # the record expires by itself
                log.warning("could not remove the follower record: %s", exc)
            keyspace.close()
        return 0


def machine_addresses() -> tuple[str, ...]:
    """This machine's IP addresses but loopback ones: the follower's heartbeat names them, so a new leader
    can tell which of `ray up`'s worker_ips still run a follower (head.provider)."""
    found = (a.address.split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic
             if a.family in (socket.AF_INET, socket.AF_INET6))
    return tuple(sorted({a for a in found if not ipaddress.ip_address(a).is_loopback}))


def make_worker(plan: Plan) -> Union[RayWorker, RelayedWorker]:
    """The worker node's tree, behind a relay unless --ha-relay=off."""
    if plan.relay is None:
        return RayWorker(plan.command)
    return RelayedWorker(RayWorker(with_relay_env(plan.command)), plan.relay, plan.node_ip)


def connect_keyspace(plan: Plan, stop: StopSignal) -> Keyspace:
    """A checked connection to the lease's Redis (a few quiet tries)."""
    def build(keyspace: Keyspace) -> Keyspace:
        keyspace.check()
        return keyspace
    return connect(plan, stop, build)
