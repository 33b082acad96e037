"""The follow-mode GCS relay with plain sockets: forwards, retargets (closing what it relayed), refuses."""

import socket
import time

import pytest

from raylaunch.proc.relay import Relay
from testkit.echo import Echo, ask


@pytest.fixture
def relay():
    made = Relay("127.0.0.1")
    yield made
    made.close()


@pytest.fixture
def echoes():
    made = [Echo(b"a"), Echo(b"b")]
    yield made
    for echo in made:
        echo.close()


def test_it_forwards_to_its_target(relay, echoes):
    relay.retarget(echoes[0].address)
    with socket.create_connection(relay.address, timeout=5) as sock:
        assert ask(sock, b"hello") == b"a:hello"
        assert ask(sock, b"again") == b"a:again"
        assert relay.connections() == 1


def test_a_large_message_passes_whole(relay, echoes):
    relay.retarget(echoes[0].address)
    payload = bytes(range(256)) * 8192  # 2 MiB
    with socket.create_connection(relay.address, timeout=5) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload) + 2 * 40:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
            if got.replace(b"a:", b"") == payload:
                break
        assert got.replace(b"a:", b"") == payload


def test_a_new_target_closes_every_relayed_connection_at_once(relay, echoes):
    relay.retarget(echoes[0].address)
    old = [socket.create_connection(relay.address, timeout=5) for _ in range(3)]
    for sock in old:
        assert ask(sock, b"x") == b"a:x"
    relay.retarget(echoes[1].address)
    for sock in old:
        sock.settimeout(2)
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"y")
            if not sock.recv(10):
                raise ConnectionResetError("closed")
        sock.close()
    with socket.create_connection(relay.address, timeout=5) as sock:
        assert ask(sock, b"z") == b"b:z", "new connections go to the new target"
    assert relay.connections() in (0, 1)


def test_a_connection_made_to_the_new_target_before_its_wake_is_read_is_kept(relay, echoes, monkeypatch):
    """The race a standby met between leaders: retarget() sets the target, then wakes the thread; a client
    accepted in between already goes to the new target and must not be reset by that wake."""
    relay.retarget(echoes[0].address)
    woken = []
    monkeypatch.setattr(relay, "_wake", woken.append)  # hold the wake back: the thread has not read it yet
    relay.retarget(echoes[1].address)
    with socket.create_connection(relay.address, timeout=5) as sock:
        assert ask(sock, b"early") == b"b:early"
        monkeypatch.undo()
        relay._wake(*woken)  # now the thread reads the retarget's wake
        time.sleep(0.2)
        assert ask(sock, b"still") == b"b:still", "a connection to the new target outlives its wake"


def test_with_no_target_new_connections_are_reset_not_left_hanging(relay):
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):  # on loopback the reset may already meet connect() itself
        with socket.create_connection(relay.address, timeout=5) as sock:
            sock.settimeout(10)  # a hang ends in TimeoutError, not the reset asked for
            sock.sendall(b"x")
            sock.recv(10)
    assert time.monotonic() - started < 5, "reset at once, not after a timeout (generous: a loaded machine)"


def test_a_target_that_refuses_resets_the_client(relay):
    closed = socket.create_server(("127.0.0.1", 0))
    address = closed.getsockname()[:2]
    closed.close()
    relay.retarget(address)
    with socket.create_connection(relay.address, timeout=5) as sock:
        sock.settimeout(2)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock.sendall(b"x")
            if not sock.recv(10):
                raise ConnectionResetError("closed")


def test_close_stops_the_thread_and_frees_the_port(echoes):
    relay = Relay("127.0.0.1")
    relay.retarget(echoes[0].address)
    sock = socket.create_connection(relay.address, timeout=5)
    assert ask(sock, b"x") == b"a:x"
    relay.close()
    assert not relay._thread.is_alive()
    sock.settimeout(2)
    with pytest.raises(ConnectionResetError):
        sock.recv(10)  # reset by the relay as it closed
    with socket.create_server(relay.address):
        pass  # the port is free again
