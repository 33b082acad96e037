"""When ray-ha is just `ray start`: HA off or no --head. Kept light (no Redis, no Ray, no psutil), so
`ray-ha start` costs next to nothing over `ray start` when it only hands over to it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

from raylaunch.config import ConfigError, parse_bool
from raylaunch.envfile import load_env_file
from raylaunch.proc.rayexe import exec_ray


def check_no_ha_typos(ray_args: Sequence[str]) -> None:
    """A misspelt --ha- option is an error, never something passed on to Ray."""
    unknown = next((a for a in ray_args if a.startswith("--ha-")), None)
    if unknown:
        raise ConfigError(f"no such option: {unknown.split('=')[0]} (see ray-ha start --help)")


def pass_through_unless_ha(ray_args: Sequence[str], env_file: Optional[str], follow: bool = False) -> None:
    """Exec `ray start` unless RAY_ENABLE_HEAD_HA is on and --head given, or --ha-follow; returns only
    in HA mode (a head candidate or a follower)."""
    check_no_ha_typos(ray_args)
    load_env_file(env_file)
    if follow:
        for given, why in (("--head", "it starts a worker node that joins the leader"),
                           ("--address", "it finds the leader's GCS address in Redis itself")):
            if any(a == given or a.startswith(given + "=") for a in ray_args):
                raise ConfigError(f"--ha-follow takes no {given}: {why}")
        return
    enabled = parse_bool("RAY_ENABLE_HEAD_HA", os.environ.get("RAY_ENABLE_HEAD_HA"))
    if not enabled or "--head" not in ray_args:
        exec_ray(["start", *ray_args])
