#!/usr/bin/env python3
"""Run the chaos harness for a while and print its figures: `python tests/chaos/run.py --minutes 10`
(`--hosts`: each launcher on its own rig host, real network cuts).

Exit 0 when every rule held (no overlap, rising epochs, leader back in time, nothing left running),
1 otherwise. Each fault is logged as it happens; the figures end with a Markdown table row.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness import BOUND, LEASE, ChaosRun  # noqa: E402
from hostsmode import HostsChaosRun  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--launchers", type=int, default=5)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--hosts", action="store_true",
                        help="each launcher on its own rig host, real cuts instead of the proxy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ray-ha-chaos-") as workdir:
        kind = HostsChaosRun if args.hosts else ChaosRun
        run = kind(Path(workdir), args.launchers, args.minutes * 60, args.seed, log=print)
        print(f"seed {run.seed}, {args.launchers} launchers{' on hosts' if args.hosts else ''}, "
              f"{args.minutes:g} min, lease {LEASE:g}s, bound lease + {BOUND:g}s")
        report = run.run()
    by_kind: dict[str, list[float]] = {}
    for fault, recovery in zip(run.faults, report.recoveries):
        by_kind.setdefault(fault.kind, []).append(recovery)
    print("| fault | injected | worst recovery after its end (s) |")
    print("|---|---|---|")
    for kind, recoveries in sorted(by_kind.items()):
        print(f"| {kind} | {len(recoveries)} | {max(recoveries):.2f} |")
    for problem in report.problems():
        print("PROBLEM:", problem)
    median = statistics.median(report.recoveries) if report.recoveries else 0.0
    print("| launchers | minutes | faults | takeovers | worst recovery (s) | median recovery (s) | overlaps "
          "| epoch errors | leaked |")
    print(f"| {args.launchers} | {args.minutes:g} | {report.faults} | {report.takeovers} | "
          f"{report.worst_recovery:.2f} | {median:.2f} | {len(report.overlaps)} | {len(report.epoch_errors)} | "
          f"{report.leaked} |")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
