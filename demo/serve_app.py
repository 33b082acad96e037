"""A Ray Serve application for the end-to-end tests and the bench: one replica on the node that deploys it, a
proxy on every node, each answer a JSON line.

Usage: python demo/serve_app.py GCS_ADDRESS|auto ACTION [VERSION]
  deploy VERSION   start Serve (HTTP on port 8000 of every node) and run the app `app` at /, its one replica
                   on this node (a sliver of node:<its IP>; run it on the follower); waits until it runs:
                   {"status": ...}
  watch            stay connected; on a line on stdin, ask Serve's controller for the app's status every
                   0.1 s until it says RUNNING: {"running": CLOCK_MONOTONIC time, "tries": n}
Each request to the app answers {"version", "pid", "count"}: which code, which replica process, and the
replica's own request count (its state).
"""

import json
import os
import sys
import time

import ray
from ray import serve

PORT = 8000
DEADLINE = 120.0  # s, for the controller to answer RUNNING


@serve.deployment(num_replicas=1)
class App:
    def __init__(self, version: str) -> None:
        self.version, self.count = version, 0

    def __call__(self, request) -> dict:
        self.count += 1
        return {"version": self.version, "pid": os.getpid(), "count": self.count}


def deploy(version: str) -> dict:
    serve.start(proxy_location="EveryNode", http_options={"host": "0.0.0.0", "port": PORT})  # noqa: S104
    here = {"num_cpus": 0, "resources": {f"node:{ray.util.get_node_ip_address()}": 0.01}}
    serve.run(App.options(ray_actor_options=here).bind(version), name="app", route_prefix="/")
    return {"status": str(serve.status().applications["app"].status)}


def app_status(controller) -> str:
    """The app's status as the controller says it (raises while the controller cannot answer)."""
    from ray.serve.generated import serve_pb2

    raw = ray.get(controller.get_serve_status.remote("app"), timeout=1)
    status = serve_pb2.StatusOverview.FromString(raw).app_status.status
    return serve_pb2.ApplicationStatusInfo.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[status].name


def watch() -> dict:
    controller = ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    print("ready", flush=True)
    sys.stdin.readline()
    tries, end = 0, time.monotonic() + DEADLINE
    while time.monotonic() < end:
        tries += 1
        try:
            if app_status(controller).endswith("RUNNING"):  # APPLICATION_STATUS_RUNNING
                return {"running": time.clock_gettime(time.CLOCK_MONOTONIC), "tries": tries}
        except Exception:  # noqa: BLE001, S110 - the controller is not back yet, whatever Ray says
            pass
        time.sleep(0.1)
    return {"error": f"the app was not RUNNING within {DEADLINE:g}s"}


def main() -> None:
    address, action = sys.argv[1], sys.argv[2]
    if address == "auto":
        ray.init("auto", namespace="ray-ha-demo", log_to_driver=False)
    else:
        ray.init(address=address, _node_ip_address=address.rsplit(":", 1)[0], namespace="ray-ha-demo",
                 log_to_driver=False)
    print(json.dumps(deploy(sys.argv[3]) if action == "deploy" else watch()), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
