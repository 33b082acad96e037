"""What a head candidate's autoscaler needs on this machine. `ray up` copies its config and key only to
its head_ip; a standby without them takes over with an autoscaler that dies at once and takes the head
with it, so a candidate refuses to stand by without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from raylaunch.config import TRUTHY, ConfigError
from raylaunch.proc.raycmd import option_value

HINT = "`ray up` copies it only to its head_ip: run `ray up` once per candidate (README, `ray up`)"


def check_autoscaling_files(ray_args: Sequence[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """ConfigError (one line) if --autoscaling-config, or the SSH key it names, is not on this machine;
    else warnings about the autoscaler this candidate would run."""
    given = option_value(ray_args, "--autoscaling-config")
    if not given:
        return ()
    path = Path(given).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--autoscaling-config {given}: {exc.strerror or exc}; {HINT}") from None
    config = _parse(text)
    key = _section(config, "auth").get("ssh_private_key")
    if isinstance(key, str) and not Path(key).expanduser().is_file():
        raise ConfigError(f"--autoscaling-config {given} names the SSH key {key}, which is not on this machine; "
                          f"{HINT}")
    if _section(config, "provider").get("type") == "local" and \
            env.get("RAY_enable_autoscaler_v2", "").strip().lower() in TRUTHY:
        return ("the autoscaler will run as v2 (RAY_enable_autoscaler_v2, `ray up`'s default since Ray 2.50), "
                "which launched no local-provider worker on Ray 2.60: run `ray up` with RAY_UP_enable_autoscaler_v2=0",)
    return ()


def _parse(text: str) -> Any:
    """`ray up` writes the config as JSON; a hand-written one may be YAML (read if PyYAML, Ray's, is here)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        return {}
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return {}


def _section(config: Any, name: str) -> dict:
    section = config.get(name) if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}
