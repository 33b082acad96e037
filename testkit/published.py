"""Which GCS addresses ray-ha published in a Redis: the suite's check that test traffic stays local.

Ray rewrites 127.0.0.1 to the machine's outward address; a test that let that happen would publish (and
dial) the outward address. Every address published during a test must be on loopback (127.0.0.0/8, ::1) or
on the rig's private network.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Callable, Iterable

ALLOWED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"), ipaddress.ip_network("198.18.0.0/15"))


def published_gcs_addresses(command: Callable[..., object]) -> list[str]:
    """Every `gcs_address` in the JSON records of any string or list key (the leader record, its history,
    heartbeats), asked through `command(*args)` (a redis client's execute_command, or a probe's)."""
    found = []
    for key in command("KEYS", "*") or []:
        kind = command("TYPE", key)
        values = [command("GET", key)] if kind == "string" else command("LRANGE", key, 0, -1) if kind == "list" else []
        for value in values or []:
            try:
                record = json.loads(value)
            except (TypeError, ValueError):
                continue
            if isinstance(record, dict) and record.get("gcs_address"):
                found.append(str(record["gcs_address"]))
    return found


def strays(addresses: Iterable[str]) -> list[str]:
    """The addresses whose host is neither loopback nor on the rig's network (names count as strays)."""
    out = []
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            out.append(address)
            continue
        if not any(ip in net for net in ALLOWED):
            out.append(address)
    return sorted(set(out))
