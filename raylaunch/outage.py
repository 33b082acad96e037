"""What a decision loop hears from its store, whatever the store: unavailable (try again) or refused
(until someone changes a setting), and how a standby or a follower reports either while it lasts.

The store (store/) raises subclasses of these; the campaign and the follower catch only these, so
neither speaks Redis. A transient outage and a permanent refusal are both tried again every retry
period, but they read differently: the exact error is logged when the trouble starts or changes kind,
and again at most once a minute while it lasts; a refusal also marks the node as stuck for status,
health and metrics.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

log = logging.getLogger("ray-ha")

#: How often a lasting trouble is logged again (s).
REPEAT_EVERY = 60.0


class Unavailable(Exception):
    """Transient: the store could not be reached, did not answer in time, or is busy; trying again may succeed."""


class Refused(Exception):
    """Permanent: the store answered and refuses, and goes on refusing until someone changes a setting.

    `cause` names which refusal (the store's subclass lists them); the message says what to do.
    """

    def __init__(self, message: str, cause: str = "other") -> None:
        super().__init__(message)
        self.cause = cause


#: What one exchange with the store may raise that a loop outlives.
OUTAGES = (Unavailable, Refused)


class Trouble:
    """The store trouble of one loop, on an injectable monotonic clock. `who` names the loop's role in
    the log when asked; `note` ends the log line (what goes on meanwhile)."""

    def __init__(self, who: Callable[[], str], clock: Callable[[], float], note: str = "",
                 repeat: float = REPEAT_EVERY) -> None:
        self.who, self.clock, self.note, self.repeat = who, clock, note, repeat
        self.kind: Optional[str] = None     # "unavailable", or the refusal's cause; None while the store answers
        self.refused: Optional[str] = None  # the permanent refusal this loop is stuck on, else None
        self._next_log = 0.0

    def failed(self, exc: Exception, logged: bool = True) -> None:
        """Note a failed exchange; log it if `logged` and it is new, of a new kind, or a minute old."""
        kind = exc.cause if isinstance(exc, Refused) else "unavailable"
        due = kind != self.kind or self.clock() >= self._next_log
        self.kind, self.refused = kind, (None if kind == "unavailable" else str(exc))
        if not (due and logged):
            return
        self._next_log = self.clock() + self.repeat
        if self.refused:  # the log names Redis, the one store there is, as operators' alerts expect
            log.error("%s: Redis refuses, and will until a setting changes (trying again meanwhile%s): %s",
                      self.who(), self.note, exc)
        else:
            log.warning("%s: Redis unavailable, will keep trying%s: %s", self.who(), self.note, exc)

    def recovered(self) -> None:
        """Note a successful exchange; say so if there was trouble."""
        if self.kind is not None:
            log.info("%s: Redis answers again", self.who())
        self.kind = self.refused = None
