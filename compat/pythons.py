"""The Python interpreters this machine has: on PATH as pythonX.Y, and under pyenv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

Version = tuple[int, int]


def version_of(python: str) -> Optional[Version]:
    """(major, minor) of an interpreter, or None if it does not run."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _pyenv_candidates() -> list[str]:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    versions = Path(root) / "versions"
    return sorted(str(p / "bin" / "python") for p in versions.glob("3.*") if (p / "bin" / "python").exists()) \
        if versions.is_dir() else []


def installed() -> dict[Version, str]:
    """Every Python 3 found, one interpreter per minor version (this one included)."""
    found: dict[Version, str] = {}
    names = [sys.executable, *_pyenv_candidates(), *(shutil.which(f"python3.{m}") for m in range(6, 20))]
    for python in names:
        if python and (version := version_of(python)) is not None:
            found.setdefault(version, python)
    return found


def pick(spec: str, floor: Version) -> tuple[str, Version]:
    """`oldest`, `newest` (of those >= floor), `3.12`, or a path: the interpreter and its version."""
    if spec in ("oldest", "newest"):
        usable = {v: p for v, p in installed().items() if v >= floor}
        version = (min if spec == "oldest" else max)(usable)
        return usable[version], version
    if re.fullmatch(r"\d+\.\d+", spec):
        wanted = tuple(int(x) for x in spec.split("."))
        match = installed().get(wanted)  # type: ignore[arg-type]
        if match is None:
            raise SystemExit(f"compat: no Python {spec} on this machine (looked on PATH and under pyenv)")
        return match, wanted  # type: ignore[return-value]
    version = version_of(spec)
    if version is None:
        raise SystemExit(f"compat: {spec} does not run as a Python interpreter")
    return spec, version
