"""What a head candidate's autoscaler needs on this machine. `ray up` copies its config and key only to
its head_ip; a standby without them takes over with an autoscaler that dies at once and takes the head
with it, so a candidate refuses to stand by without them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from raylaunch.config import TRUTHY, ConfigError
from raylaunch.proc.raycmd import option_value

HINT = "`ray up` copies it only to its head_ip: run `ray up` once per candidate (docs/ray-up.md)"


@dataclass(frozen=True)
class LocalCluster:
    """A local-provider cluster as its autoscaler on this machine sees it: the file where Ray keeps its
    node list (`<ray temp dir>/cluster-<name>.state`), and the head and worker addresses of its config."""

    state_path: Path
    head_ip: str
    worker_ips: tuple[str, ...]


@dataclass(frozen=True)
class Autoscaling:
    """What a head candidate learnt from its --autoscaling-config: warnings, and its local cluster if any."""

    warnings: tuple[str, ...] = ()
    local: Optional[LocalCluster] = None


def read_autoscaling(ray_args: Sequence[str], env: Mapping[str, str], ray_tmp: Path) -> Autoscaling:
    """ConfigError (one line) if --autoscaling-config, or the SSH key it names, is not on this machine;
    else what the autoscaler this candidate would run needs ray-ha to know (`ray_tmp`: Ray's temp dir)."""
    given = option_value(ray_args, "--autoscaling-config")
    if not given:
        return Autoscaling()
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
    provider = _section(config, "provider")
    if provider.get("type") != "local":
        return Autoscaling()
    warnings: tuple[str, ...] = ()
    if env.get("RAY_enable_autoscaler_v2", "").strip().lower() in TRUTHY:
        warnings = ("the autoscaler will run as v2 (RAY_enable_autoscaler_v2, `ray up`'s default since Ray 2.50), "
                    "which launched no local-provider worker on Ray 2.60: run `ray up` with "
                    "RAY_UP_enable_autoscaler_v2=0",)
    return Autoscaling(warnings, _local_cluster(config, provider, ray_tmp))


def _local_cluster(config: dict[str, Any], provider: dict[str, Any], ray_tmp: Path) -> Optional[LocalCluster]:
    name, head, workers = config.get("cluster_name"), provider.get("head_ip"), provider.get("worker_ips")
    if not (isinstance(name, str) and isinstance(head, str) and isinstance(workers, list)):
        return None  # a coordinator-managed local provider, or not a config `ray up` wrote
    return LocalCluster(ray_tmp / f"cluster-{name}.state", head, tuple(str(ip) for ip in workers))


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


def _section(config: Any, name: str) -> dict[str, Any]:
    section = config.get(name) if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}
