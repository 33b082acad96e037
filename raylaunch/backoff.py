"""The wait before starting again something that died or lost: shared by head and follow mode."""

from __future__ import annotations

#: First and largest wait (s); back to the first once a run lasted RESET_AFTER seconds.
FIRST, CAP, RESET_AFTER = 1.0, 30.0, 60.0


class Backoff:
    """Doubles from `first` up to `cap` with each quick failure; a run of `reset_after` s resets it."""

    def __init__(self, first: float = FIRST, cap: float = CAP, reset_after: float = RESET_AFTER) -> None:
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self._next = first

    def after(self, ran_for: float) -> float:
        """The wait before the next start, given how long the run that just ended lasted."""
        if ran_for >= self.reset_after:
            self._next = self.first
        wait, self._next = self._next, min(self.cap, self._next * 2)
        return wait
