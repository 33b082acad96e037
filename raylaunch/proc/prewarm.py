"""A pre-warmed standby: Ray's `ray start` imported ahead of time, run in-process on takeover.

A fresh `ray start` spends most of its time importing Ray (about 1.6 s of a 1.9 s start here), and
after a failover that time sits on the critical path. With --ha-prewarm a standby keeps one more
process: Ray's own interpreter, in its own session, that has imported `ray.scripts.scripts` and
waits on its stdin for one line:

    {"argv": ["ray", "start", "--head", ...], "env": {...}}    run Ray's CLI with this argv and
                                                                environment, in this process
    {..., "session_name": "session_..."}                       and resume this session

It then is the `ray start --head --block` process, exactly as the `ray` console script would be
(that script does the same import and calls the same `main`). EOF before the line (the launcher
died or let it go) makes it exit. Run as a script it imports nothing of raylaunch, so it works in
Ray's interpreter whatever else is installed there.

The session name is the cluster's, as its GCS stored it in Redis; the launcher reads it after
winning the lease. Given it, Ray's storage read of that name is answered with it: the read (in
Node.check_persisted_session_name) is a C++ call that waits a fixed second, the largest single step
of a takeover. Without it (a cluster never started, an unknown Ray), Ray reads as always.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # this script's directory holds raylaunch's modules: keep them from shadowing others

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Callable, Mapping, Optional, Sequence

#: A warm interpreter that died is replaced at most this often (s), so a broken Ray cannot spin.
RESPAWN_EVERY = 5.0


# -- the warm process -----------------------------------------------------------------------------

def serve() -> int:
    """Import Ray's CLI, wait for the go line, then become `ray <argv>` (exit code included)."""
    from ray.scripts.scripts import main as ray_main  # the slow part, done while standing by

    line = sys.stdin.readline()
    if not line:
        return 0
    go = json.loads(line)
    os.environ.clear()
    os.environ.update(go["env"])
    sys.argv = list(go["argv"])
    if go.get("session_name"):
        resume_session(go["session_name"])
    result = ray_main()
    return result if isinstance(result, int) else 0


def resume_session(name: str) -> None:
    """Answer Ray's read of the persisted session name with `name`, without its fixed wait.

    Only the storage read itself is answered: Ray's Node.check_persisted_session_name still runs,
    with what it does beside the read (it also points the GCS at Redis). Any other key is read as
    before. A Ray without this function reads for itself.
    """
    from ray._private import node

    read = getattr(node, "get_session_key_from_storage", None)
    if not callable(read):
        return

    def answered(*args, **kwargs):
        return name.encode() if args and args[-1] == b"session_name" else read(*args, **kwargs)

    node.get_session_key_from_storage = answered


# -- the launcher's side --------------------------------------------------------------------------

def ray_python(ray_exe: str, ray_version: tuple[int, int], own_version: Optional[tuple[int, int]]) -> Optional[str]:
    """The Python interpreter that runs `ray_exe`, or None when it cannot be told.

    pip's `ray` console script names its interpreter in its #! line and calls Ray's CLI. A shim
    (pyenv) names no Python; then this interpreter is used if it has the same Ray major.minor as the
    `ray` on PATH. A Python script that is not Ray's console script (a wrapper) cannot be pre-warmed.
    """
    try:
        with open(ray_exe, "rb") as script:
            text = script.read(4096).decode(errors="replace")
    except OSError:
        return None
    first = text.splitlines()[0] if text else ""
    words = first[2:].split() if first.startswith("#!") else []
    if words and os.path.basename(words[0]) == "env" and len(words) > 1:
        words = [shutil.which(words[1]) or ""]
    if words and os.path.basename(words[0]).startswith("python"):
        runs_ray_cli = "ray.scripts.scripts" in text and os.access(words[0], os.X_OK)
        return words[0] if runs_ray_cli else None
    return sys.executable if own_version == ray_version else None


class WarmStart:
    """Keeps one warm interpreter ready while standing by and hands it the head command on takeover."""

    def __init__(self, python: str, env: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.python, self.env, self.clock = python, dict(env), clock
        self.proc: Optional[subprocess.Popen] = None
        self._next_spawn = 0.0

    def ensure(self) -> None:
        """Start a warm interpreter unless one is alive (rate-limited after a death)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.clock() < self._next_spawn:
            return
        self._next_spawn = self.clock() + RESPAWN_EVERY
        self.proc = subprocess.Popen([self.python, os.path.abspath(__file__)], env=self.env,
                                     stdin=subprocess.PIPE, start_new_session=True)

    def take(self, argv: Sequence[str], env: Mapping[str, str],
             session_name: Optional[str] = None) -> Optional[subprocess.Popen]:
        """Hand `argv`, `env` and the cluster's session name (if known) to the warm interpreter; it is
        then the head. None if none is alive."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return None
        go = {"argv": list(argv), "env": dict(env), **({"session_name": session_name} if session_name else {})}
        try:
            proc.stdin.write(json.dumps(go).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died just now
            _kill(proc)
            return None
        return proc

    def close(self) -> None:
        """Let the warm interpreter go (EOF ends it), and make sure it is gone."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL an unused warm interpreter's session and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    proc.wait()


if __name__ == "__main__":
    sys.exit(serve())
