"""A TCP proxy between one launcher and Redis that can cut the link: the partitions of the chaos harness.

Modes: `pass` forwards both ways; `drop` resets every connection and refuses new ones (a link that
fails fast); `hang` accepts and keeps connections but forwards nothing (a black hole: calls hang until
the client's own timeout). Leaving `hang` either resets the held connections or, with `deliver_late`,
delivers what was held back, as TCP does when a partition heals: old requests arrive late.
One selector thread serves every proxy of a harness.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Optional

BUFFER = 65536


def reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN, as a failed link looks to the other side."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass(eq=False)
class Link:
    """One client connection and its upstream; `held` is what a hang kept from each side."""

    client: socket.socket
    upstream: Optional[socket.socket]
    held: dict = field(default_factory=lambda: {"up": b"", "down": b""})
    client_gone: bool = False  # the client closed during a hang: its FIN waits behind the held data


class Proxy:
    """Listens on 127.0.0.1:<port> and forwards to `target` (host, port) unless told otherwise."""

    def __init__(self, hub: "ProxyHub", target: tuple[str, int]) -> None:
        self.hub, self.target, self.mode = hub, target, "pass"
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.links: list[Link] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: str, deliver_late: bool = False) -> None:
        """Switch mode (from any thread); see the module docstring."""
        self.hub.call(lambda: self._set_mode(mode, deliver_late))

    def _set_mode(self, mode: str, deliver_late: bool) -> None:
        before, self.mode = self.mode, mode
        if mode == "drop":
            for link in list(self.links):
                self._close(link)
        elif before == "hang" and mode == "pass":
            for link in list(self.links):
                if deliver_late:
                    self._flush(link)
                else:
                    self._close(link)

    def _flush(self, link: Link) -> None:
        try:
            if link.upstream is None:
                link.upstream = socket.create_connection(self.target, timeout=1)
                link.upstream.setblocking(False)
                self.hub.watch(link.upstream, (self, link, "down"))
            link.upstream.sendall(link.held["up"])
            link.held["up"] = b""
            if link.client_gone:
                link.upstream.shutdown(socket.SHUT_WR)  # Redis runs what arrived, then sees the FIN
                return
            link.client.sendall(link.held["down"])
            link.held["down"] = b""
        except OSError:
            self._close(link)

    def accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        if self.mode == "drop":
            reset(client)
            return
        upstream = None
        if self.mode == "pass":
            try:
                upstream = socket.create_connection(self.target, timeout=1)
            except OSError:
                reset(client)
                return
            upstream.setblocking(False)
        client.setblocking(False)
        link = Link(client, upstream)
        self.links.append(link)
        self.hub.watch(client, (self, link, "up"))
        if upstream is not None:
            self.hub.watch(upstream, (self, link, "down"))

    def forward(self, link: Link, direction: str) -> None:
        """Data arrived on one side of `link`: pass it on, hold it, or close both on EOF."""
        source = link.client if direction == "up" else link.upstream
        sink = link.upstream if direction == "up" else link.client
        try:
            data = source.recv(BUFFER)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and self.mode == "hang" and direction == "up":
            link.client_gone = True
            self.hub.forget(link.client)
        elif not data or (direction == "down" and link.client_gone):
            self._close(link)
        elif self.mode == "hang" or sink is None:
            link.held[direction] += data
        else:
            try:
                sink.setblocking(True)
                sink.sendall(data)
                sink.setblocking(False)
            except OSError:
                self._close(link)

    def _close(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)
        for sock in (link.client, link.upstream):
            if sock is not None and sock.fileno() >= 0:
                self.hub.forget(sock)
                reset(sock)

    def close(self) -> None:
        for link in list(self.links):
            self._close(link)
        self.hub.forget(self.listener)
        self.listener.close()


class ProxyHub:
    """The selector thread that runs every proxy; other threads hand it work through `call`."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.proxies: list[Proxy] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: list = []
        self._lock = threading.Lock()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="proxy-hub", daemon=True)
        self.thread.start()

    def proxy(self, target: tuple[str, int]) -> Proxy:
        """A new proxy to `target`, already accepting."""
        made: list[Proxy] = []

        def make() -> None:
            made.append(Proxy(self, target))
            self.watch(made[0].listener, (made[0], None, "accept"))
        self.call(make)
        self.proxies.append(made[0])
        return made[0]

    def call(self, fn) -> None:
        """Run `fn` on the hub thread and wait for it."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()
        with self._lock:
            self._calls.append(run)
        self._wake_w.send(b"x")
        done.wait(10)

    def watch(self, sock: socket.socket, data: tuple) -> None:
        self.selector.register(sock, selectors.EVENT_READ, data)

    def forget(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self.selector.select(timeout=0.5):
                if key.data is None:
                    self._run_calls()
                    continue
                proxy, link, what = key.data
                if what == "accept":
                    proxy.accept()
                elif link in proxy.links:
                    proxy.forward(link, what)

    def _run_calls(self) -> None:
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        with self._lock:
            calls, self._calls = self._calls, []
        for fn in calls:
            fn()

    def close(self) -> None:
        def stop() -> None:
            for proxy in self.proxies:
                proxy.close()
            self._stopped = True
        self.call(stop)
        self.thread.join(5)
