"""What a new leader does before it starts its head, kept out of the campaign's steps: raise the fence
for its epoch, and say (once a minute) that it waits for the previous leader's GCS to go away."""

from __future__ import annotations

import logging
from typing import Optional

from raylaunch.head.steps import Fence, Tenure
from raylaunch.outage import OUTAGES

log = logging.getLogger("ray-ha")

#: How often a leader waiting for the previous GCS says so (s).
WAIT_LOG_EVERY = 60.0


def raise_fence(fence: Optional[Fence], held: Tenure) -> bool:
    """Lock older epochs out of Ray's storage; False on a Redis error, to try again next tick (lease kept)."""
    try:
        removed = fence.lock_out(held.epoch) if fence else []
    except OUTAGES as exc:
        log.warning("leader epoch %d: could not fence older epochs yet: %s", held.epoch, exc)
        return False
    held.fenced_epoch = held.epoch
    log.info("leader epoch %d: fenced; older GCS users removed: %s", held.epoch, ", ".join(removed) or "none")
    return True


def say_waiting(held: Tenure, now: float) -> None:
    """Say once a minute that we hold the lease but wait for the old GCS, and for how long at most."""
    if now >= held.next_wait_log:
        held.next_wait_log = now + WAIT_LOG_EVERY
        log.warning("leader epoch %d: previous GCS %s still accepts connections; not starting a second head "
                    "beside it (waiting at most %.0fs more)", held.epoch, held.old_gcs, held.wait_until - now)
