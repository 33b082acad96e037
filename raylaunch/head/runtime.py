"""Head mode: the campaign wired to the real lease, head, fence, watchdog, hooks and HTTP endpoint.

The shared runtime (raylaunch.supervisor) has taken signals, logging, the state file and orphans;
this adds what only a head candidate has, and closes it in order: the campaign has stopped the
head's tree before the watchdog is dismissed and before the lease's connection goes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Optional

from raylaunch.config import Exit
from raylaunch.head.campaign import Campaign
from raylaunch.head.front import ClientFront
from raylaunch.head.hooks import Hooks
from raylaunch.head.oldhead import OldHeadMarker
from raylaunch.head.provider import NodeListCarrier
from raylaunch.head.rayhead import RayHead
from raylaunch.head.steps import Outcome, Snapshot, Step, Watcher
from raylaunch.head.watchdog import Watchdog
from raylaunch.local.endpoint import Endpoint
from raylaunch.local.state import SupervisorState
from raylaunch.plan import ClientPorts, Plan
from raylaunch.proc.prewarm import WarmStart
from raylaunch.proc.raycmd import redact, storage_namespace
from raylaunch.proc.stopflag import StopFlag, StopSignal
from raylaunch.proc.tripwire import Tripwire
from raylaunch.store.fence import AclFence
from raylaunch.store.keyspace import Keyspace
from raylaunch.store.leader import read_leadership
from raylaunch.store.lease import RedisLease
from raylaunch.store.raysession import read_session_name
from raylaunch.store.records import Holder
from raylaunch.supervisor import RuntimeProblem, Supervision, connect

OUTCOME_CODES = {Outcome.STOPPED: Exit.OK, Outcome.FAILED: Exit.RUNTIME,
                 Outcome.LOST: Exit.LOST, Outcome.HEAD_DIED: Exit.HEAD_DIED}

log = logging.getLogger("ray-ha")


def head_state(base: SupervisorState, snapshot: Snapshot) -> SupervisorState:
    """The state record of a campaign after a tick."""
    return replace(base, role=snapshot.role, epoch=snapshot.epoch, leader=snapshot.leader,
                   gcs_address=snapshot.gcs_address, serving=snapshot.serving,
                   transitions=snapshot.transitions, renew_failures=snapshot.renew_failures,
                   takeover_seconds=snapshot.takeover_seconds,
                   waiting_old_gcs=snapshot.step is Step.WAITING_OLD_GCS, redis_refused=snapshot.redis_refused,
                   paused=snapshot.paused, switchover_pending=snapshot.switchover_pending,
                   headless_seconds=snapshot.headless_seconds)


class HeadMode:
    """A head candidate: campaign for the lease, run and supervise the head while leading."""

    noun = "head"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.campaign: Optional[Campaign] = None

    def context(self) -> Mapping[str, object]:
        """Role, epoch and leader for every log line, read from the campaign at the moment of logging."""
        c = self.campaign
        return {} if c is None else {"role": c.role.value, "epoch": c.watch.epoch, "leader": c.watch.leader}

    def check_redis(self) -> None:
        """Reach Redis once and check what the campaign will need (before detaching)."""
        lease = connect_lease(self.plan, StopFlag())
        try:
            make_fence(self.plan, lease)
        finally:
            lease.close()

    def run(self, supervision: Supervision) -> int:
        plan = self.plan
        endpoint = start_endpoint(plan)
        hooks = Hooks(plan.reporting.on_elected, plan.reporting.on_demoted, plan.reporting.hook_timeout,
                      plan.command.env)
        lease = watchdog = None
        marker = OldHeadMarker(plan.ray_python, plan.command.env)
        tripwire = Tripwire(lambda why: self._operator_stopped(why, supervision))
        head: Optional[RayHead] = None
        front: Optional[ClientFront] = None
        try:
            tripwire.start()
            lease = connect_lease(plan, supervision.stop)
            log.info("campaigning as %s for %s on %s (lease %gs, renew deadline %gs, retry %gs)",
                     plan.identity.node_name, lease.key, plan.target.display, plan.timing.lease_duration,
                     plan.timing.renew_deadline, plan.timing.retry_period)
            log.info("head command: %s", " ".join(redact(plan.command.argv)))
            watchdog = dog = Watchdog(plan.timing.renew_deadline, plan.timing.lease_duration,
                                      lambda: head.sid() if head else None)
            fence = make_fence(plan, lease)
            warm = WarmStart(plan.warm_python, plan.command.env) if plan.warm_python else None
            namespace = storage_namespace(plan.command)
            head = RayHead(plan.command, plan.node_ip,
                           spare=lambda: hooks.pids() | dog.pids() | marker.pids() | tripwire.pids(),
                           credentials=fence.credentials if fence else None, warm=warm,
                           session_name=lambda: read_session_name(lease.keyspace, namespace))
            watchers: list[Watcher] = [dog, self._publisher(supervision, endpoint), hooks, marker]
            if plan.local_cluster:
                watchers.append(NodeListCarrier(lease, plan.local_cluster))
            if plan.client_ports:
                front = client_front(plan.client_ports, plan.node_ip, lease.keyspace)
                watchers.append(front)
            self.campaign = Campaign(lease, head, plan.timing, supervision.stop, name=plan.identity.node_name,
                                     watchers=watchers, fence=fence, stand_by_again=plan.stand_by_again)
            return OUTCOME_CODES[self.campaign.run()]
        finally:
            tripwire.close()
            if head:
                head.close()  # an unused pre-warmed interpreter
            if watchdog:
                watchdog.close()  # the campaign has stopped the tree by now
            if front:
                front.close()
            marker.close()
            hooks.close()
            if endpoint:
                endpoint.close()
            if lease:
                lease.close()

    @staticmethod
    def _operator_stopped(why: str, supervision: Supervision) -> None:
        """`ray stop` ran here (by hand, or from `ray down`): leave, as `ray-ha stop` would."""
        log.warning("%s: an operator stopped Ray on this machine; leaving, as `ray-ha stop` would (a leader "
                    "hands over; start again to stand by)", why)
        supervision.stop.set()

    @staticmethod
    def _publisher(supervision: Supervision, endpoint: Optional[Endpoint]) -> Watcher:
        """A watcher that turns each snapshot into the state record, for the state file and the endpoint."""
        def publish(snapshot: Snapshot) -> None:
            record = head_state(supervision.state.base, snapshot)
            supervision.state.update(record)
            if endpoint:
                endpoint(record)
        return publish


def start_endpoint(plan: Plan) -> Optional[Endpoint]:
    """The HTTP endpoint if asked for; a port that cannot be bound is a runtime problem (exit 1)."""
    r = plan.reporting
    if r.http_port is None:
        return None
    try:
        endpoint = Endpoint(r.http_host, r.http_port, stale_after=plan.timing.lease_duration)
    except OSError as exc:
        raise RuntimeProblem(f"cannot serve HTTP on {r.http_host}:{r.http_port}: {exc.strerror or exc}") from None
    log.info("HTTP endpoint on %s:%d (/healthz, /leader, /metrics)", r.http_host, endpoint.port)
    return endpoint


def connect_lease(plan: Plan, stop: StopSignal) -> RedisLease:
    """A checked lease handle for this candidate (Redis gets a few quiet tries)."""
    me = Holder.me(plan.identity.node_name, plan.identity.host)

    def build(keyspace: Keyspace) -> RedisLease:
        lease = RedisLease(keyspace, me, plan.timing.lease_duration,
                           min_replicas=plan.safety.min_replicas, wait_timeout=plan.timing.redis_timeout / 2,
                           priority=plan.identity.priority, priority_yield=plan.timing.priority_yield)
        lease.check()
        return lease

    return connect(plan, stop, build)


def client_front(wanted: ClientPorts, node_ip: Optional[str], keyspace: Keyspace) -> ClientFront:
    """A standby's client listeners, following the serving leader's record as Redis has it."""
    return ClientFront(wanted, node_ip, lambda: read_leadership(keyspace).serving)


def make_fence(plan: Plan, lease: RedisLease) -> Optional[AclFence]:
    """The storage fence asked for, checked (RedisRefused if our user may not manage ACLs)."""
    if plan.safety.fence != "acl":
        return None
    fence = AclFence(lease.keyspace)
    fence.check()
    return fence
