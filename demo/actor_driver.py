"""A Ray driver for the demo and the end-to-end test: `create` or `get` a detached actor and call it.

Usage: python demo/actor_driver.py GCS_ADDRESS create|get
Prints one JSON line: {"value": <counter after incr>, "session": <Ray session name>}.
"""

import json
import sys

import ray


@ray.remote(max_restarts=-1, max_task_retries=-1)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def main() -> None:
    address, action = sys.argv[1], sys.argv[2]
    ray.init(address=address, _node_ip_address="127.0.0.1", namespace="ray-ha-demo", log_to_driver=False)
    if action == "create":
        actor = Counter.options(name="counter", lifetime="detached").remote()
    else:
        actor = ray.get_actor("counter")
    value = ray.get(actor.incr.remote(), timeout=120)
    session = ray._private.worker.global_worker.node.session_name
    print(json.dumps({"value": value, "session": session}))
    ray.shutdown()


if __name__ == "__main__":
    main()
