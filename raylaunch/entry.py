"""The `ray-ha` command's entry point: plain `ray start` is recognised before anything heavy loads.

With HA off (or no --head) and no ray-ha option, `ray-ha start ...` is exactly `ray start ...`; this
module (standard library and raylaunch.config only) execs it without importing click, dotenv or the rest of ray-ha, so
the passthrough costs one interpreter start over `ray start`. Anything else goes to raylaunch.cli.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from raylaunch.config import FALSY, TRUTHY


def plain_ray_start(argv: Sequence[str]) -> bool:
    """True when `ray-ha <argv>` can only mean `ray start <the same arguments>`.

    Not when a ray-ha option or --help is given, when ./.env exists (it may switch HA on), or when
    RAY_ENABLE_HEAD_HA is not a known spelling (the full path reports that).
    """
    if argv[:1] != ["start"] or any(a.startswith("--ha-") or a == "--help" for a in argv[1:]):
        return False
    if os.path.isfile(".env"):
        return False
    ha = os.environ.get("RAY_ENABLE_HEAD_HA", "").strip().lower()
    return ha in FALSY or (ha in TRUTHY and "--head" not in argv[1:])


def main() -> None:
    """Exec `ray start` at once when that is all there is to do; else run the full CLI."""
    argv = sys.argv[1:]
    ray = shutil.which("ray") if plain_ray_start(argv) else None
    if ray is not None:
        sys.stdout.flush()
        os.execv(ray, ["ray", *argv])
    from raylaunch.cli import main as cli_main

    cli_main(prog_name="ray-ha")
