"""ray-ha: hot-standby Ray heads behind a Redis lease; a drop-in for `ray start`."""

__version__ = "0.2.0"
