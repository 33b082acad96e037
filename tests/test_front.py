"""A standby's client listeners (head.front) with real sockets: it answers on the leader's ports and relays
there, resets between leaders, lets go of the ports the moment it wins and listens again once it stands by.

The leader is a pair of echo servers on 127.0.0.1 (its GCS and its dashboard); the standby's node IP is
127.0.0.3, so both sides use the same port numbers, as two machines would, and the standby is told the
leader's address is not on its machine (the one seam: a real second machine is the hosts tests' part).
"""

from __future__ import annotations

import logging
import socket

import pytest

from raylaunch.config import ConfigError, Role
from raylaunch.head.front import ClientFront
from raylaunch.head.steps import Snapshot, Step
from raylaunch.plan import ClientPorts, client_ports_from
from raylaunch.store.records import Record
from testkit.echo import Echo, ask

STANDBY_IP = "127.0.0.3"


def snapshot(role: Role, leader: str = "a", epoch: int = 1) -> Snapshot:
    """What the campaign shows after a tick: the lease's holder and epoch as its last try saw them."""
    return Snapshot(node="b", role=role, epoch=epoch, leader=leader, gcs_address=None, serving=False, transitions=1,
                    renew_failures=0, takeover_seconds=None, lease_confirmed_at=None, redis_refused=None,
                    step=Step.STANDING_BY, outcome=None)


@pytest.fixture
def leader():
    gcs, dashboard = Echo(b"gcs"), Echo(b"dashboard")
    record = Record(node="a", host="ha", gcs_address=f"127.0.0.1:{gcs.address[1]}", epoch=1, since=1.0,
                    ports={"dashboard": dashboard.address[1]})
    yield record, gcs, dashboard
    gcs.close()
    dashboard.close()


@pytest.fixture
def front(leader):
    seen = {"record": leader[0]}
    made = ClientFront(ClientPorts(), STANDBY_IP, lambda: seen["record"], local=lambda host: False)
    made.seen = seen
    yield made
    made.close()


def dial(port: int) -> socket.socket:
    return socket.create_connection((STANDBY_IP, port), timeout=5)


def closed(sock: socket.socket) -> bool:
    """True if the other end has closed `sock` (an end of stream or a reset); closes it too."""
    with sock:
        sock.settimeout(5)
        try:
            sock.sendall(b"x")
            return sock.recv(10) == b""
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
            return True


def refused(port: int) -> bool:
    """True if a new connection to the standby's `port` is refused or reset (on loopback the reset can
    arrive before connect() returns)."""
    try:
        return closed(dial(port))
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def test_a_standby_answers_on_the_leaders_ports_and_relays_each_to_its_service(front, leader):
    record, gcs, dashboard = leader
    front(snapshot(Role.STANDBY))
    with dial(gcs.address[1]) as sock:
        assert ask(sock, b"hi") == b"gcs:hi"
    with dial(dashboard.address[1]) as sock:
        assert ask(sock, b"hi") == b"dashboard:hi"
    assert sorted(front.relays) == sorted([(STANDBY_IP, gcs.address[1]), (STANDBY_IP, dashboard.address[1])])


def test_between_leaders_new_connections_are_reset_and_the_next_leader_is_reached(front, leader):
    record, gcs, dashboard = leader
    front(snapshot(Role.STANDBY))
    front.seen["record"] = None  # the leader is gone; no new one serves yet
    front(snapshot(Role.STANDBY, leader=""))
    assert refused(gcs.address[1]), "no leader serves: a client is reset, not left hanging"
    front.seen["record"] = record
    front(snapshot(Role.STANDBY))
    with dial(gcs.address[1]) as sock:
        assert ask(sock, b"back") == b"gcs:back"


