"""A real cluster-mode Redis on loopback for tests: N shards, each a master with R replicas.

Every node is a `redis-server --cluster-enabled yes` on a free port (its cluster bus on port + 10000,
also free), met with CLUSTER MEET, given its slots with CLUSTER ADDSLOTS (Redis 6.2 has no
ADDSLOTSRANGE) and its master with CLUSTER REPLICATE. One shard owns all 16384 slots, as MemoryDB and
ElastiCache in cluster mode give.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Optional

import redis

from testkit.localredis import LocalRedis

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_port() -> int:
    """A port that is free, and whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """`shards` masters sharing the slots evenly, each with `replicas` replicas; all on 127.0.0.1."""

    def __init__(self, workdir: Path, shards: int = 1, replicas: int = 0, binary: Optional[str] = None,
                 env: Optional[dict[str, str]] = None, node_timeout_ms: int = 2000) -> None:
        self.shards, self.replicas = shards, replicas
        self.nodes: list[LocalRedis] = []
        for i in range(shards * (1 + replicas)):
            path = Path(workdir) / f"node-{i}"
            path.mkdir(parents=True, exist_ok=True)
            node = LocalRedis(path, binary=binary, env=env, extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", str(path / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms)])
            node.port = cluster_port()
            self.nodes.append(node)

    @property
    def masters(self) -> list[LocalRedis]:
        return self.nodes[:self.shards]

    @property
    def address(self) -> str:
        """RAY_REDIS_ADDRESS: one node, as a user would give the cluster's endpoint."""
        return self.nodes[0].address

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        try:
            for node in self.nodes:
                node.start()
            self._form(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _form(self, timeout: float) -> None:
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        per = SLOTS // self.shards
        for i, master in enumerate(self.masters):
            last = SLOTS if i == self.shards - 1 else (i + 1) * per
            slots = list(range(i * per, last))
            for start in range(0, len(slots), 4096):
                master.client().execute_command("CLUSTER", "ADDSLOTS", *slots[start:start + 4096])
        self._wait(lambda: all(self._info(n).get("cluster_known_nodes") == str(len(self.nodes))
                               for n in self.nodes), timeout, "every node to know every other")
        for i, master in enumerate(self.masters):
            master_id = master.client().execute_command("CLUSTER", "MYID")
            for r in range(self.replicas):
                replica = self.nodes[self.shards + i * self.replicas + r]
                self._wait(lambda: self._replicate(replica, master_id), timeout, "a replica to take its master")
        self._wait(lambda: all(self._info(n).get("cluster_state") == "ok" for n in self.nodes), timeout,
                   "cluster_state:ok on every node")
        self._wait(self.replicas_in_sync, timeout, "every replica in sync")
        if self.replicas:
            self._advance_replication()
            self._wait(self._replicas_listed, timeout, "every replica listed in CLUSTER SLOTS")

    def _advance_replication(self) -> None:
        """One write per shard: Redis 7 hides a replica whose replication offset is 0 from CLUSTER SLOTS,
        so a client would never learn of it."""
        from redis.crc import key_slot

        per = SLOTS // self.shards
        for i, master in enumerate(self.masters):
            key = next(f"rig:{n}" for n in range(100000) if key_slot(f"rig:{n}".encode()) // per == i
                       or (i == self.shards - 1 and key_slot(f"rig:{n}".encode()) >= i * per))
            master.client().set(key, "1")
            master.client().delete(key)

    def _replicas_listed(self) -> bool:
        try:
            rows = self.nodes[0].client().execute_command("CLUSTER", "SLOTS")
            listed = {int(node[1]) for row in rows for node in row[2:]}
        except redis.RedisError:
            return False
        return all(node.port in listed for node in self.nodes)

    @staticmethod
    def _replicate(replica: LocalRedis, master_id: str) -> bool:
        """CLUSTER REPLICATE, which fails while the replica still shakes hands with the master."""
        try:
            replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
            return True
        except redis.ResponseError as exc:
            if "Unknown node" in str(exc):
                return False
            raise

    def replicas_in_sync(self) -> bool:
        try:
            return all(node.client().info("replication").get("master_link_status") == "up"
                       for node in self.nodes[self.shards:])
        except redis.RedisError:
            return False

    @staticmethod
    def _info(node: LocalRedis) -> dict[str, str]:
        try:
            text = node.client().execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return {}
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise RuntimeError(f"cluster: timed out waiting for {what}")

    def owner_of(self, key: str) -> LocalRedis:
        """The node that serves `key`'s slot now (asked of the first node that answers)."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for node in self.nodes:
            try:
                for start, end, master, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
        raise RuntimeError(f"no node serves the slot of {key}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
