"""A stop request that a signal handler may set safely.

threading.Event.set() takes a lock that the main thread may already hold inside Event.wait();
a handler running at that moment would deadlock the launcher. This flag takes no lock: set()
stores a bool and writes a byte to a self-pipe, and wait() sleeps in select() on that pipe.
"""

from __future__ import annotations

import os
import select
from typing import Protocol


class StopSignal(Protocol):
    """What the campaign reads: threading.Event offers the same two methods (used in tests)."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float) -> bool: ...


class StopFlag:
    """Set from a signal handler; read and waited on by the loop."""

    def __init__(self) -> None:
        self._set = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        """Request a stop; safe inside a signal handler."""
        self._set = True
        try:
            os.write(self._write, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake-up is already pending

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s or until set; returns whether a stop was requested."""
        if not self._set and timeout > 0:
            try:
                select.select([self._read], [], [], timeout)
            except InterruptedError:
                pass
        return self._set

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
