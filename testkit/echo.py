"""A TCP echo server that names itself in each answer: what a relay forwards to, in tests and the bench."""

from __future__ import annotations

import socket
import threading


class Echo:
    """A TCP server on 127.0.0.1 that answers every message with its name and the message."""

    def __init__(self, name: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.server = socket.create_server((host, port))
        self.address = self.server.getsockname()[:2]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(self.name + b":" + data)

    def close(self) -> None:
        self.server.close()


def ask(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` and return the answer (5 s at most)."""
    sock.sendall(data)
    sock.settimeout(5)
    return sock.recv(65536)
