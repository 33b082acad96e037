"""The chaos harness: K launchers (fake `ray`, real Redis) under random faults, then the checker's verdict.

Each launcher reaches Redis through its own proxy, so a partition can cut one machine off. Launchers
that exit are restarted after a moment, as systemd's Restart=always would. Faults run one at a time:
inject, lift, wait for a leader (bounded), pause, next.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil
import redis

from checker import Fault, Report, check
from proxy import ProxyHub
from tenures import TenureRecorder, now
from testkit.procs import TAG_VAR, kill, tagged_processes

ROOT = Path(__file__).resolve().parents[2]
FAKE_RAY_DIR = ROOT / "tests" / "fakeray"
LEASE, RENEW_DEADLINE, RETRY, REDIS_TIMEOUT = 3.0, 2.0, 0.5, 0.5
TIMING = [f"--ha-lease-duration={LEASE}", f"--ha-renew-deadline={RENEW_DEADLINE}", f"--ha-retry-period={RETRY}",
          f"--ha-redis-timeout={REDIS_TIMEOUT}", "--ha-stop-grace=2"]
#: A leader must be back within LEASE + BOUND of a fault's lift: a retry period, a launcher restart
#: (Python start-up, ~0.3 s) and the fake head's start, with room for a loaded 2-core machine.
BOUND = 2.5
RESTART_DELAY = 0.5
KINDS = ("kill-launcher", "kill-tree", "freeze-launcher", "redis-restart", "redis-stall", "partition-drop",
         "partition-hang", "pause-kill")
#: The launchers' --ha-priority, by slot: the first is preferred, the last never leads (0). With one fault
#: at a time a candidate that may lead is always left.
PRIORITIES = (2, 1, 0)


@dataclass
class Slot:
    """One machine's launcher: its name, proxy and the process running now (restarted when it exits)."""

    name: str
    proxy: object
    proc: Optional[subprocess.Popen] = None
    exited_at: Optional[float] = None
    starts: int = 0
    priority: int = 1


