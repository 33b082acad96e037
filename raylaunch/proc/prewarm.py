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
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional

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

    def answered(*args: Any, **kwargs: Any) -> Any:
        return name.encode() if args and args[-1] == b"session_name" else read(*args, **kwargs)

    node.get_session_key_from_storage = answered


# -- the launcher's side --------------------------------------------------------------------------

class NotRaysScript(Exception):
    """Why `ray` cannot be pre-warmed: it is not provably Ray's own console script, so it may be a wrapper
    (environment, temp dir, `conda run`, a container) that pre-warming would bypass."""


#: More than a console script or a pyenv shim ever is (both are under 1 KiB).
READ_LIMIT = 4096

#: pip's (distlib's), uv's and conda's `ray` console script, line by line: nothing else may be in it.
CONSOLE_SCRIPT_LINES = tuple(re.compile(line) for line in (
    r"import (re|sys)",
    r"from ray\.scripts\.scripts import main",
    r"if __name__ == (['\"])__main__\1:",
    r"(el)?if sys\.argv\[0\]\.endswith\([^()]*\):",
    r"sys\.argv\[0\] = (re\.sub\(r?(['\"])[^'\"]*\2, (['\"])\3, sys\.argv\[0\]\)|sys\.argv\[0\]\[:-\d+\])",
    r"sys\.exit\(main\(\)\)",
))

#: A pyenv shim's one command: `exec "<pyenv>" exec "$program" "$@"` (pyenv's own), or `exec pyenv exec ray "$@"`.
PYENV_EXEC = re.compile(r'exec "?(?P<pyenv>(?:[^"\s]*/)?pyenv)"? exec "?(?P<program>\$program|[\w.+-]+)"? "\$@"')
PYENV_ROOT_LINE = re.compile(r'export PYENV_ROOT="?(?P<root>[^"]*)"?')

#: The other lines of pyenv's shims (pyenv-rehash's prototype, older ones' python-file block included).
PYENV_SHIM_LINES = tuple(re.compile(line) for line in (
    r"set -e", r'\[ -n "\$PYENV_DEBUG" \] && set -x', r'program="\$\{0##\*/\}"', r"SHIM_PATH=\$\{0%/\*\}",
    r'if \[\[ \$SHIM_PATH != "[^"]*" \]\]; then', r'export _PYENV_SHIM_PATH="\$SHIM_PATH"', r"fi",
    r'if \[\[ "\$program" = "python"\* \]\]; then', r"for arg; do", r'case "\$arg" in', r"-c\* \| -- \) break ;;",
    r"\*/\* \)", r'if \[ -f "\$arg" \]; then', r'export PYENV_FILE_ARG="\$arg"', r"break", r";;", r"esac", r"done",
))

#: How long `pyenv which` may take (it is a few bash scripts).
PYENV_TIMEOUT = 30.0

WRAPPER = "a wrapper, which pre-warming would bypass"


class PyenvShim(NamedTuple):
    """What a pyenv shim runs: `<pyenv> exec <program>` with PYENV_ROOT (None: the caller's)."""

    pyenv: str
    root: Optional[str]
    program: str


def ray_python(ray_exe: str, env: Mapping[str, str]) -> str:
    """The Python that runs `ray_exe` in `env`, proven: the #! Python of Ray's console script, or of the
    script a pyenv shim resolves to. Anything else raises NotRaysScript: it must run as it is (cold)."""
    lines = read_script(ray_exe)
    shim = pyenv_shim(lines)
    if shim is None:
        return console_script_python(lines, env)
    real = pyenv_which(shim, os.path.basename(ray_exe), env)
    try:
        return console_script_python(read_script(real), env)
    except NotRaysScript as exc:
        raise NotRaysScript(f"it is a pyenv shim for {real}, where {exc}") from None


def read_script(path: str) -> list[str]:
    """The lines of the script at `path`; NotRaysScript if it cannot be read or is too large for one."""
    try:
        with open(path, "rb") as script:
            data = script.read(READ_LIMIT + 1)
    except OSError as exc:
        raise NotRaysScript(f"cannot read it ({exc.strerror or exc})") from None
    if len(data) > READ_LIMIT:
        raise NotRaysScript(f"it is larger than Ray's console script or a pyenv shim: {WRAPPER}")
    return data.decode(errors="replace").splitlines()


