"""Which Ray: the `ray` on PATH, its version, the interpreter that runs it; and handing over to it."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Callable, NoReturn, Optional

from raylaunch.config import ConfigError
from raylaunch.proc.prewarm import NotRaysScript, ray_python
from raylaunch.proc.raycmd import parse_version


def find_ray() -> str:
    """The `ray` executable on PATH, or a usage error saying how to get it."""
    ray = shutil.which("ray")
    if ray is None:
        raise ConfigError("`ray` not found on PATH: install Ray (pip install 'ray[default]')")
    return ray


def exec_ray(args: Sequence[str]) -> NoReturn:
    """Replace this process with `ray <args>`: same arguments, same exit code, no extra process."""
    ray = find_ray()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(ray, ["ray", *args])


def installed_ray() -> Optional[str]:
    """The version of the Ray installed beside ray-ha (this interpreter's), or None."""
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


def ask_ray_version(ray_exe: str) -> str:
    """What `ray --version` says (ConfigError if it cannot run)."""
    try:
        out = subprocess.run([ray_exe, "--version"], check=False, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run `{ray_exe} --version`: {exc}") from None
    return out.rsplit("version", 1)[-1]


def ray_version(ray_exe: str, python: str = sys.executable,
                ours: Callable[[], Optional[str]] = installed_ray,
                ask: Callable[[str], str] = ask_ray_version) -> tuple[int, int]:
    """The version of `ray_exe`: from our package metadata when it sits beside `python`, else by asking it."""
    if os.path.dirname(os.path.realpath(ray_exe)) == os.path.dirname(python):
        mine = ours()
        if mine is not None:
            return parse_version(mine)
    return parse_version(ask(ray_exe))


def warm_python(ray_exe: str, env: Mapping[str, str], required: bool = True) -> tuple[Optional[str], str]:
    """--ha-prewarm: (the Python proven to run `ray_exe` in `env`, ""), else (None, why not) for auto to start
    cold, or a ConfigError when `required` (on): a wrapper `ray` must run as it is."""
    try:
        return ray_python(ray_exe, env), ""
    except NotRaysScript as exc:
        why = f"cannot tell which Python runs {ray_exe}: {exc}"
    if required:
        raise ConfigError(f"--ha-prewarm on: {why}; --ha-prewarm auto starts it cold instead")
    return None, why
