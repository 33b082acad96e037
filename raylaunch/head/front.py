"""A standby answers for the head: on its node IP it listens on the ports the leader's head serves clients
(the GCS, the dashboard and Jobs API, the Ray Client server, any port asked for) and relays each
connection to the same port on the leader (proc.relay). A name or list holding every candidate then
always reaches the head that leads, as does a load balancer without health checks.

A campaign watcher: while standing by it follows the serving leader's record; the moment the lease is
won it closes every listener, before its own head starts and binds those ports; standing by again, it
listens again. Between leaders new connections are reset. A standby on the leader's own machine listens
on nothing: Ray's head binds its ports on every address there.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from raylaunch.config import Role
from raylaunch.head.steps import Snapshot
from raylaunch.outage import OUTAGES
from raylaunch.plan import ClientPorts
from raylaunch.proc.net import is_local_address, split_address
from raylaunch.proc.relay import Relay, relay_host
from raylaunch.store.records import Record

log = logging.getLogger("ray-ha")

Listener = tuple[str, int]  # (host, port) a standby listens on


class ClientFront:
    """The client listeners of one head candidate. `read` gives the serving leader's record (None between
    leaders); `listen` makes a relay (proc.relay.Relay); `local` tells an address of this machine."""

    def __init__(self, wanted: ClientPorts, node_ip: Optional[str], read: Callable[[], Optional[Record]],
                 listen: Callable[[str, int], Relay] = Relay, local: Callable[[str], bool] = is_local_address) -> None:
        self.wanted, self.node_ip, self.read, self.listen, self.local = wanted, node_ip, read, listen, local
        self.relays: dict[Listener, Relay] = {}
        self._refused: set[Listener] = set()  # listeners that could not bind (said once each)
        self._leader: Optional[tuple[str, int]] = None  # (node, epoch) whose ports we answer on
        self._settled: Optional[tuple[Optional[str], int]] = None  # (leader, epoch) whose serving record we follow

    def __call__(self, snapshot: Snapshot) -> None:
        if snapshot.role is not Role.STANDBY:
            self.close()  # won (before our head binds these ports), leading, stepping down or done
            return
        if (snapshot.leader, snapshot.epoch) == self._settled:
            return  # a leader's record does not change within its epoch: no Redis read on this tick
        try:
            record = self.read()
        except OUTAGES:
            return  # the campaign says what Redis does; the listeners keep their target meanwhile
        self.follow(record)
        serving = record is not None and (record.node, record.epoch) == (snapshot.leader, snapshot.epoch)
        self._settled = (snapshot.leader, snapshot.epoch) if serving else None

    def follow(self, record: Optional[Record]) -> None:
        """Listen on what `record`'s head serves and relay there; None (between leaders): reset new connections."""
        if record is None:
            for relay in self.relays.values():
                relay.retarget(None)
            return
        leader_host = split_address(record.gcs_address)[0]
        host = None if self.local(leader_host) else relay_host(None, self.node_ip, record.gcs_address)
        wanted = {} if host is None else {(host, port): port for port in self.ports(record)}
        for listener in set(self.relays) - set(wanted):
            self.relays.pop(listener).close()
        for listener, port in wanted.items():
            open_ = self.relays[listener] if listener in self.relays else self._open(listener)
            if open_ is not None:
                open_.retarget((leader_host, port))
        if (record.node, record.epoch) != self._leader and self.relays:
            self._leader = (record.node, record.epoch)
            log.info("answering for %s's head (epoch %d) on %s", record.node, record.epoch,
                     ", ".join(f"{h}:{p}" for h, p in sorted(self.relays)))

    def ports(self, record: Record) -> list[int]:
        """The ports to answer on for this leader: its services' ports as its record names them, and ours."""
        ports = (record.port(service) for service in self.wanted.services)
        return list(dict.fromkeys([*(p for p in ports if p is not None), *self.wanted.numbers]))

    def close(self) -> None:
        """Stop listening: every listener and relayed connection closed (the threads joined)."""
        while self.relays:
            self.relays.popitem()[1].close()
        self._leader = self._settled = None

    def _open(self, listener: Listener) -> Optional[Relay]:
        try:
            relay = self.listen(*listener)
        except OSError as exc:
            if listener not in self._refused:
                self._refused.add(listener)
                log.warning("cannot answer for the head on %s:%d (%s); clients that dial this standby there "
                            "are not relayed", *listener, exc.strerror or exc)
            return None
        self._refused.discard(listener)
        self.relays[listener] = relay
        return relay
