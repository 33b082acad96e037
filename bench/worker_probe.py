"""After a failover, from the new leader's node: when the follower's actor answers (and with what state),
when a task runs on the follower, and when the new GCS lists the old head's node as dead.

Usage (started before the kill, so Ray's import is off the clock):
  python bench/worker_probe.py NEW_GCS_ADDRESS OLD_HEAD_IP    on the standby's host: a new driver there
  python bench/worker_probe.py auto OLD_HEAD_IP               on the follower's host: a driver connected
                                                              before the kill (through its relay)
Prints "ready"; on a line on stdin (the new GCS answers; for `auto`, right after the kill) connects
if not yet connected and prints one JSON line of CLOCK_MONOTONIC times: connected, actor (or "actor
lost": why), value, pid, task, node, old head dead. The actor is looked up by name each try, so it
answers only once a GCS does.
"""

import json
import sys
import threading
import time

import ray

DEADLINE = 90.0  # s, for each of: the actor, the task, the old head's death


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@ray.remote(num_cpus=0, resources={"pinned": 0.5})
def where() -> str:
    return ray.get_runtime_context().get_node_id()


def watch_old_head(old_ip: str, out: dict) -> None:
    """Poll the node table until every node at `old_ip` is dead; note when."""
    end = now() + DEADLINE
    while now() < end:
        nodes = [n for n in ray.nodes() if n["NodeManagerAddress"] == old_ip]
        if nodes and not any(n["Alive"] for n in nodes):
            out["old head dead"] = now()
            return
        time.sleep(0.1)


def call_actor(out: dict) -> None:
    """Call the follower's detached counter until it answers or is gone for good."""
    end = now() + DEADLINE
    while now() < end:
        try:
            answer = ray.get(ray.get_actor("worker-counter").incr.remote(), timeout=10)
            out.update(actor=now(), value=answer["value"], pid=answer["pid"])
            return
        except (ValueError, ray.exceptions.ActorDiedError) as exc:  # not found, or dead: lost
            out["actor lost"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            return
        except Exception:  # noqa: BLE001 - not reachable yet, whatever Ray says
            time.sleep(0.1)
    out["actor lost"] = f"no answer within {DEADLINE:g}s"


def main() -> None:
    address, old_ip = sys.argv[1], sys.argv[2]
    if address == "auto":
        ray.init("auto", namespace="ray-ha-demo", log_to_driver=False)
    print("ready", flush=True)
    sys.stdin.readline()
    if address != "auto":
        ray.init(address=address, _node_ip_address=address.rsplit(":", 1)[0], namespace="ray-ha-demo",
                 log_to_driver=False)
    out: dict = {"connected": now()}
    watcher = threading.Thread(target=watch_old_head, args=(old_ip, out), daemon=True)
    watcher.start()
    task = where.remote()  # in flight while the actor is looked up
    call_actor(out)
    out["node"] = ray.get(task, timeout=DEADLINE)
    out["task"] = now()
    watcher.join(DEADLINE)
    print(json.dumps(out), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
