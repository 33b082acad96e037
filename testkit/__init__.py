"""Test and demo tooling that is not part of ray-ha: a local Redis, process helpers."""
