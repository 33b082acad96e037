"""A TCP relay that forwards each connection to a target that follows the leader: a worker's GCS relay
(follow mode) and a standby's client listeners (head mode) are each one.

The worker's raylet, core workers and drivers keep one GCS address for life; the relay gives them one
that follows the leader; a client that dials any head candidate reaches the leader's head through it.
On a new target every relayed connection is closed at once (gRPC reconnects to the new GCS right away
instead of after its keepalive); while no leader serves, new connections are reset (Ray backs off
rather than hangs). One thread with a selector; it dies with its process.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
from typing import Optional, cast

from raylaunch.proc.net import local_address_towards, split_address
from raylaunch.proc.raycmd import REWRITTEN_HOSTS

Target = Optional[tuple[str, int]]
CHUNK = 256 * 1024
#: Where a relay listens when the leader is on this machine's loopback: Ray leaves 127.0.0.2 alone.
LOOPBACK_RELAY_HOST = "127.0.0.2"


class _Pipe:
    """One relayed connection: the client's socket and the upstream one, with what each still owes."""

    def __init__(self, client: socket.socket, upstream: socket.socket, target: Target) -> None:
        self.client, self.upstream, self.target = client, upstream, target
        self.pending = {client: b"", upstream: b""}  # bytes waiting to be written to that socket
        self.watching = {client: selectors.EVENT_READ, upstream: selectors.EVENT_WRITE}  # as registered
        self.connected = False

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


class Relay:
    """Listens on `host:port` (port 0: the kernel picks) and forwards to `retarget()`'s address."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.listener = socket.create_server((host, port), backlog=128)
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()[:2]
        self._target: Target = None
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="gcs-relay", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once the relay's thread has ended (closed, or a bug)."""
        return self._thread.is_alive()

    @property
    def target(self) -> Target:
        return self._target

    def retarget(self, target: Target) -> None:
        """Forward new connections to `target` (None: reset them); a change closes every relayed one."""
        with self._lock:
            if target == self._target:
                return
            self._target = target
        self._wake(b"r")

    def connections(self) -> int:
        """How many connections are being relayed now."""
        with self._lock:
            return len(self._pipes) // 2  # each pipe is filed under both of its sockets

    def close(self) -> None:
        """Stop: every connection and the listener closed, the thread joined."""
        self._closing = True
        self._wake(b"c")
        self._thread.join(5)

    # -- the loop ---------------------------------------------------------------------------------

    def _wake(self, why: bytes) -> None:
        try:
            self._wake_w.send(why)
        except OSError:
            pass

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select():
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._woken()
                    else:
                        self._serve(cast(socket.socket, key.fileobj), events)
        finally:
            self._drop_all()
            for sock in (self.listener, self._wake_r, self._wake_w):
                sock.close()
            self._selector.close()

    def _woken(self) -> None:
        reasons = self._wake_r.recv(64)
        if b"r" in reasons:
            self._drop_all(but=self._target)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        target = self._target
        if target is None:
            _reset(client)
            return
        client.setblocking(False)
        upstream = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = upstream.connect_ex(target)
        if code not in (0, errno.EINPROGRESS):
            _reset(client)
            upstream.close()
            return
        pipe = _Pipe(client, upstream, target)
        with self._lock:
            self._pipes[client] = self._pipes[upstream] = pipe
        self._selector.register(upstream, selectors.EVENT_WRITE, pipe)  # until the connect completes
        self._selector.register(client, selectors.EVENT_READ, pipe)

    def _serve(self, sock: socket.socket, events: int) -> None:
        pipe = self._pipes.get(sock)
        if pipe is None:
            return
        if sock is pipe.upstream and not pipe.connected:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self._drop(pipe, reset=True)
                return
            pipe.connected = True
        if events & selectors.EVENT_WRITE and not self._flush(pipe, sock):
            return
        if events & selectors.EVENT_READ:
            self._forward(pipe, sock)
        self._update(pipe)

    def _forward(self, pipe: _Pipe, sock: socket.socket) -> None:
        """Read what `sock` has and write it on to its peer (keeping what the peer cannot take yet)."""
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(pipe)
            return
        peer = pipe.peer(sock)
        pipe.pending[peer] += data
        self._flush(pipe, peer)

    def _flush(self, pipe: _Pipe, sock: socket.socket) -> bool:
        """Write what `sock` is owed; False if the pipe was dropped."""
        if sock is pipe.upstream and not pipe.connected:
            return True
        owed = pipe.pending[sock]
        if owed:
            try:
                sent = sock.send(owed)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(pipe)
                return False
            pipe.pending[sock] = owed[sent:]
        return True

    def _update(self, pipe: _Pipe) -> None:
        """Watch each side for reading, and for writing while it is owed bytes (or still connecting);
        the selector is only told of a change (most messages change nothing: two system calls saved)."""
        if pipe.client not in self._pipes:
            return
        for sock in (pipe.client, pipe.upstream):
            if sock is pipe.upstream and not pipe.connected:
                events = selectors.EVENT_WRITE
            else:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pipe.pending[sock] else 0)
            if events != pipe.watching[sock]:
                self._selector.modify(sock, events, pipe)
                pipe.watching[sock] = events

    def _drop(self, pipe: _Pipe, reset: bool = False) -> None:
        with self._lock:
            for sock in (pipe.client, pipe.upstream):
                self._pipes.pop(sock, None)
        for sock in (pipe.client, pipe.upstream):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            if reset:
                _reset(sock)
            else:
                sock.close()

    def _drop_all(self, but: Target = None) -> None:
        """Close every relayed connection at once (a reset, so both ends notice now), but those already
        relayed to `but` (the new target: one accepted after a retarget, before its wake was read)."""
        for pipe in list(self._pipes.values()):
            if pipe.client in self._pipes and (but is None or pipe.target != but):  # each pipe once
                self._drop(pipe, reset=True)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN: the other end errs at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def relay_host(bind_host: Optional[str], node_ip: Optional[str], leader_gcs: Optional[str]) -> Optional[str]:
    """Where the relay listens: --ha-relay's host, else the worker's --node-ip-address, else the address
    this machine reaches the leader from (the node IP Ray would pick; None before a leader is known);
    never an address Ray rewrites."""
    for host in (bind_host, node_ip):
        if host and host.lower() not in REWRITTEN_HOSTS:
            return host
    if leader_gcs is None:
        return None
    host = local_address_towards(split_address(leader_gcs)[0])
    return LOOPBACK_RELAY_HOST if host in REWRITTEN_HOSTS else host
