"""ray-ha's benchmark: `python -m bench [--rounds 5] [--lease 5]` from the repository root.

Alternates rounds of each scenario (plain `ray start` first in every round, so all share the machine's
state), then prints median / min / max per scenario and its ratio to plain `ray start` measured in
the same run, with the target and whether it is met. Times are wall seconds to a GCS that answers a
call made through Ray.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional, Union

from bench import hosts, rayup, scenarios
from bench.rig import OVERRIDES, RETRY, Poller, Round, timing_text

Figure = Union[float, dict]
#: passthrough's target is a ratio to `ray start` in the same round, not an allowance.
PASSTHROUGH_TARGET = 1.02
SCENARIOS: dict[str, Callable[..., Figure]] = {
    "baseline": scenarios.baseline,
    "crash-failover": scenarios.crash_failover,
    "crash-failover-cold": scenarios.crash_failover_cold,
    "graceful-handover": scenarios.graceful_handover,
    "gcs-crash": scenarios.gcs_crash,
    "passthrough": scenarios.passthrough,
    "follower-rejoin": scenarios.follower_rejoin,
    "crash-failover-hosts": hosts.crash_failover_hosts,
    "crash-failover-hosts-unfronted": hosts.crash_failover_hosts_unfronted,
    "follower-rejoin-hosts": hosts.follower_rejoin_hosts,
    "follower-relay-hosts": hosts.follower_relay_hosts,
    "follower-restart-hosts": hosts.follower_restart_hosts,
    "timeline-hosts": hosts.timeline_hosts,
    "timeline-hosts-cut": hosts.timeline_hosts_cut,
    "ray-up-hosts": rayup.ray_up_hosts,
}
#: Scenarios laid out on rig hosts (bench/hosts.py): each round builds its own hosts and poller.
ON_HOSTS = frozenset({"crash-failover-hosts", "crash-failover-hosts-unfronted", "follower-rejoin-hosts",
                      "follower-relay-hosts", "follower-restart-hosts", "timeline-hosts",
                      "timeline-hosts-cut"})
#: scenario -> its limit (s), given the lease and the baseline's median: the issues' targets.
TARGETS: dict[str, Callable[[float, float], float]] = {
    "crash-failover": lambda lease, base: lease + 1.10 * base,
    "crash-failover-cold": lambda lease, base: lease + 1.10 * base,
    "crash-failover-hosts": lambda lease, base: lease + 1.10 * base,
    "crash-failover-hosts-unfronted": lambda lease, base: lease + 1.10 * base,
    "graceful-handover": lambda lease, base: 0.5 + 1.10 * base,
    "gcs-crash": lambda lease, base: 1.0 + 1.10 * base,
    "follower-relay-hosts": lambda lease, base: lease + 1.5 * base,
    "timeline-hosts": lambda lease, base: lease + 1.5 * base,
    "timeline-hosts-cut": lambda lease, base: lease + 1.5 * base,
    "ray-up-hosts": lambda lease, base: lease + 1.5 * base,
}


def run(rounds: int, lease: float, only: list[str], log: Callable[[str], None]) -> dict[str, list[dict]]:
    """Every scenario `rounds` times, alternating; the figures of each round."""
    results: dict[str, list[dict]] = {name: [] for name in only}
    poller = Poller()
    try:
        for i in range(rounds):
            for name in only:
                rnd = (rayup.RayUpRound(lease) if name == "ray-up-hosts" else hosts.HostsRound(lease)
                       if name in ON_HOSTS else Round(poller, lease))
                try:
                    figure = SCENARIOS[name](rnd)
                finally:
                    rnd.close()
                figures = figure if isinstance(figure, dict) else {"total": figure}
                results[name].append(figures)
                log(f"round {i + 1} {name:18} " + " ".join(f"{k} {v:.2f}s" for k, v in figures.items()))
    finally:
        poller.close()
    return results


def table(results: dict[str, list[dict]], lease: float) -> list[str]:
    """Markdown rows: median / min / max, ratio to the baseline's median, target and verdict."""
    base = statistics.median(r["total"] for r in results["baseline"]) if results.get("baseline") else None
    rows = ["| scenario | median (s) | min (s) | max (s) | × baseline | target (s) | met |", "|---|---|---|---|---|---|---|"]
    for name, figures in results.items():
        totals = [f["total"] for f in figures]
        median = statistics.median(totals)
        ratio = f"{median / base:.2f}" if base else "-"
        allowance = TARGETS.get(name)
        if name == "passthrough":
            ratio_median = statistics.median(f["ratio"] for f in figures)
            target, met = f"ratio ≤ {PASSTHROUGH_TARGET}", "yes" if ratio_median <= PASSTHROUGH_TARGET else "no"
        elif allowance is None or base is None:
            target, met = "-", "-"
        else:
            limit = allowance(lease, base)
            if name.startswith("crash-failover") and results.get("ant-ray-tuned"):
                limit = min(limit, statistics.median(r["total"] for r in results["ant-ray-tuned"]))
            target, met = f"≤ {limit:.2f}", "yes" if median <= limit else "no"
        rows.append(f"| {name} | {median:.2f} | {min(totals):.2f} | {max(totals):.2f} | {ratio} | {target} | {met} |")
        for part in [k for k in figures[0] if k != "total"]:
            values = [f[part] for f in figures]
            rows.append(f"| — {part} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} "
                        f"| {_part_target(name, part, statistics.median(values), base)} |")
    return rows