def test_the_ports_are_let_go_the_moment_the_lease_is_won_and_taken_again_on_standing_by(front, leader):
    record, gcs, dashboard = leader
    front(snapshot(Role.STANDBY))
    held = dial(gcs.address[1])
    assert ask(held, b"hi") == b"gcs:hi"
    front(snapshot(Role.WAITING))  # the tick that won: before the head starts
    assert front.relays == {}
    with socket.create_server((STANDBY_IP, gcs.address[1])):  # our head can bind the port now
        pass
    assert closed(held), "what it relayed is closed with it"
    front(snapshot(Role.LEADER))
    assert front.relays == {}, "a leader's own head answers"
    front(snapshot(Role.STANDBY))  # handed over (switchover) or back from a loss
    with dial(gcs.address[1]) as sock:
        assert ask(sock, b"again") == b"gcs:again"


@pytest.mark.parametrize("node_ip", [None, "127.0.0.1", STANDBY_IP])
def test_a_standby_on_the_leaders_machine_listens_on_nothing(leader, node_ip):
    """Ray's head binds its ports on every address: a listener of ours on any of them would take its port."""
    record = leader[0]
    front = ClientFront(ClientPorts(), node_ip, lambda: record)  # the leader's 127.0.0.1 is this machine's
    front(snapshot(Role.STANDBY))
    assert front.relays == {}


def test_only_the_ports_asked_for_are_answered_on_numbers_as_they_are(leader):
    record, gcs, dashboard = leader
    extra = Echo(b"serve")
    front = ClientFront(ClientPorts(services=("gcs",), numbers=(extra.address[1],)), STANDBY_IP, lambda: record,
                        local=lambda host: False)
    try:
        front(snapshot(Role.STANDBY))
        assert sorted(port for _, port in front.relays) == sorted([gcs.address[1], extra.address[1]])
        with dial(extra.address[1]) as sock:
            assert ask(sock, b"GET /") == b"serve:GET /"
    finally:
        front.close()
        extra.close()


def test_a_port_that_cannot_be_bound_is_said_once_and_the_others_still_answer(leader, caplog):
    record, gcs, dashboard = leader
    squatter = socket.create_server((STANDBY_IP, dashboard.address[1]))
    front = ClientFront(ClientPorts(), STANDBY_IP, lambda: record, local=lambda host: False)
    try:
        with caplog.at_level(logging.WARNING, logger="ray-ha"):
            front(snapshot(Role.STANDBY))
            front(snapshot(Role.STANDBY))
        assert caplog.text.count(f"cannot answer for the head on {STANDBY_IP}:{dashboard.address[1]}") == 1
        with dial(gcs.address[1]) as sock:
            assert ask(sock, b"hi") == b"gcs:hi"
    finally:
        front.close()
        squatter.close()


@pytest.mark.parametrize("text, expected", [
    ("auto", ClientPorts()),
    ("off", None),
    ("gcs,client,8000", ClientPorts(services=("gcs", "client"), numbers=(8000,))),
    (" dashboard , 8000,8000", ClientPorts(services=("dashboard",), numbers=(8000,))),
])
def test_the_client_ports_option_names_services_and_port_numbers(text, expected):
    assert client_ports_from(text) == expected


@pytest.mark.parametrize("text", ["", "web", "gcs,70000", "0", "gcs,,x"])
def test_anything_else_in_the_client_ports_option_is_refused(text):
    with pytest.raises(ConfigError, match="client ports"):
        client_ports_from(text)


def test_a_settled_leader_costs_no_redis_read_until_the_lease_shows_another(leader):
    record = leader[0]
    reads = []
    front = ClientFront(ClientPorts(), STANDBY_IP, lambda: reads.append(1) or record, local=lambda host: False)
    try:
        for _ in range(3):
            front(snapshot(Role.STANDBY))
        assert len(reads) == 1, "one read finds the record of a/1; the tick's own lease try says it still holds"
        front(snapshot(Role.STANDBY, leader="c", epoch=2))
        assert len(reads) == 2
    finally:
        front.close()

