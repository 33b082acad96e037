"""Hosts on one machine: each a set of Linux namespaces, on private networks the rig builds itself.

The rig is one user namespace the caller owns (no root needed), holding everything else:
- a "world" whose network namespace carries two bridges and no address at all (no route anywhere):
  the hosts' network (`HOSTS_NET`) and a storage network (`STORAGE_NET`) for Redis, so a host can be cut
  from Redis while it still reaches the other hosts;
- hosts, each its own network, UTS (host name), PID and mount namespace with a private /tmp and /run
  (what Ray and ray-ha keep per machine stays per host); paths the tests need that live under /tmp (the
  venv, the checkout, the test's directory) are bound back in at the same place.
Both subnets lie in 198.18.0.0/15, the block RFC 2544 sets aside for benchmarks: used nowhere else.
The world is the PID 1 of its own PID namespace and dies with the process that made the rig, so
closing the rig (or the test process dying) kills every process on every host.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import psutil

from testkit.procs import kill

HOSTS_NET = "198.18.0"
STORAGE_NET = "198.18.1"
RIG_NETWORK = "198.18.0.0/15"

#: PID 1 of the world and of each host: reaps orphans (as init does) until it is killed.
_INIT = r"""
import ctypes, os, signal, socket, sys
name, tmp, *keep = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC = 4096, 16384
def bind(src, dst):
    if libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None) != 0:
        sys.exit(f"rig: cannot bind {src} on {dst}: {os.strerror(ctypes.get_errno())}")
if name:
    socket.sethostname(name)
if tmp:
    for path in keep:
        inner = tmp + path[len("/tmp"):]
        os.makedirs(inner, exist_ok=True)
        bind(path, inner)
    bind(tmp, "/tmp")
    run = os.path.join(os.path.dirname(tmp), "run")
    os.makedirs(run, exist_ok=True)
    bind(run, "/run")
def reap(*_):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
print("ready", flush=True)
while True:
    signal.pause()
"""

PR_SET_PDEATHSIG = 1


class RigUnavailable(RuntimeError):
    """This machine (or user) cannot make the namespaces the rig needs; the message says why."""


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _tmp_paths(paths: Sequence[Path]) -> list[str]:
    """The paths under /tmp among `paths`, outermost only (a bind carries what lies below it)."""
    under = sorted({str(Path(p).resolve()) for p in paths if str(Path(p).resolve()).startswith("/tmp/")})
    return [p for p in under if not any(p.startswith(q + "/") for q in under if q != p)]


def _start_init(argv: list[str], what: str) -> tuple[subprocess.Popen, int]:
    """Start an `unshare ... python _INIT` and wait for its PID 1 to say ready; (the unshare, init's pid)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    line = proc.stdout.readline().decode().strip()
    if line != "ready":
        proc.kill()
        err = proc.stderr.read().decode().strip().splitlines()
        raise RigUnavailable(f"cannot make {what}: {err[-1] if err else 'no reason given'} "
                             "(the rig needs unprivileged user namespaces, or root)")
    inits = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.cmdline()[1:3] == ["-c", _INIT]]
    return proc, inits[0].pid


