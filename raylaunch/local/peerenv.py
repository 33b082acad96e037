"""The Redis a machine's running supervisor uses, read from its own environment: `ray up` recipes set it
only inside the start command, and `status` and `switchover` should find it there."""

from __future__ import annotations

from collections.abc import Mapping

import psutil

from raylaunch.config import ConfigError
from raylaunch.local.state import machine_supervisors
from raylaunch.store.connect import TLS_FILE_VARS

#: What `status` and `switchover` may take from a local supervisor's environment when theirs is silent.
REDIS_ENV = ("RAY_REDIS_ADDRESS", "RAY_REDIS_PASSWORD", *TLS_FILE_VARS, "RAY_REDIS_CA_PATH",
             "RAY_external_storage_namespace", "RAY_HA_LEADER_KEY")


def redis_of_local_supervisor(env: Mapping[str, str]) -> dict[str, str]:
    """The Redis settings of the supervisor running here, from its own environment (as `ray up` recipes
    set them only inside the start command); {} if none runs or it cannot be read; ConfigError if the
    running ones disagree."""
    found = []
    for sup in machine_supervisors(env).supervisors:
        if not (sup.running and sup.pid):
            continue
        try:
            environ = psutil.Process(sup.pid).environ()
        except psutil.Error:
            continue
        settings = {name: environ[name] for name in REDIS_ENV if name in environ}
        if sup.state is not None and sup.state.key:
            settings["RAY_HA_LEADER_KEY"] = sup.state.key
        if "RAY_REDIS_ADDRESS" in settings and settings not in found:
            found.append(settings)
    if len(found) > 1:
        raise ConfigError("RAY_REDIS_ADDRESS is not set and this machine's supervisors use different Redis "
                          "servers or keys; set it (and --ha-key) to say which")
    return found[0] if found else {}
