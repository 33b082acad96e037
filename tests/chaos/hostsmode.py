"""The chaos harness's hosts mode: each launcher on a rig host of its own, Redis on another, and real
faults in place of the proxy: a host's links down (silent drop), its storage link down (cut from Redis
only), kill -9 of every process on a host.

The fake `ray`'s own look for processes of another epoch sees only its host here (each host has its own
PIDs); the tenure socket, which every head's tree on every host holds, is what judges overlaps.
"""

from __future__ import annotations

import subprocess
import threading
from typing import Optional

from harness import LEASE, ChaosRun, Slot
from testkit.hostray import HostRedis
from testkit.hosts import Host, Rig

KINDS = ("kill-launcher", "kill-tree", "kill-host", "freeze-launcher", "redis-restart", "redis-stall", "cut-host",
         "cut-storage")


class HostsChaosRun(ChaosRun):
    """ChaosRun with every launcher on its own host (n1..nK at 198.18.x.11...), Redis on host `redis`."""

    kinds = KINDS

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.rig: Optional[Rig] = None
        self.hosts: dict[str, Host] = {}

    def _open_network(self) -> None:
        self.rig = Rig(self.workdir)
        redis_host = self.rig.add("redis", 2, storage=True, hosts=False)
        for number, slot in enumerate(self.slots, start=11):
            self.hosts[slot.name] = self.rig.add(slot.name, number, storage=True)
        self.redis = HostRedis(redis_host, self.workdir / "redis").start()

    def _redis_address(self, slot: Slot) -> str:
        return self.redis.address

    def _spawn(self, slot: Slot, argv: list[str], env: dict[str, str], out):
        env = {k: v for k, v in env.items() if k != "RAY_HA_RUN_DIR"}  # each host's own default run dir
        return self.hosts[slot.name].popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)

    def _close_network(self) -> None:
        if self.rig:
            self.rig.close()

    # -- faults -----------------------------------------------------------------------------------

    def _redis_restart(self, slot: Slot) -> None:
        self.redis.kill()  # kill -9; the fsync-always AOF keeps every acknowledged write
        self._pump(self.rng.uniform(0.2, 1.5))
        self.redis.start()

    def _redis_stall(self, slot: Slot) -> None:
        seconds = self.rng.uniform(0.3, 2 * LEASE)
        if self.rng.random() < 0.5:
            threading.Thread(target=self.redis.command, args=("DEBUG", "SLEEP", f"{seconds:.3f}"),
                             daemon=True).start()
        else:
            self.redis.command("CLIENT", "PAUSE", str(int(seconds * 1000)), "ALL")
        self._pump(seconds)

    def _kill_host(self, slot: Slot) -> None:
        self.hosts[slot.name].kill_all()

    def _cut_host(self, slot: Slot) -> None:
        self._cut(slot, storage_only=False)

    def _cut_storage(self, slot: Slot) -> None:
        self._cut(slot, storage_only=True)

    def _cut(self, slot: Slot, storage_only: bool) -> None:
        host = self.hosts[slot.name]
        host.cut_storage() if storage_only else host.cut()
        try:
            self._pump(self.rng.uniform(0.3, 2 * LEASE))
        finally:
            host.heal()
