"""How a standby or a follower reports Redis trouble, and whether it is stuck.

A transient outage (no answer, busy, failing over) and a permanent refusal (a wrong setting that
nothing but an operator fixes) are both tried again every retry period, but they read differently:
the exact error is logged when the trouble starts or changes kind, and again at most once a minute
while it lasts; a permanent one also marks the node as stuck for status, health and metrics.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from raylaunch.store.errors import LeaseStoreError

log = logging.getLogger("ray-ha")

#: How often a lasting trouble is logged again (s).
REPEAT_EVERY = 60.0


class RedisTrouble:
    """The Redis trouble of one loop, on an injectable monotonic clock. `who` names the loop's role in
    the log when asked; `note` ends the log line (what goes on meanwhile)."""

    def __init__(self, who: Callable[[], str], clock: Callable[[], float], note: str = "",
                 repeat: float = REPEAT_EVERY) -> None:
        self.who, self.clock, self.note, self.repeat = who, clock, note, repeat
        self.kind: Optional[str] = None     # "unavailable", or the refusal's cause; None while Redis answers
        self.refused: Optional[str] = None  # the permanent refusal this loop is stuck on, else None
        self._next_log = 0.0

    def failed(self, exc: Exception, logged: bool = True) -> None:
        """Note a failed exchange; log it if `logged` and it is new, of a new kind, or a minute old."""
        kind = exc.cause if isinstance(exc, LeaseStoreError) else "unavailable"
        due = kind != self.kind or self.clock() >= self._next_log
        self.kind, self.refused = kind, (None if kind == "unavailable" else str(exc))
        if not (due and logged):
            return
        self._next_log = self.clock() + self.repeat
        if self.refused:
            log.error("%s: Redis refuses, and will until a setting changes (trying again meanwhile%s): %s",
                      self.who(), self.note, exc)
        else:
            log.warning("%s: Redis unavailable, will keep trying%s: %s", self.who(), self.note, exc)

    def recovered(self) -> None:
        """Note a successful exchange; say so if there was trouble."""
        if self.kind is not None:
            log.info("%s: Redis answers again", self.who())
        self.kind = self.refused = None
