"""Ray Serve on rig hosts: demo/serve_app.py run on a host, and an HTTP client that calls a proxy every 50 ms
and keeps every answer, for the tests and the bench to judge a failover by."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from testkit.hostray import ROOT, clean_env, read_json_line, read_line
from testkit.hosts import Host

PORT = 8000  # Serve's HTTP port on every node (demo/serve_app.py)
SERVE_APP = ROOT / "demo" / "serve_app.py"

#: GETs argv[1] every argv[2] s until stdin closes; one JSON line per request: {"t", "ok", "answer"|"error"}.
_LOAD = """
import json, sys, threading, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
while not done.is_set():
    t = time.clock_gettime(time.CLOCK_MONOTONIC)
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            line = {"t": t, "ok": reply.status == 200, "answer": json.loads(reply.read())}
    except Exception as exc:
        line = {"t": t, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(line), flush=True)
    done.wait(every)
"""


def serve_app(host: Host, address: str, *args: str, timeout: float = 240) -> dict:
    """Run demo/serve_app.py ADDRESS ARGS on `host` to its end; its JSON answer."""
    result = host.run([sys.executable, str(SERVE_APP), address, *args], timeout=timeout, check=False, env=clean_env())
    if result.returncode != 0:
        raise AssertionError(f"serve_app {args} exited {result.returncode}:\n{result.stderr[-6000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class ServeWatch:
    """demo/serve_app.py `watch` on `host`, connected now: `go()` starts the clock (right after a fault),
    `result()` waits for when the controller said the app is RUNNING."""

    def __init__(self, host: Host, address: str = "auto") -> None:
        self.process = host.popen([sys.executable, str(SERVE_APP), address, "watch"], env=clean_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if read_line(self.process.proc.stdout, 120, b"ready") != b"ready":
            raise AssertionError("serve_app watch did not connect")

    def go(self) -> None:
        self.process.proc.stdin.write(b"go\n")
        self.process.proc.stdin.flush()

    def result(self, timeout: float = 180) -> dict:
        return read_json_line(self.process.proc.stdout, timeout) or {"error": f"no answer within {timeout}s"}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Answer:
    """One request of an HttpLoad: when it was sent (monotonic), and what came back."""

    t: float
    ok: bool
    version: Optional[str] = None
    pid: Optional[int] = None
    count: Optional[int] = None
    error: Optional[str] = None


class HttpLoad:
    """An HTTP client on `host` calling `url` every `every` s from now until `stop()`."""

    def __init__(self, host: Host, url: str, out: Path, every: float = 0.05) -> None:
        self.out = out
        self._sink = open(out, "wb")  # noqa: SIM115 - closed in stop()
        self.process = host.popen([sys.executable, "-c", _LOAD, url, str(every)], env=clean_env(),
                                  stdin=subprocess.PIPE, stdout=self._sink, stderr=subprocess.DEVNULL)

    def answers(self) -> list[Answer]:
        """Every request so far."""
        lines = [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]
        return [Answer(line["t"], line["ok"], error=line.get("error"), **line.get("answer", {})) for line in lines]

    def stop(self) -> list[Answer]:
        """End the client (stdin closed, then killed if it lingers); every request it made."""
        if self.process.poll() is None:
            self.process.proc.stdin.close()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._sink.close()
        return self.answers()
