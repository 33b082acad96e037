"""What a candidate observes of the cluster, each change logged: who leads while it stands by, and an
operator's pause (`ray-ha pause`) as its last acquisition try or renewal read it. A pause that cannot
be read counts as none: the campaign then acts as it would unpaused, which is never less safe."""

from __future__ import annotations

import logging
from typing import Callable

from raylaunch.head.steps import Watch
from raylaunch.outage import OUTAGES
from raylaunch.store.records import Attempt, describe

log = logging.getLogger("ray-ha")

#: How often a standby says who leads when nothing changes (s).
QUIET_LOG_EVERY = 60.0


def note_leader(watch: Watch, attempt: Attempt, now: float) -> bool:
    """Take who leads from a lost attempt into `watch`; True if that changed. Logs each change, and
    otherwise a quiet line at most once a minute."""
    watch.epoch = attempt.epoch
    if attempt.holder is None:
        watch.leader = ""
        if attempt.yielding_to:
            log.info("the lease is free; yielding it to %s (a higher priority) for at most %.1fs more",
                     attempt.yielding_to, attempt.ttl_ms / 1000)
        return False
    seen = (attempt.holder.token, attempt.epoch)
    changed = seen != watch.logged
    if changed:
        watch.logged, watch.leader = seen, attempt.holder.node
    if changed or now >= watch.next_quiet_log:
        watch.next_quiet_log = now + QUIET_LOG_EVERY
        log.info("standing by; leader is %s, epoch %d", describe(attempt.holder), attempt.epoch)
    return changed


class PauseWatch:
    """The pause as last seen; `read` asks Redis (the lease's `paused`)."""

    def __init__(self, read: Callable[[], bool]) -> None:
        self.read = read
        self.paused = False

    def note(self, paused: bool) -> None:
        """Take what a Redis reply said, logging a change."""
        if paused != self.paused:
            log.warning("%s", "paused by an operator: no automatic takeover until `ray-ha resume` or the pause's "
                        "end" if paused else "pause ended: automatic takeover is on again")
        self.paused = paused

    def refresh(self) -> bool:
        """Read the pause now; Redis trouble counts as no pause. Returns it."""
        try:
            self.note(self.read())
        except OUTAGES as exc:
            log.warning("could not read whether the cluster is paused: %s", exc)
            self.note(False)
        return self.paused
