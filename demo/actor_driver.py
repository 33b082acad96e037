"""A Ray driver for the demo and the end-to-end tests: detached actors and tasks, each answer a JSON line.

Usage: python demo/actor_driver.py GCS_ADDRESS|ray://HEAD:10001|auto ACTION
  create | get      a detached counter anywhere: {"value": <counter after incr>, "session": ...}
  pinned            a task that needs the custom resource `pinned` (a follower's): {"node": <where it ran>, ...}
  worker-create | worker-get
                    a detached counter on the follower (half of `pinned`): {"value", "pid", "node", "session"}
  head-create | head-get
                    a detached counter on the head (its node:__internal_head__ resource, as Serve's controller
                    asks): restarted on the new head once the old head's node is dead
  serve             stay connected; run each action read from stdin and answer it (a driver that must
                    live through a failover)
With a GCS address the driver runs on that node; with `auto` on this node's Ray (as `ray.init("auto")`,
through a follower's relay on a worker node); with a ray:// address (Ray Client) on any machine that
reaches the head.
"""

import json
import os
import sys

import ray


@ray.remote(max_restarts=-1, max_task_retries=-1)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> dict:
        self.n += 1
        return {"value": self.n, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


@ray.remote(num_cpus=0, resources={"pinned": 0.5})
def where() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
def session_name() -> str:
    return ray._private.worker.global_worker.node.session_name


def connect(address: str) -> str:
    """ray.init for the kind of address given; the session's name."""
    if address.startswith("ray://"):
        ray.init(address, namespace="ray-ha-demo")
        return ray.get(session_name.remote(), timeout=120)  # a client has no node of its own
    if address == "auto":
        ray.init("auto", namespace="ray-ha-demo", log_to_driver=False)
    else:
        node_ip = address.rsplit(":", 1)[0].strip("[]")  # this machine's head: the driver is on its node
        ray.init(address=address, _node_ip_address=node_ip, namespace="ray-ha-demo", log_to_driver=False)
    return ray._private.worker.global_worker.node.session_name


def act(action: str) -> dict:
    if action == "pinned":
        return {"node": ray.get(where.remote(), timeout=120)}
    if action == "create":
        actor = Counter.options(name="counter", lifetime="detached").remote()
    elif action == "worker-create":
        actor = Counter.options(name="worker-counter", lifetime="detached", num_cpus=0,
                                resources={"pinned": 0.5}, max_restarts=0,
                                max_task_retries=0).remote()
    elif action == "head-create":
        actor = Counter.options(name="head-counter", lifetime="detached", num_cpus=0,
                                resources={"node:__internal_head__": 0.01}).remote()
    else:
        actor = ray.get_actor({"worker-get": "worker-counter", "head-get": "head-counter"}.get(action, "counter"))
    return ray.get(actor.incr.remote(), timeout=120)


def main() -> None:
    address, action = sys.argv[1], sys.argv[2]
    session = connect(address)
    if action != "serve":
        print(json.dumps({**act(action), "session": session}))
    else:
        for line in sys.stdin:
            try:
                answer = {**act(line.strip()), "session": session}
            except Exception as exc:  # the caller decides; the driver stays
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