@dataclass
class Host:
    """One machine of the rig: its name, its address on each network, and its PID 1."""

    rig: "Rig"
    name: str
    ip: str
    storage_ip: Optional[str]
    init_pid: int
    unshare: subprocess.Popen = field(repr=False)

    def enter(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["nsenter", "-t", str(self.init_pid), "-U", "-n", "-u", "-m", "-p", "--preserve-credentials"]

    def popen(self, argv: Sequence[str], **kw) -> "HostProcess":
        """Start `argv` on this host (Popen's keywords apply); the handle's pid is the program's own."""
        proc = subprocess.Popen([*self.enter(), *argv], **kw)
        return HostProcess(self, proc)

    def run(self, argv: Sequence[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run `argv` on this host to completion; its output as text."""
        result = subprocess.run([*self.enter(), *argv], capture_output=True, text=True, timeout=timeout, **kw)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def processes(self) -> list[psutil.Process]:
        """Every living process on this host but its PID 1 (zombies left out)."""
        return [p for p in self.rig.processes_in(self.pid_namespace()) if p.pid != self.init_pid]

    def pid_namespace(self) -> str:
        return os.readlink(f"/proc/{self.init_pid}/ns/pid")

    def kill_all(self) -> int:
        """kill -9 of every process on this host (its PID 1 stays, as a machine's kernel would); how many."""
        victims = self.processes()
        for proc in victims:
            kill(proc)
        psutil.wait_procs(victims, timeout=10)
        return len(victims)

    def cut(self) -> None:
        """Take this host's links down: its packets vanish, TCP hangs with no reset, on every network."""
        self.rig.links(self, "down", storage_only=False)

    def cut_storage(self) -> None:
        """Cut this host from the storage network only (Redis): it still reaches the other hosts."""
        self.rig.links(self, "down", storage_only=True)

    def heal(self) -> None:
        """Bring every link of this host back up."""
        self.rig.links(self, "up", storage_only=False)


@dataclass
class HostProcess:
    """A program started on a host: `proc` is the nsenter in front of it, `pid` the program itself."""

    host: Host
    proc: subprocess.Popen

    @functools.cached_property
    def pid(self) -> int:
        """The program's own pid (nsenter's one child), found once."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                children = psutil.Process(self.proc.pid).children()
            except psutil.Error:
                children = []
            if children:
                return children[0].pid
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.host.name}: the program exited {self.proc.returncode} at once")
            time.sleep(0.01)
        raise RuntimeError(f"{self.host.name}: the program did not start")

    def send_signal(self, sig: int) -> None:
        """As Popen's: to the program, not the nsenter in front. A SIGCONT wakes that nsenter too: it stops
        itself when its program stops (job control), and stopped it would never reap the program nor exit."""
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, RuntimeError):
            pass
        if sig == signal.SIGCONT and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.proc.wait(timeout)


class Rig:
    """The world and its hosts; `close()` kills every process on them and removes every namespace."""

    def __init__(self, workdir: Path, keep: Sequence[Path] = ()) -> None:
        self.workdir = Path(workdir)
        self.keep = _tmp_paths([*keep, self.workdir, Path(sys.prefix), Path(sys.base_prefix),
                                Path(__file__).resolve().parent.parent])
        self.hosts: dict[str, Host] = {}
        self._macs: dict[tuple[str, str], tuple[str, str]] = {}
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise RigUnavailable(f"cannot make hosts: `{tool}` is not on PATH (util-linux, iproute2)")
        self._world, self.world_pid = _start_init(
            ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
             "--mount-proc", sys.executable, "-c", _INIT, "", ""], "the rig's user namespace")
        try:
            self.ip("link", "add", "hosts", "type", "bridge")
            self.ip("link", "add", "storage", "type", "bridge")
            for bridge in ("hosts", "storage", "lo"):
                self.ip("link", "set", bridge, "up")
        except BaseException:
            self.close()
            raise

    def world(self) -> list[str]:
        return ["nsenter", "-t", str(self.world_pid), "-U", "-n", "-m", "--preserve-credentials"]

    def ip(self, *args: str) -> None:
        """Run `ip ARGS` in the world (where the bridges are)."""
        result = subprocess.run([*self.world(), "ip", *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RigUnavailable(f"cannot wire the rig: ip {' '.join(args)}: {result.stderr.strip()}")

    def add(self, name: str, number: int, storage: bool = False, hosts: bool = True) -> Host:
        """A new host `name` at HOSTS_NET.<number> (and STORAGE_NET.<number> with `storage`)."""
        tmp = self.workdir / "hosts" / name / "tmp"
        tmp.mkdir(parents=True)
        unshare, pid = _start_init(
            [*self.world(), "-p", "unshare", "--net", "--uts", "--pid", "--mount", "--fork", "--kill-child",
             "--mount-proc", sys.executable, "-c", _INIT, name, str(tmp), *self.keep], f"host {name}")
        host = Host(self, name, f"{HOSTS_NET}.{number}" if hosts else "",
                    f"{STORAGE_NET}.{number}" if storage else None, pid, unshare)
        self.hosts[name] = host
        host.run(["ip", "link", "set", "lo", "up"])
        for bridge, dev, addr in (("hosts", "eth0", host.ip), ("storage", "eth1", host.storage_ip)):
            if addr:
                self._wire(host, bridge, dev, addr)
        return host

    def _wire(self, host: Host, bridge: str, dev: str, addr: str) -> None:
        outer = f"{host.name}-{dev}"
        mac = "02:00:" + ":".join(f"{int(part):02x}" for part in addr.split("."))  # locally administered
        self.ip("link", "add", outer, "type", "veth", "peer", "name", dev, "address", mac, "netns",
                str(host.init_pid))
        self.ip("link", "set", outer, "master", bridge, "up")
        host.run(["ip", "addr", "add", f"{addr}/24", "dev", dev])
        host.run(["ip", "link", "set", dev, "up"])
        self._macs[(host.name, dev)] = (addr, mac)
        for (other_name, other_dev), (other_addr, other_mac) in self._macs.items():
            if other_dev == dev and other_name != host.name:  # permanent neighbours: no ARP, so a cut
                self.hosts[other_name].run(["ip", "neigh", "replace", addr, "lladdr", mac, "dev", dev,
                                            "nud", "permanent"])  # drops silently (no EHOSTUNREACH)
                host.run(["ip", "neigh", "replace", other_addr, "lladdr", other_mac, "dev", dev,
                          "nud", "permanent"])

    def links(self, host: Host, state: str, storage_only: bool) -> None:
        devs = ["eth1"] if storage_only else ["eth0", "eth1"]
        wired = {"eth0": bool(host.ip), "eth1": bool(host.storage_ip)}
        for dev in devs:
            if wired[dev]:
                self.ip("link", "set", f"{host.name}-{dev}", state)

    def processes_in(self, pid_ns: str) -> list[psutil.Process]:
        """Living processes whose PID namespace is `pid_ns` (as /proc/PID/ns/pid reads)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/pid") == pid_ns and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def host_of(self, pid: int) -> Optional[str]:
        """The name of the host process `pid` runs on (None: not on any)."""
        try:
            ns = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            return None
        for host in self.hosts.values():
            if host.pid_namespace() == ns:
                return host.name
        return None

    def close(self) -> None:
        """Kill the world's PID 1: the kernel kills every process of every host, and the namespaces go."""
        everything = self.processes_in(os.readlink(f"/proc/{self.world_pid}/ns/pid")) \
            if psutil.pid_exists(self.world_pid) else []
        for host in self.hosts.values():
            everything += host.processes()
        self._world.kill()
        try:
            os.kill(self.world_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._world.wait(10)
        for host in self.hosts.values():
            host.unshare.wait(10)
        psutil.wait_procs([p for p in everything if p.is_running()], timeout=10)
