"""The key layout: every Redis name of one cluster's lease, derived from its name in one place."""

from __future__ import annotations

from dataclasses import dataclass

from raylaunch.config import check_key_name


@dataclass(frozen=True)
class Keys:
    """Every Redis name of one cluster's lease, from its name (`--ha-key`, braces not allowed).

    Each key carries the hash tag `{name}`, so all fall in one hash slot: a cluster-mode Redis runs
    ray-ha's multi-key scripts on the one shard that owns it. The ACL fence's users are not keys and
    carry no tag.
    """

    name: str

    def __post_init__(self) -> None:
        check_key_name(self.name)  # a ConfigError (a ValueError) otherwise

    @property
    def lease(self) -> str:
        return "{" + self.name + "}"

    @property
    def epoch(self) -> str:
        return f"{self.lease}:epoch"

    @property
    def record(self) -> str:
        return f"{self.lease}:record"

    @property
    def history(self) -> str:
        return f"{self.lease}:history"

    @property
    def switchover(self) -> str:
        return f"{self.lease}:switchover"

    @property
    def scheduled(self) -> str:
        """A switchover planned for later (`ray-ha switchover --at`); the leader makes it a request when due."""
        return f"{self.lease}:scheduled"

    @property
    def pause(self) -> str:
        """Maintenance mode (`ray-ha pause`): while it exists no candidate takes the lease by itself."""
        return f"{self.lease}:pause"

    @property
    def priorities(self) -> str:
        """Each candidate's priority and when its entry expires (Redis ms), refreshed by its tries."""
        return f"{self.lease}:priorities"

    @property
    def vacant(self) -> str:
        """When a candidate yielding to a better one first found the lease free (Redis ms)."""
        return f"{self.lease}:vacant"

    @property
    def grant(self) -> str:
        return f"{self.lease}:grant"

    @property
    def channel(self) -> str:
        return f"{self.lease}:released"

    @property
    def probe(self) -> str:
        """A name ray-ha never sets: the start check's harmless write."""
        return f"{self.lease}:probe"

    @property
    def provider(self) -> str:
        """The local node provider's worker list, kept by the leader for the next (`ray up`)."""
        return f"{self.lease}:provider"

    def candidate(self, node: str) -> str:
        return f"{self.lease}:candidate:{node}"

    def follower(self, node: str) -> str:
        return f"{self.lease}:follower:{node}"

    @property
    def gcs_user_prefix(self) -> str:
        """The ACL fence's per-epoch GCS users are this prefix and the epoch."""
        return f"{self.name}:gcs:e"

    @property
    def legacy_lease(self) -> str:
        """Where ray-ha before 0.2 kept this lease (no hash tag): checked at start, never written."""
        return self.name

    def types(self) -> dict[str, str]:
        """The keys ray-ha keeps, each with the Redis type it must have if it exists."""
        return {self.lease: "string", self.epoch: "string", self.record: "string", self.history: "list",
                self.switchover: "string", self.grant: "hash", self.provider: "string", self.pause: "string",
                self.scheduled: "string", self.priorities: "hash", self.vacant: "string"}
