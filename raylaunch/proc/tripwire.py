"""The stop tripwire: how a head-mode supervisor learns that an operator ran `ray stop` on its machine.

`ray stop` (by hand, or run by `ray down` of the candidate's YAML) sends SIGTERM to the processes whose
command line names one of Ray's (Ray's own list, `RAY_PROCESSES` in ray/autoscaler/_private/constants.py,
holds `monitor.py`, matched anywhere in a command line). Ray's processes cannot tell us afterwards who
ended them, and a standby runs none. So the supervisor keeps one tiny child of its own whose command line
carries that name: `ray stop` ends it too, and its exit status, which only its parent sees, says by which
signal. Anything that ends it but us is an operator's stop, and the supervisor then leaves as `ray-ha
stop` would. A crash, an OOM kill or kill -9 of the head's processes leaves it running, so those still
stand by again. It runs in its own session (never part of the head's tree) and exits when its stdin
closes, that is, with us."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from typing import Callable, Optional

log = logging.getLogger("ray-ha")

#: Its command line carries this: `ray stop` matches "monitor.py" anywhere in a command line.
NAME = "ray_ha_stop_monitor.py"
#: It waits for EOF on stdin (we are gone) and ignores Ctrl-C meant for a foreground supervisor.
CODE = "import os, signal; signal.signal(signal.SIGINT, signal.SIG_IGN); os.read(0, 1)"
#: Before it is started again after an end that was no signal (s).
REARM_AFTER = 1.0


class Tripwire:
    """Calls `on_stop(why)` once when something other than us ends the tripwire process."""

    def __init__(self, on_stop: Callable[[str], None], python: str = sys.executable) -> None:
        self.on_stop, self.python = on_stop, python
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._closing = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="stop-tripwire")
        self._thread.start()

    def pids(self) -> set[int]:
        """The tripwire (its own session): never killed or reaped with the head's tree."""
        return {self.proc.pid} if self.proc else set()

    def close(self) -> None:
        """Take it down ourselves: not an operator's stop."""
        self._closing.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self._thread is not None:
            self._thread.join(5)
        if self.proc is not None and self.proc.stdin:
            self.proc.stdin.close()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([self.python, "-c", CODE, NAME], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _watch(self) -> None:
        while self.proc is not None:
            code = self.proc.wait()
            if self._closing.is_set():
                return
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
                self.on_stop(f"`ray stop` (or a {name} sent here) ended ray-ha's stop tripwire (pid "
                             f"{self.proc.pid}, {NAME})")
                return
            log.warning("the stop tripwire (pid %d) exited with code %d; starting it again", self.proc.pid, code)
            if self._closing.wait(REARM_AFTER):
                return
            self._spawn()
