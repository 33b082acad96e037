"""Says when a GCS answers, through Ray itself: a process that imported Ray before the clock starts.

Reads one GCS address per line on stdin; for each, waits until a TCP connection is accepted there,
then until a GCS client call (internal_kv_get) answers, and prints the CLOCK_MONOTONIC time it did.
The TCP check only keeps Ray's client from blocking 40 s on an address nobody listens on yet.
"""

import socket
import sys
import time

from ray._raylet import GcsClient  # type: ignore[attr-defined]  # imported up front: Ray's import time is not on the measured path


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def answered(address: str) -> float:
    """Poll until the GCS at `address` answers a call; the monotonic time it did."""
    host, port = address.rsplit(":", 1)
    while True:
        while not accepts(host, int(port)):
            time.sleep(0.005)
        try:
            GcsClient(address=address).internal_kv_get(b"ray-ha-bench", None, timeout=2)
            return time.clock_gettime(time.CLOCK_MONOTONIC)
        except Exception:  # noqa: BLE001 - not serving yet, whatever Ray says
            time.sleep(0.005)


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        print(f"{answered(line.strip()):.6f}", flush=True)


if __name__ == "__main__":
    main()