class ChaosRun:
    """One run of `launchers` launchers for `seconds` of faults in `workdir`; `run()` returns the Report."""

    def __init__(self, workdir: Path, launchers: int = 3, seconds: float = 60.0, seed: Optional[int] = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        from testkit.localredis import LocalRedis

        self.workdir, self.seconds, self.log = Path(workdir), seconds, log
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.tag = uuid.uuid4().hex
        self.redis = LocalRedis(self.workdir, persist=True)
        self.hub: Optional[ProxyHub] = None
        self.recorder: Optional[TenureRecorder] = None
        self.slots = [Slot(f"n{i + 1}", None, priority=PRIORITIES[i] if i < len(PRIORITIES) else 1)
                      for i in range(launchers)]
        self.faults: list[Fault] = []

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> Report:
        try:
            self._set_up()
            self._pump_until(lambda: self.recorder.active() is not None, 20)
            end = now() + self.seconds
            while now() < end:
                self._one_fault()
            until = now()
        finally:
            leaked = self._tear_down()
        never = frozenset(s.name for s in self.slots if s.priority == 0)
        report = check(self.recorder.tenures(), self.faults, LEASE, BOUND, until, never_lead=never)
        report.leaked = leaked
        return report

    def _set_up(self) -> None:
        self._open_network()
        self.recorder = TenureRecorder(str(self.workdir / "tenures.sock"))
        for slot in self.slots:
            self._start(slot)

    kinds = KINDS

    def _one_fault(self) -> None:
        kind = self.rng.choice(self.kinds)
        target = self._target()
        injected = now()
        getattr(self, "_" + kind.replace("-", "_"))(target)
        lifted = now()
        self.faults.append(Fault(kind, target.name, injected, lifted))
        self.log(f"{injected:12.3f} {kind:16} {target.name} lifted after {lifted - injected:.2f}s")
        self._pump_until(lambda: self.recorder.active() is not None, LEASE + BOUND + 5)
        self._pump(self.rng.uniform(0.5, 2.0))

    def _target(self) -> Slot:
        """Mostly the leader (where faults matter), sometimes any launcher."""
        active = self.recorder.active()
        leader = next((s for s in self.slots if active and s.name == active.node), None)
        return leader if leader and self.rng.random() < 0.8 else self.rng.choice(self.slots)

    # -- faults -----------------------------------------------------------------------------------

    def _kill_launcher(self, slot: Slot) -> None:
        if slot.proc and slot.proc.poll() is None:
            os.kill(slot.proc.pid, signal.SIGKILL)

    def _kill_tree(self, slot: Slot) -> None:
        for proc in self._descendants(slot):
            if not _is_watchdog(proc):
                kill(proc)

    def _freeze_launcher(self, slot: Slot) -> None:
        if not slot.proc or slot.proc.poll() is not None:
            return
        slot.proc.send_signal(signal.SIGSTOP)
        try:
            self._pump(self.rng.uniform(0.5, 2 * LEASE))
        finally:
            slot.proc.send_signal(signal.SIGCONT)

    def _redis_restart(self, slot: Slot) -> None:
        self.redis.stop()  # kill -9; the fsync-always AOF keeps every acknowledged write
        self._pump(self.rng.uniform(0.2, 1.5))
        self.redis.start()

    def _redis_stall(self, slot: Slot) -> None:
        seconds = self.rng.uniform(0.3, 2 * LEASE)
        client = redis.Redis(port=self.redis.port, socket_timeout=seconds + 10)
        if self.rng.random() < 0.5:
            threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", f"{seconds:.3f}"),
                             daemon=True).start()
        else:
            client.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        self._pump(seconds)

    def _pause_kill(self, slot: Slot) -> None:
        """An operator's pause, and kill -9 of the launcher meanwhile (its restart stands by, paused):
        nobody leads until the resume, the fault's lift."""
        from raylaunch.store.keys import Keys
        from raylaunch.store.records import Pause

        client, key = redis.Redis(port=self.redis.port, socket_timeout=5), Keys("ray-ha:default:leader").pause
        client.set(key, Pause(by="chaos", since=time.time()).encode())
        try:
            self._kill_launcher(slot)
            self._pump(self.rng.uniform(1.0, 2 * LEASE))
        finally:
            client.delete(key)
            client.close()

    def _partition_drop(self, slot: Slot) -> None:
        self._partition(slot, "drop", False)

    def _partition_hang(self, slot: Slot) -> None:
        self._partition(slot, "hang", self.rng.random() < 0.5)

    def _partition(self, slot: Slot, mode: str, deliver_late: bool) -> None:
        slot.proxy.set_mode(mode)
        try:
            self._pump(self.rng.uniform(0.3, 2 * LEASE))
        finally:
            slot.proxy.set_mode("pass", deliver_late=deliver_late)

    # -- launchers --------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FAKE_RAY_"))}
        env.update({"PATH": f"{FAKE_RAY_DIR}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(ROOT),
                    TAG_VAR: self.tag, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": self._redis_address(slot),
                    "RAY_HA_RUN_DIR": str(self.workdir / "run"), "RAY_HA_TEST_NODE": slot.name,
                    "FAKE_RAY_TENURE_SOCKET": self.recorder.path})
        argv = [sys.executable, "-m", "raylaunch", "start", "--head", "--port=0", "--block",
                f"--temp-dir={self.workdir / ('ray-' + slot.name)}", f"--ha-node-name={slot.name}", *TIMING,
                f"--ha-priority={slot.priority}"]
        with open(self.workdir / f"{slot.name}.log", "ab") as out:
            slot.proc = self._spawn(slot, argv, env, out)
        slot.exited_at, slot.starts = None, slot.starts + 1

    # -- where the launchers run: this machine, each through its own proxy (HostsChaosRun: hosts) --

    def _open_network(self) -> None:
        self.redis.start()
        self.hub = ProxyHub()
        for slot in self.slots:
            slot.proxy = self.hub.proxy(("127.0.0.1", self.redis.port))

    def _redis_address(self, slot: Slot) -> str:
        return slot.proxy.address

    def _spawn(self, slot: Slot, argv: list[str], env: dict[str, str], out) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _close_network(self) -> None:
        if self.hub:
            self.hub.close()
        self.redis.stop()

    def _pump(self, seconds: float) -> None:
        """Wait `seconds`, restarting launchers that exited (RESTART_DELAY after they did)."""
        self._pump_until(lambda: False, seconds)

    def _pump_until(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = now() + seconds
        while now() < deadline:
            if done():
                return True
            for slot in self.slots:
                if slot.proc and slot.proc.poll() is not None:
                    slot.exited_at = slot.exited_at or now()
                    if now() - slot.exited_at >= RESTART_DELAY:
                        self._start(slot)
            time.sleep(0.05)
        return done()

    def _descendants(self, slot: Slot) -> list[psutil.Process]:
        try:
            return psutil.Process(slot.proc.pid).children(recursive=True) if slot.proc else []
        except psutil.Error:
            return []

    # -- the end ----------------------------------------------------------------------------------

    def _tear_down(self) -> int:
        """Stop everything the way an operator would; returns how many processes had to be killed after."""
        for slot in self.slots:
            if slot.proc and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGCONT)
                slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.proc:
                try:
                    slot.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.log(f"{slot.name} did not stop on SIGTERM within 20 s")
                    slot.proc.kill()
                    slot.proc.wait()
        time.sleep(0.5)
        leftovers = tagged_processes(self.tag)
        for proc in leftovers:
            self.log(f"left running: {proc.pid} {_name(proc)}")
            kill(proc)
        self._close_network()
        if self.recorder:
            time.sleep(0.3)  # let the recorder see the EOFs of what was just killed
            self.recorder.close()
        return len(leftovers)


def _is_watchdog(proc: psutil.Process) -> bool:
    try:
        return any(arg.endswith("watchdog.py") for arg in proc.cmdline())
    except psutil.Error:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"
