"""Mark the previous head node dead at takeover, so what lived there (detached actors, Serve's controller)
restarts at once instead of after Ray's health checks.

The lease proves the previous head is gone: its supervisor's watchdog killed its tree before the lease
could run out, and the new head starts only after that. So once our GCS serves, every head node it still
lists alive, other than ours, is stale: a small helper run by Ray's own Python tells the GCS so through
its UnregisterNode call (the one a raylet makes when it leaves). A Ray without that call keeps Ray's
health checks, and the log says so once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from typing import Callable, Optional

from raylaunch.head.steps import LEADING_ROLES, Snapshot
from raylaunch.proc.tree import kill_session

log = logging.getLogger("ray-ha")

LIMIT = 30.0  # s the helper tries (the GCS may still be loading); it is killed 10 s after that
JOBS_SAID = {"asked": "started now (the jobs the old head ran end FAILED, as their supervisors died with it)",
             "no dashboard agent answered": "no dashboard agent answered; it starts on the first job request"}

#: Run by Ray's Python as `-c MARK WON_MS LIMIT` when the lease is won: loads Ray's modules, then reads our
#: GCS's address from stdin (EOF: nothing to do). Marks dead every head node listed alive except ours (at
#: our IP and started since we won, by the same machine's clock) until none is left; prints one JSON
#: line: {"marked": [[node id, ip], ...]}, {"unsupported": why} or {"error": why}. After a takeover it then
#: asks this head's dashboard agent for a job's log, which makes Ray recover the jobs the old head ran now
#: rather than on the first job request (until then they show RUNNING): {"jobs": "asked"} or why not.
MARK = r"""
import importlib.util, json, os, sys, time, types
won_ms, limit = int(sys.argv[1]), float(sys.argv[2])
REASON = "ray-ha: the previous leader's head, gone before this leader won the lease"
def say(**what):
    print(json.dumps(what), flush=True)
def protos_only():
    # Ray's generated modules without running ray/__init__.py (all of Ray: half the helper's start, on the
    # takeover's path); Ray's own channel (TLS, tokens) needs all of Ray, so not when those are on
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true") or \
            os.environ.get("RAY_AUTH_MODE", "disabled").lower() != "disabled":
        return False
    try:
        root = importlib.util.find_spec("ray").submodule_search_locations[0]
        for name, path in (("ray", root), ("ray.core", os.path.join(root, "core"))):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__path__ = [path]
        import ray.core.generated.gcs_service_pb2_grpc  # noqa
        return True
    except Exception:
        for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
            del sys.modules[name]
        return False
try:
    import grpc
    light = protos_only()
    from ray.core.generated import common_pb2, gcs_pb2, gcs_service_pb2 as pb, gcs_service_pb2_grpc as rpc
    channel = grpc.insecure_channel
    if not light:
        try:
            from ray._private.grpc_utils import init_grpc_channel as channel
        except ImportError:
            pass
    pb.UnregisterNodeRequest  # a Ray without the call fails here, before the takeover needs it
except (ImportError, AttributeError) as exc:
    say(unsupported=f"{type(exc).__name__}: {exc}")
    sys.exit(0)
gcs = sys.stdin.readline().strip()
if not gcs:
    sys.exit(0)
our_ip = gcs.rsplit(":", 1)[0].strip("[]")
stub = rpc.NodeInfoGcsServiceStub(channel(gcs))
def request(node_id):
    try:
        death = common_pb2.NodeDeathInfo(reason=common_pb2.NodeDeathInfo.UNEXPECTED_TERMINATION,
                                         reason_message=REASON)
        return pb.UnregisterNodeRequest(node_id=node_id, node_death_info=death)
    except (AttributeError, ValueError):
        return pb.UnregisterNodeRequest(node_id=node_id)
def ours(node):
    return node.node_manager_address == our_ip and node.start_time_ms >= won_ms
marked, stale, end = {}, [], time.monotonic() + limit
while True:
    try:
        nodes = stub.GetAllNodeInfo(pb.GetAllNodeInfoRequest(), timeout=5).node_info_list
        stale = [n for n in nodes if n.state == gcs_pb2.GcsNodeInfo.ALIVE and n.is_head_node and not ours(n)]
        if not stale:
            say(marked=list(marked.values()))
            break
        for node in stale:
            stub.UnregisterNode(request(node.node_id), timeout=5)
            marked[node.node_id] = [node.node_id.hex(), node.node_manager_address]
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            say(unsupported=f"the GCS does not implement it ({exc.details()})")
            break
        if time.monotonic() > end:
            say(error=f"{exc.code().name}: {exc.details()}")
            break
    if time.monotonic() > end:
        say(error=f"still listed alive after {limit:g}s: {[n.node_id.hex() for n in stale]}")
        break
    time.sleep(0.2)
