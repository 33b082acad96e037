"""Storage fencing without patching Ray: a Redis ACL user per epoch for the GCS (`--ha-fence acl`).

The leader of epoch E creates the user `<lease key name>:gcs:e<E>` with a random password and gives it to
its GCS. Before the head starts, it switches off every older epoch's user, kills their connections
and deletes them, so a zombie GCS of an older epoch (its supervisor frozen or gone) loses Redis and
cannot log in again: Ray's GCS exits when it cannot reach Redis. The launcher's own connection needs
a Redis user allowed ACL and CLIENT.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from raylaunch.store.connect import on_every_node
from raylaunch.store.keyspace import Keyspace

# What a GCS may do: everything, on every key and channel. ACL key patterns cannot exclude ray-ha's
# own keys, and Ray's needs change between versions.
GCS_RULES = ("on", "~*", "&*", "+@all")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


class AclFence:
    """Issues and revokes the per-epoch GCS users of one lease, on every node of a cluster-mode Redis
    (ACL users are each node's own, and the GCS follows its slots to whichever node owns them)."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace, self.client = keyspace, keyspace.client
        self.prefix = keyspace.keys.gcs_user_prefix
        self._issued: dict[int, Credentials] = {}

    def check(self) -> None:
        """Fail at start, not at the first election, if our Redis user may not manage ACL users."""
        self.keyspace.guard(lambda: on_every_node(self.client, "ACL", "USERS"))

    def lock_out(self, epoch: int) -> list[str]:
        """Create this epoch's user, then remove every older epoch's; returns the users removed.

        Idempotent: a retry after a Redis error picks up where it stopped.
        """
        return self.keyspace.guard(lambda: self._do_lock_out(epoch))

    def credentials(self, epoch: int) -> Credentials:
        """The user and password issued for `epoch` (lock_out first)."""
        return self._issued[epoch]

    def _do_lock_out(self, epoch: int) -> list[str]:
        mine = self._issued.setdefault(epoch, Credentials(f"{self.prefix}{epoch}", secrets.token_urlsafe(24)))
        on_every_node(self.client, "ACL", "SETUSER", mine.username, "reset", *GCS_RULES, f">{mine.password}")
        users = {str(user) for reply in on_every_node(self.client, "ACL", "USERS") for user in reply}
        removed = sorted(user for user in users if self._older(user, epoch))
        for user in removed:
            on_every_node(self.client, "ACL", "SETUSER", user, "off")
            on_every_node(self.client, "CLIENT", "KILL", "USER", user)
            on_every_node(self.client, "ACL", "DELUSER", user)
        return removed

    def _older(self, user: str, epoch: int) -> bool:
        number = user[len(self.prefix):] if user.startswith(self.prefix) else ""
        return number.isdigit() and int(number) < epoch