#: (scenario, part) -> its limit as a multiple of the baseline: a pre-warmed takeover serves in half a start.
PART_TARGETS = {("crash-failover", "to serving"): 0.5}


def _part_target(name: str, part: str, median: float, base: Optional[float]) -> str:
    """The ratio, target and verdict cells of a part's row (empty where the part has no target)."""
    factor = PART_TARGETS.get((name, part))
    if factor is None or base is None:
        return " | |"
    verdict = "yes" if median <= factor * base else "no"
    return f"{median / base:.2f} | ≤ {factor:g} × baseline = {factor * base:.2f} | {verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--renew", type=float, help="the launchers' renew deadline (s) [0.6 × lease]")
    parser.add_argument("--retry", type=float, help=f"the launchers' retry period (s) [{RETRY:g}]")
    parser.add_argument("--cost-seconds", type=float, default=60.0,
                        help="how long to watch the launchers' and Redis's cost (0: skip) [60]")
    parser.add_argument("--relay-rounds", type=int, default=3,
                        help="rounds of the relay's cost, relay vs direct, on hosts (0: skip) [3]")
    parser.add_argument("--scale", type=int, default=100, help="standbys in the scale test (0: skip) [100]")
    parser.add_argument("--peer-venv", metavar="DIR",
                        help="a venv with ant-ray-nightly[default]==2.53.0, to measure its Head HA too")
    parser.add_argument("--json", metavar="FILE", help="save every round's figures here (for bench.plot timeline)")
    parser.add_argument("--peer-settings", nargs="+", choices=list(scenarios.PEER_SETTINGS),
                        default=list(scenarios.PEER_SETTINGS), help="which of ant-ray's settings to measure")
    parser.add_argument("--plot", metavar="PNG", help="draw the typical crash failover here (needs matplotlib)")
    args = parser.parse_args()
    OVERRIDES.update(renew=args.renew, retry=args.retry)
    only = args.only if "baseline" in args.only else ["baseline", *args.only]
    if args.peer_venv:
        for settings in args.peer_settings:
            name = f"ant-ray-{settings}"
            SCENARIOS[name] = functools.partial(scenarios.peer_failover, venv=args.peer_venv, settings=settings)
            only.append(name)
    import ray

    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"Ray {ray.__version__}, lease/renew/retry {timing_text(args.lease)}, "
          f"{args.rounds} rounds", flush=True)
    results = run(args.rounds, args.lease, only, lambda line: print(line, flush=True))
    print("\n".join(table(results, args.lease)))
    if args.json:
        label = f"lease/renew/retry {timing_text(args.lease)}"
        Path(args.json).write_text(json.dumps({"label": label, "results": results}, indent=1))
    if args.cost_seconds > 0:
        print("\n".join(costs(args.lease, args.cost_seconds)))
    if args.relay_rounds > 0:
        print("\n".join(hosts.relay_cost(args.lease, args.relay_rounds)), flush=True)
    if args.scale > 0:
        print("\n".join(scale_rows(args.lease, args.scale)))
    if args.plot and results.get("crash-failover"):
        from bench.plot import draw

        print(f"\nplot: {draw(results['crash-failover'], args.lease, Path(args.plot))}")
    return 0


def scale_rows(lease: float, standbys: int) -> list[str]:
    """The scale test's figures as table rows."""
    rnd = Round(None, lease)  # type: ignore[arg-type]  # no GCS to poll: the fake heads start at once
    try:
        figures = scenarios.scale(rnd, standbys)
    finally:
        rnd.close()
    limit = lease + 0.5
    return [f"\n| scale: {standbys} standbys | value | target | met |", "|---|---|---|---|",
            f"| kill -9 of the leader -> next head started (s) | {figures['total']:.2f} | ≤ {limit:g} | "
            f"{'yes' if figures['total'] <= limit else 'no'} |",
            f"| heads at once (overlaps) | {figures['overlaps']:.0f} | 0 | {'yes' if not figures['overlaps'] else 'no'} |",
            f"| Redis CPU % over the run | {figures['Redis CPU % (whole run)']:.2f} | - | - |"]


def costs(lease: float, seconds: float) -> list[str]:
    """The launchers' RSS and CPU (leader and standby) and a standby's Redis commands, as table rows."""
    poller = Poller()
    figures: dict[str, float] = {}
    try:
        for measure in (scenarios.supervisor_cost, scenarios.redis_cost):
            rnd = Round(poller, lease)
            try:
                figures.update(measure(rnd, seconds))
            finally:
                rnd.close()
    finally:
        poller.close()
    targets = {"leader RSS MiB": 40, "standby RSS MiB": 40, "leader CPU %": 1, "standby CPU %": 1,
               "sent per retry period": 1}
    rows = [f"\n| cost over {seconds:g} s | value | target | met |", "|---|---|---|---|"]
    for name, value in figures.items():
        limit = targets.get(name)
        verdict = ("yes" if value <= limit else "no") if limit is not None else "-"
        rows.append(f"| {name} | {value:.2f} | {'≤ ' + str(limit) if limit is not None else '-'} | {verdict} |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