if marked:  # Ray makes this head's JobManager, which recovers the jobs the old head ran, on the first job
    import urllib.error, urllib.request  # request its dashboard agent gets: ask it for no job's log (a 404)
    host = f"[{our_ip}]" if ":" in our_ip else our_ip
    while time.monotonic() < end:
        try:
            nodes = stub.GetAllNodeInfo(pb.GetAllNodeInfoRequest(), timeout=5).node_info_list
            port = max([n.dashboard_agent_listen_port for n in nodes if n.is_head_node and ours(n)] or [0])
            if port:
                urllib.request.urlopen(f"http://{host}:{port}/api/job_agent/jobs/ray-ha-takeover/logs", timeout=5)
                say(jobs="asked")
                break
        except urllib.error.HTTPError:
            say(jobs="asked")
            break
        except (OSError, grpc.RpcError):
            pass
        time.sleep(0.5)
    else:
        say(jobs="no dashboard agent answered")
"""


class OldHeadMarker:
    """A campaign watcher: once our GCS serves in an epoch, the helper marks the previous head node dead.

    `python` runs Ray (None: unknown, nothing is marked); `env` is the head command's (Ray's TLS and token
    settings). The helper runs in its own session, as a hook does: not part of the head's tree.
    """

    def __init__(self, python: Optional[str], env: Mapping[str, str], limit: float = LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.python, self.env, self.limit, self.clock = python, dict(env), limit, clock
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._out = b""  # what the helper wrote after its last whole line
        self._last = b""  # its last line that was not JSON (Ray's warnings, a traceback's end)
        self._heard = False  # it said something in JSON
        self._epoch = 0  # the last epoch we marked for
        self._told = False  # the helper has our GCS's address
        self._kill_at = 0.0
        self._said_unsupported = False

    def __call__(self, snapshot: Snapshot) -> None:
        if snapshot.role not in LEADING_ROLES:
            self.close()
            return
        if snapshot.epoch != self._epoch:  # won: the helper loads Ray's modules while our head starts
            self._epoch, self._told = snapshot.epoch, False
            self._start(snapshot.won_wall or time.time())
        if snapshot.serving and snapshot.gcs_address and not self._told:
            self._told = True
            self._tell(snapshot.gcs_address)
        self._collect()

    def pids(self) -> set[int]:
        """The helper while it runs (its own session): never killed or reaped with the head's tree."""
        return {self.proc.pid} if self.proc else set()

    def close(self) -> None:
        """Kill a helper still running (we no longer lead, or the supervisor ends)."""
        if self.proc is not None and self.proc.poll() is None:
            kill_session(self.proc.pid)
        self._let_go()

    def _let_go(self) -> None:
        """Reap the helper and close its pipes."""
        if self.proc is not None:
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        self.proc = None

    def _start(self, won_wall: float) -> None:
        self.close()
        if self.python is None:
            self._unsupported("which Python runs Ray is not known (see --ha-prewarm)")
            return
        argv = [self.python, "-c", MARK, str(int(won_wall * 1000)), f"{self.limit:g}"]
        try:
            self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            log.warning("cannot mark the previous head node dead (%s): Ray's health checks will", exc)
            return
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)  # read each tick as much as has come
        self._out, self._last, self._heard = b"", b"", False

    def _tell(self, gcs_address: str) -> None:
        """Our GCS serves: hand the helper its address; it has `limit` s from now."""
        if self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(gcs_address.encode() + b"\n")
            self.proc.stdin.close()
        except OSError:
            pass  # it ended already: _collect says why
        self._kill_at = self.clock() + self.limit + 10

    def _collect(self) -> None:
        """Log what the helper has said so far; once it ends, say so if it said nothing; kill it if it overran."""
        if self.proc is None:
            return
        ended = self.proc.poll() is not None
        self._read()
        if not ended:
            if self._told and self.clock() >= self._kill_at:
                self.close()
                log.warning("marking the previous head node dead took over %gs; Ray's health checks will",
                            self.limit + 10)
            return
        self._let_go()
        if not self._heard:
            last = (self._out.strip() or self._last.strip() or b"no output").decode(errors="replace")
            log.warning("could not mark the previous head node dead: %s; Ray's health checks will", last)

    def _read(self) -> None:
        """Take what the helper has written; report each whole JSON line."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while chunk := os.read(self.proc.stdout.fileno(), 65536):
                self._out += chunk
        except BlockingIOError:
            pass
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            result = _json_object(line)
            if result is not None:
                self._heard = True
                self._report(result)
            elif line.strip():
                self._last = line  # to say why, should it say nothing else

    def _report(self, result: dict[str, object]) -> None:
        marked = result.get("marked")
        if isinstance(marked, list):
            for node_id, ip in marked:
                log.info("marked the previous head node %s (%s) dead in the new GCS: what lived there "
                         "restarts now", node_id[:12], ip)
            if not marked:
                log.info("the new GCS lists no previous head node alive")
        elif "jobs" in result:
            log.info("Ray's job recovery on this head: %s", JOBS_SAID.get(str(result["jobs"]), result["jobs"]))
        elif "unsupported" in result:
            self._unsupported(str(result["unsupported"]))
        else:
            log.warning("could not mark the previous head node dead: %s; Ray's health checks will",
                        result.get("error"))

    def _unsupported(self, why: str) -> None:
        if not self._said_unsupported:
            self._said_unsupported = True
            log.warning("this Ray offers no way to mark the previous head node dead (%s): what lived there "
                        "restarts only after Ray's health checks find it gone", why)


def _json_object(line: bytes) -> Optional[dict[str, object]]:
    """A helper's line as the JSON object it is, else None (Ray may print other lines)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
