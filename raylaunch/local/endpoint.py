"""The HTTP endpoint: /healthz, /leader and /metrics (Prometheus text), for probes and load balancers.

/healthz answers as `ray-ha health --role any` and /leader as `ray-ha health` (the serving leader whose
GCS accepts connections): both judge the supervisor's state record by SupervisorState.health. It
serves the last record from a thread and never touches Redis or the lease loop; a record older than
the lease duration means the loop is stuck, and both probes then fail.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from raylaunch.config import Role
from raylaunch.local.state import SupervisorState, gcs_probe

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(state: Optional[SupervisorState]) -> str:
    """The ray-ha metrics in Prometheus text format, labelled with the node."""
    if state is None:
        return ""
    escaped = state.node.replace("\\", "\\\\").replace('"', '\\"')
    label = f'{{node="{escaped}"}}'
    rows: list[tuple[str, str, str, float]] = [
        ("ray_ha_is_leader", "gauge", "1 while this node leads and its GCS serves.", int(state.serving)),
        ("ray_ha_epoch", "gauge", "Fencing epoch this node leads in, or last saw.", state.epoch or 0),
        ("ray_ha_leader_transitions_total", "counter", "Leader changes seen by this node.",
         state.transitions),
        ("ray_ha_lease_renew_failures_total", "counter", "Lease renewals that failed.",
         state.renew_failures),
        ("ray_ha_redis_refused", "gauge", "1 while Redis refuses this node until a setting changes (see the log).",
         int(state.redis_refused is not None)),
        ("ray_ha_priority", "gauge", "This candidate's --ha-priority (0: never leads).", state.priority),
        ("ray_ha_paused", "gauge", "1 while an operator's pause (ray-ha pause) holds automatic failover back.",
         int(state.paused)),
        ("ray_ha_switchover_pending", "gauge", "1 on the leader while a switchover is asked for or scheduled.",
         int(state.switchover_pending)),
    ]
    if state.takeover_seconds is not None:
        rows.append(("ray_ha_takeover_seconds", "gauge", "Last takeover: lease acquired to GCS serving.",
                     round(state.takeover_seconds, 3)))
    if state.headless_seconds is not None:
        rows.append(("ray_ha_headless_seconds", "gauge", "Last takeover: the previous leader's last renewal "
                     "(or its release) to this GCS serving.", round(state.headless_seconds, 3)))
    return "".join(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name}{label} {value}\n"
                   for name, kind, text, value in rows)


class Endpoint:
    """Serves the supervisor's latest state record over HTTP (call it with each new record)."""

    def __init__(self, host: str, port: int, stale_after: float,
                 probe: Callable[[str], bool] = gcs_probe) -> None:
        self.stale_after, self.probe = stale_after, probe
        self._state: Optional[SupervisorState] = None
        self._seen = 0.0
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), _handler(self))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="http")
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __call__(self, state: SupervisorState) -> None:
        self._state, self._seen = state, time.monotonic()

    def answer(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for one GET."""
        state = self._state
        fresh = state is not None and time.monotonic() - self._seen <= self.stale_after
        role = state.role if state else Role.STARTING
        if path == "/healthz":
            refused = state is not None and state.redis_refused is not None
            healthy = fresh and state is not None and state.health("any")[0]
            return (200 if healthy else 503), "text/plain", \
                f"{'ok' if healthy else 'refused by Redis' if refused else 'stale'} {role}" \
                f"{' paused' if state and state.paused else ''}\n"
        if path in ("/leader", "/primary"):
            leading = fresh and state is not None and state.health("leader", self.probe)[0]
            return (200 if leading else 503), "text/plain", f"{role}\n"
        if path == "/metrics":
            return 200, METRICS_TYPE, render_metrics(state)
        return 404, "text/plain", "not found: try /healthz, /leader or /metrics\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, body = endpoint.answer(self.path.split("?", 1)[0])
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass  # probes every few seconds would drown the log

    return Handler
