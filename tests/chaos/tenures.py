"""Listens for the fake `ray` heads' tenure announcements: start from the head, end at the socket's EOF.

Every process of a fake head's tree holds the announcing socket, so EOF arrives when the last of them
has died (a zombie's descriptors are already closed) — the honest end of that head's tenure, whoever
killed it. The end is stamped when the listener sees EOF, a little late, never early.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from typing import Optional

from checker import Tenure


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class TenureRecorder:
    """A Unix-socket listener on `path`, run by one thread; `tenures()` is the record so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(64)
        self.server.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.server, selectors.EVENT_READ, None)
        self._open: dict[socket.socket, dict] = {}
        self._buffers: dict[socket.socket, bytes] = {}
        self._done: list[Tenure] = []
        self._lock = threading.Lock()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="tenures", daemon=True)
        self.thread.start()

    def tenures(self) -> list[Tenure]:
        with self._lock:
            running = [self._tenure(info, None) for info in self._open.values() if info]
            return sorted(self._done + running, key=lambda t: t.start)

    def active(self) -> Optional[Tenure]:
        """The running tenure that started last, if any."""
        running = [t for t in self.tenures() if t.end is None]
        return running[-1] if running else None

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self.selector.select(timeout=0.2):
                if key.fileobj is self.server:
                    self._accept()
                else:
                    self._read(key.fileobj)

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        conn.setblocking(False)
        with self._lock:
            self._open[conn], self._buffers[conn] = {}, b""
        self.selector.register(conn, selectors.EVENT_READ, None)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        ended = now()
        with self._lock:
            if data:
                self._buffers[conn] += data
                if b"\n" in self._buffers[conn] and not self._open[conn]:
                    self._open[conn] = json.loads(self._buffers[conn].split(b"\n", 1)[0])
                return
            info = self._open.pop(conn)
            self._buffers.pop(conn, None)
            if info:
                self._done.append(self._tenure(info, ended))
        self.selector.unregister(conn)
        conn.close()

    @staticmethod
    def _tenure(info: dict, end: Optional[float]) -> Tenure:
        return Tenure(node=str(info["node"]), epoch=int(info["epoch"]), start=float(info["t"]), end=end,
                      others=tuple(info.get("others") or ()))

    def close(self) -> None:
        self._stopped = True
        self.thread.join(5)
        self.server.close()
