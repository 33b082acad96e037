"""The HTTP endpoint: /healthz, /leader (200 only on the serving leader) and /metrics (Prometheus text).

/healthz fails like `ray-ha health --role any`: a loop that stopped reporting, or one stuck on a Redis
refusal that will not pass by itself.

It serves the campaign's last snapshot from a thread and never touches Redis or the lease loop. A
snapshot older than the lease duration means the loop is stuck: both probes then fail.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from raylaunch.campaign import Snapshot

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(snapshot: Optional[Snapshot]) -> str:
    """The ray-ha metrics in Prometheus text format, labelled with the node."""
    if snapshot is None:
        return ""
    label = '{node="%s"}' % snapshot.node.replace("\\", "\\\\").replace('"', '\\"')
    rows: list[tuple[str, str, str, float]] = [
        ("ray_ha_is_leader", "gauge", "1 while this node leads and its GCS serves.", int(snapshot.serving)),
        ("ray_ha_epoch", "gauge", "Fencing epoch this node leads in, or last saw.", snapshot.epoch),
        ("ray_ha_leader_transitions_total", "counter", "Leader changes seen by this node.",
         snapshot.transitions),
        ("ray_ha_lease_renew_failures_total", "counter", "Lease renewals that failed.",
         snapshot.renew_failures),
        ("ray_ha_redis_refused", "gauge", "1 while Redis refuses this node until a setting changes (see the log).",
         int(snapshot.redis_refused is not None)),
    ]
    if snapshot.takeover_seconds is not None:
        rows.append(("ray_ha_takeover_seconds", "gauge", "Last takeover: lease acquired to GCS serving.",
                     round(snapshot.takeover_seconds, 3)))
    return "".join(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name}{label} {value}\n"
                   for name, kind, text, value in rows)


class Endpoint:
    """A campaign watcher that also serves what it saw over HTTP."""

    def __init__(self, host: str, port: int, stale_after: float) -> None:
        self.stale_after = stale_after
        self._snapshot: Optional[Snapshot] = None
        self._seen = 0.0
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), _handler(self))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="http")
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __call__(self, snapshot: Snapshot) -> None:
        self._snapshot, self._seen = snapshot, time.monotonic()

    def answer(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for one GET."""
        snap = self._snapshot
        fresh = snap is not None and time.monotonic() - self._seen <= self.stale_after
        role = snap.role.value if snap else "starting"
        if path == "/healthz":
            refused = snap is not None and snap.redis_refused is not None
            healthy = fresh and not refused
            return (200 if healthy else 503), "text/plain", \
                f"{'ok' if healthy else 'refused by Redis' if refused else 'stale'} {role}\n"
        if path in ("/leader", "/primary"):
            leading = fresh and snap is not None and snap.serving
            return (200 if leading else 503), "text/plain", f"{role}\n"
        if path == "/metrics":
            return 200, METRICS_TYPE, render_metrics(snap)
        return 404, "text/plain", "not found: try /healthz, /leader or /metrics\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            status, kind, body = endpoint.answer(self.path.split("?", 1)[0])
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass  # probes every few seconds would drown the log

    return Handler
