"""host:port, the one parser, and whether something accepts TCP connections there. Standard library only."""

from __future__ import annotations

import socket
from typing import Optional


def split_host_port(text: str, default_port: Optional[str] = None) -> tuple[str, str]:
    """`host:port` or `[v6]:port` into (host, port text); ValueError saying what form was expected.
    With `default_port`, `host` and `[v6]` alone are taken too, with that port.

    A bare IPv6 address is ambiguous and refused.
    """
    if default_port is not None and text and ":" not in text and "/" not in text:
        return text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if default_port is not None and sep and host and not rest:
            return host, default_port
        if not sep or not rest.startswith(":") or not host:
            raise ValueError("is not of the form [ipv6]:port")
        return host, rest[1:]
    if text.count(":") != 1:
        hint = " (IPv6 needs brackets: [::1]:6379)" if text.count(":") > 1 else ""
        raise ValueError(f"is not of the form host:port{hint}")
    host, port = text.split(":")
    if not host or "/" in host or "/" in port:
        raise ValueError("is not of the form host:port")
    return host, port


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into (host, port); ValueError if it is neither."""
    host, port = split_host_port(address)
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """(host, port) as `host:port`, bracketing IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_local_address(host: str) -> bool:
    """True if `host` is an address of this machine (a socket can be bound to it)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
        return True
    except OSError:
        return False


def tcp_accepts(address: str, timeout: float = 0.5) -> bool:
    """True if something accepts a TCP connection at `host:port` right now."""
    try:
        with socket.create_connection(split_address(address), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def local_address_towards(host: str) -> str:
    """The address this machine sends from to reach `host` (the route's source; nothing is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return str(probe.getsockname()[0])
