"""GCS and task load from a follow-mode worker's node, through whatever its processes dial (the relay,
or the leader directly): `python bench/relay_load.py TASKS GETS` on the worker's host.

Connects with ray.init("auto") (the address the worker's `ray start` wrote), warms up, prints "go",
then runs TASKS tiny tasks pinned to the worker three times and GETS internal_kv_get calls, and prints
one JSON line: the median tasks/s and the calls' p50 and p99 in ms.
"""

import json
import statistics
import sys
import time

import ray
from ray.experimental import internal_kv


@ray.remote(num_cpus=1, resources={"pinned": 0.001})
def tiny() -> int:
    return 1


def main() -> None:
    tasks, gets = int(sys.argv[1]), int(sys.argv[2])
    ray.init("auto", log_to_driver=False)
    ray.get([tiny.remote() for _ in range(100)])  # the worker process is up
    internal_kv._internal_kv_put(b"ray-ha-bench", b"x" * 100)
    print("go", flush=True)
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        ray.get([tiny.remote() for _ in range(tasks)])
        rates.append(tasks / (time.perf_counter() - started))
    latencies = []
    for _ in range(gets):
        started = time.perf_counter()
        internal_kv._internal_kv_get(b"ray-ha-bench")
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    print(json.dumps({"tasks/s": statistics.median(rates), "kv p50 ms": 1000 * latencies[len(latencies) // 2],
                      "kv p99 ms": 1000 * latencies[int(len(latencies) * 0.99)]}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
