"""A Ray driver for the demo and the end-to-end test: `create` or `get` a detached actor and call it.

Usage: python demo/actor_driver.py GCS_ADDRESS|ray://HEAD:10001 create|get|pinned
Prints one JSON line: {"value": <counter after incr>, "session": <Ray session name>}; for `pinned`, a
task that needs the custom resource `pinned` (a follower's) runs and "node" is the node it ran on.
With a GCS address the driver runs on that head's node; with a ray:// address (Ray Client) it may run
on any machine that reaches the head.
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


@ray.remote(num_cpus=0, resources={"pinned": 1})
def where() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
def session_name() -> str:
    return ray._private.worker.global_worker.node.session_name


def main() -> None:
    address, action = sys.argv[1], sys.argv[2]
    if address.startswith("ray://"):
        ray.init(address, namespace="ray-ha-demo")
        session = ray.get(session_name.remote(), timeout=120)  # a client has no node of its own
    else:
        node_ip = address.rsplit(":", 1)[0].strip("[]")  # this machine's head: the driver is on its node
        ray.init(address=address, _node_ip_address=node_ip, namespace="ray-ha-demo", log_to_driver=False)
        session = ray._private.worker.global_worker.node.session_name
    if action == "pinned":
        node = ray.get(where.remote(), timeout=120)
        print(json.dumps({"node": node, "session": session}))
        ray.shutdown()
        return
    if action == "create":
        actor = Counter.options(name="counter", lifetime="detached").remote()
    else:
        actor = ray.get_actor("counter")
    value = ray.get(actor.incr.remote(), timeout=120)
    print(json.dumps({"value": value, "session": session}))
    ray.shutdown()


if __name__ == "__main__":
    main()
