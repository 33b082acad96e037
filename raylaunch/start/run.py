"""`ray-ha start`: hand over to `ray start`, or run head or follow mode here (--block) or detached."""

from __future__ import annotations

from typing import Optional

from raylaunch.config import Exit, Role
from raylaunch.follow.runtime import FollowMode
from raylaunch.head.runtime import HeadMode
from raylaunch.local.state import local_supervisors
from raylaunch.plan import Plan, StartRequest, make_plan
from raylaunch.start.detach import detach, verdict
from raylaunch.supervisor import Mode, supervise


def run_start(request: StartRequest) -> int:
    """Validate everything, then supervise here or in a detached process (the CLI has already handed a
    non-HA start to `ray start`, before the heavy imports)."""
    plan = make_plan(request)
    following = already_following(plan) if plan.follow else None
    if following is not None:
        print(f"ray-ha: already {following}; nothing changed (to change its options: ray-ha stop, then start)")
        return Exit.OK
    mode: Mode = FollowMode(plan) if plan.follow else HeadMode(plan)
    if "--block" not in request.ray_args:
        return detach(plan, request, mode)
    return supervise(plan, mode)


def already_following(plan: Plan) -> Optional[str]:
    """What this node's running follower is doing, if one runs: starting a follower again (as a new
    leader's autoscaler does under `ray up`) must not touch a worker that follows already."""
    for found in local_supervisors(plan.state_dir, plan.identity.node_name):
        if found.running and found.state is not None and found.state.role == Role.FOLLOWER:
            line, _ = verdict(found.state)
            return line or "following (on its way)"
    return None
