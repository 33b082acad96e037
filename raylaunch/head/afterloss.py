"""What a candidate does after losing the lease or its head: end (systemd or Kubernetes restart it), or,
detached as under `ray up` where nothing would, stand by again after a backoff. Only once it has settled
(served, or stood by under a leader): before that, the detached start is still there to report a failure."""

from __future__ import annotations

from typing import Optional

from raylaunch.backoff import Backoff


class AfterLoss:
    """The stand-by-again policy of one campaign."""

    def __init__(self, stand_by_again: bool) -> None:
        self.stand_by_again = stand_by_again
        self.settled = False
        self.backoff = Backoff()

    def settle(self) -> None:
        """The campaign served, or stood by under a leader: what a detached start reports as its outcome."""
        self.settled = True

    def hold(self, led_for: float, stopping: bool) -> Optional[float]:
        """Seconds to wait before standing by again, or None to end the campaign."""
        if not self.stand_by_again or stopping or not self.settled:
            return None
        return self.backoff.after(led_for)