def interpreter(lines: Sequence[str]) -> tuple[str, bool]:
    """The program the #! line names alone ("" if none), and whether through `/usr/bin/env <program>`."""
    first = lines[0] if lines else ""
    words = first[2:].split() if first.startswith("#!") else []
    if len(words) == 2 and os.path.basename(words[0]) == "env":
        return words[1], True
    return (words[0], False) if len(words) == 1 else ("", False)


def body(lines: Sequence[str]) -> list[str]:
    """The lines after the #! line, stripped, without blank lines and comments."""
    return [line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("#")]


def console_script_python(lines: Sequence[str], env: Mapping[str, str]) -> str:
    """The Python of Ray's console script `lines` (its #! line's, found on env's PATH through env)."""
    name, through_env = interpreter(lines)
    if not os.path.basename(name).startswith("python"):
        raise NotRaysScript(f"its #! line ({lines[0] if lines else 'none'}) names no Python alone, and it is "
                            f"not a pyenv shim: {WRAPPER}")
    code = body(lines)
    if "from ray.scripts.scripts import main" not in code or "sys.exit(main())" not in code or \
            not all(any(p.fullmatch(line) for p in CONSOLE_SCRIPT_LINES) for line in code):
        raise NotRaysScript(f"it is a Python script but not Ray's console script: {WRAPPER}")
    python = shutil.which(name, path=env.get("PATH", os.defpath)) if through_env else name
    if python is None or not os.access(python, os.X_OK):
        raise NotRaysScript(f"its #! Python {name} is not " + ("on PATH" if through_env else "executable"))
    return python


def pyenv_shim(lines: Sequence[str]) -> Optional[PyenvShim]:
    """What `lines` run if they are a pyenv shim (bash, pyenv's lines only), else None."""
    if os.path.basename(interpreter(lines)[0]) != "bash":
        return None
    code = body(lines)
    execs = [m for m in map(PYENV_EXEC.fullmatch, code) if m]
    roots = [m.group("root") for m in map(PYENV_ROOT_LINE.fullmatch, code) if m]
    known = (PYENV_EXEC, PYENV_ROOT_LINE, *PYENV_SHIM_LINES)
    if len(execs) != 1 or len(roots) > 1 or not all(any(p.fullmatch(line) for p in known) for line in code):
        return None
    return PyenvShim(execs[0].group("pyenv"), roots[0] if roots else None, execs[0].group("program"))


def pyenv_which(shim: PyenvShim, name: str, env: Mapping[str, str]) -> str:
    """The script `shim` (installed as `name`) runs, as its pyenv tells in `env` with the shim's PYENV_ROOT."""
    program = name if shim.program == "$program" else shim.program
    pyenv = shim.pyenv if os.sep in shim.pyenv else shutil.which(shim.pyenv, path=env.get("PATH", os.defpath))
    if pyenv is None:
        raise NotRaysScript(f"it is a pyenv shim, and there is no {shim.pyenv} on PATH to resolve it")
    asked = f"`{pyenv} which {program}`"
    try:
        done = subprocess.run([pyenv, "which", program], check=False, capture_output=True, text=True,
                              timeout=PYENV_TIMEOUT, env={**env, **({"PYENV_ROOT": shim.root} if shim.root else {})})
    except (OSError, subprocess.SubprocessError) as exc:
        raise NotRaysScript(f"it is a pyenv shim, and {asked} could not run ({exc})") from None
    found = done.stdout.strip()
    if done.returncode != 0 or not found or "\n" in found:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise NotRaysScript(f"it is a pyenv shim, and {asked} failed: {said}")
    return found


class WarmStart:
    """Keeps one warm interpreter ready while standing by and hands it the head command on takeover."""

    def __init__(self, python: str, env: Mapping[str, str], clock: Callable[[], float] = time.monotonic) -> None:
        self.python, self.env, self.clock = python, dict(env), clock
        self.proc: Optional[subprocess.Popen[bytes]] = None
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
             session_name: Optional[str] = None) -> Optional[subprocess.Popen[bytes]]:
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


def _kill(proc: subprocess.Popen[bytes]) -> None:
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
