"""`ray-ha start`: hand over to `ray start`, or run head or follow mode here (--block) or detached."""

from __future__ import annotations

from raylaunch.follow.runtime import FollowMode
from raylaunch.head.runtime import HeadMode
from raylaunch.plan import StartRequest, make_plan
from raylaunch.start.detach import detach
from raylaunch.start.passthrough import pass_through_unless_ha
from raylaunch.supervisor import Mode, supervise


def run_start(request: StartRequest) -> int:
    """Decide passthrough or HA, validate everything, then supervise here or in a detached process."""
    pass_through_unless_ha(request.ray_args, request.env_file, request.follow)
    plan = make_plan(request)
    mode: Mode = FollowMode(plan) if plan.follow else HeadMode(plan)
    if "--block" not in request.ray_args:
        return detach(plan, request, mode)
    return supervise(plan, mode)
