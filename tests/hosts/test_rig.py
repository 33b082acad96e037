"""The rig itself: hosts are separate machines, a cut drops packets silently, closing leaves nothing."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from conftest import wait_for
from testkit.hosts import HOSTS_NET

pytestmark = pytest.mark.hosts

ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7000))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    while (data := c.recv(100)):
        c.sendall(data)
"""

#: Connects to ADDRESS:7000, then for each line on stdin ("send|new SECONDS"): send one byte and report what
#: came back, or open a new connection; within SECONDS.
CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=2)
for line in sys.stdin:
    t = time.monotonic()
    verb, wait = line.split()
    s.settimeout(float(wait))
    try:
        if verb == "new":
            socket.create_connection((sys.argv[1], 7000), timeout=2); what = "connected"
        else:
            s.sendall(b"x"); what = "echo" if s.recv(1) == b"x" else "eof"
    except socket.timeout:  # TimeoutError from Python 3.10 on; its own class before
        what = "timeout"
    except OSError as exc:
        what = type(exc).__name__
    print(what, round(time.monotonic() - t, 1), flush=True)
"""


def python_on(host, code, *args):
    return host.run([sys.executable, "-c", code, *args]).stdout


def serve_echo(host, address):
    server = host.popen([sys.executable, "-c", ECHO, address], stdout=subprocess.PIPE)
    assert server.proc.stdout.readline() == b"listening\n"
    return server


def test_hosts_are_separate_machines_on_a_private_network(rig, tmp_path):
    a, b = rig.add("alpha", 11), rig.add("beta", 12)
    assert a.run(["hostname"]).stdout.strip() == "alpha" and b.run(["hostname"]).stdout.strip() == "beta"
    python_on(a, "open('/tmp/mine', 'w').write('a')")
    assert python_on(b, "import os; print(os.path.exists('/tmp/mine'))").strip() == "False"
    assert not os.path.exists("/tmp/mine"), "each host has its own /tmp"
    assert python_on(a, "import os, sys; print(os.path.isdir(sys.argv[1]))", str(tmp_path)).strip() == "True", \
        "the test's own directory is there at the same path"
    assert python_on(a, "import os; print(os.getpid() < 100)").strip() == "True", "its own PID namespace"
    routes = a.run(["ip", "-4", "route"]).stdout
    assert routes.strip() == f"{HOSTS_NET}.0/24 dev eth0 proto kernel scope link src {a.ip}", routes
    outward = a.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.2', 22), timeout=2)"],
                    check=False)
    assert "Network is unreachable" in outward.stderr, "no route out of the rig"
    ours = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "198.18." not in ours, "the rig's addresses are nowhere in the namespace the tests run in"


def test_a_cut_drops_packets_silently_and_a_heal_resumes_the_same_connection(rig):
    host, redis_host = rig.add("h1", 11, storage=True), rig.add("r1", 2, storage=True, hosts=False)
    serve_echo(redis_host, redis_host.storage_ip)
    client = host.popen([sys.executable, "-u", "-c", CLIENT, redis_host.storage_ip], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)

    def ask(line):
        client.proc.stdin.write(f"{line}\n".encode())
        client.proc.stdin.flush()
        return client.proc.stdout.readline().decode().split()

    assert ask("send 2")[0] == "echo"
    host.cut()
    assert ask("send 2") == ["timeout", "2.0"], "no reset, no error: the packets vanish"
    assert ask("new 2") == ["timeout", "2.0"], "a new connection hangs too (no 'no route to host')"
    host.heal()
    assert ask("send 30")[0] == "echo", "the same TCP connection carries on after the heal (TCP's backoff)"


def test_a_storage_cut_parts_a_host_from_redis_only(rig):
    head, worker = rig.add("h1", 11, storage=True), rig.add("w1", 21, storage=True)
    redis_host = rig.add("r1", 2, storage=True, hosts=False)
    serve_echo(redis_host, redis_host.storage_ip)
    serve_echo(worker, worker.ip)
    reach = "import socket, sys; socket.create_connection((sys.argv[1], 7000), timeout=1); print('ok')"
    head.cut_storage()
    assert head.run([sys.executable, "-c", reach, redis_host.storage_ip], check=False).returncode != 0
    assert python_on(head, reach, worker.ip).strip() == "ok", "the head still reaches its workers"
    assert python_on(worker, reach, redis_host.storage_ip).strip() == "ok", "the others still reach Redis"
    head.heal()
    assert python_on(head, reach, redis_host.storage_ip).strip() == "ok"


def test_kill_all_is_kill_9_of_everything_on_one_host(rig):
    a, b = rig.add("h1", 11), rig.add("h2", 12)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    for host in (a, b):
        host.popen(["sh", "-c", f"{sys.executable} -c '{stubborn}' & {sys.executable} -c '{stubborn}'"])
    deadline = time.monotonic() + 10
    while len(a.processes()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.host_of(a.processes()[0].pid) == "h1"
    assert a.kill_all() >= 3
    assert a.processes() == []
    assert len(b.processes()) >= 3, "the other host is untouched"


def test_the_process_watch_dates_lives_on_the_wall_clock_within_a_tick(rig):
    """Overlaps are judged from these dates: a start dated early (psutil's create_time can be up to a
    second early) would report two heads where there were none."""
    from testkit.hostray import ProcessWatch

    host = rig.add("h1", 11)
    watch = ProcessWatch([host], name="sleep")
    try:
        before = time.time()
        proc = host.popen(["sleep", "600"])
        life = wait_for(lambda: watch.on("h1"), 10, what="the watch to see sleep")[0]
        assert before - 0.011 <= life.started <= time.time(), (before, life.started)
        killed = time.time()
        host.kill_all()
        proc.wait(10)
        wait_for(lambda: life.gone, 10, what="the watch to see sleep gone")
        assert killed <= life.gone <= killed + 2.0, (killed, life.gone)
    finally:
        watch.close()


def test_closing_the_rig_leaves_no_process_and_no_namespace(tmp_path):
    from testkit.hosts import Rig

    rig = Rig(tmp_path)
    host = rig.add("h1", 11)
    orphan = "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(600)\ntime.sleep(600)"
    host.popen([sys.executable, "-c", orphan])
    deadline = time.monotonic() + 10
    while len(host.processes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    everything = [*host.processes(), psutil.Process(host.init_pid), psutil.Process(rig.world_pid)]
    assert len(everything) >= 4
    netns = os.readlink(f"/proc/{host.init_pid}/ns/net")
    rig.close()
    alive = [p for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    users = [p for p in psutil.process_iter() if _netns(p.pid) == netns]
    assert users == [], "nothing holds the host's network namespace: the kernel has removed it"


def _netns(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None

