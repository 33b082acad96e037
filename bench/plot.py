"""One PNG timeline of a crash failover: the leaders' tenures as bars, the gap split into its parts.

Needs matplotlib (`pip install -e '.[bench]'`); drawn from the crash-failover round whose total is the
median, so the picture is a typical one rather than the best.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

PARTS = (("detection", "waiting out the lease", "#f4a261"), ("takeover", "lease won → ray start", "#e9c46a"),
         ("start", "ray start → GCS answers", "#2a9d8f"))


def typical(rounds: list[dict]) -> dict:
    """The round whose total is the median (the lower middle one for an even count)."""
    ordered = sorted(rounds, key=lambda r: r["total"])
    median = statistics.median_low([r["total"] for r in ordered])
    return next(r for r in ordered if r["total"] == median)


def draw(rounds: list[dict], lease: float, path: Path) -> Path:
    """Write the timeline of the typical crash failover to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = typical(rounds)
    fig, ax = plt.subplots(figsize=(9, 2.6))
    ax.barh("a (leader)", 3.0, left=-3.0, color="#264653")
    ax.barh("b (standby)", 3.0, left=r["total"], color="#264653", label="leading (GCS answers)")
    left = 0.0
    for key, label, color in PARTS:
        ax.barh("b (standby)", r[key], left=left, color=color, label=f"{label}: {r[key]:.2f} s")
        left += r[key]
    ax.axvline(0, color="crimson", lw=1)
    ax.annotate("kill -9 of a's launcher and tree", (0, 1.35), color="crimson", fontsize=8)
    ax.set_xlabel(f"seconds from the kill (lease {lease:g} s); back after {r['total']:.2f} s")
    ax.set_xlim(-3, r["total"] + 3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: The user-visible milestones of a failover on hosts (follower-relay-hosts), in the order they happen.
MILESTONES = (("lease expired", "lease expired"), ("lease won", "lease won"), ("new GCS answered", "GCS answers"),
              ("w1 raylet reconnected", "worker raylet reconnected"),
              ("w1 driver: actor answered", "worker's actor answers"),
              ("w1 driver: task ran on w1", "task runs on the worker"), ("old head listed dead", "old head DEAD"))
#: With timeline-hosts, the Ray Job's and Serve's too: the new dashboard says RUNNING and its log shows new
#: tasks; Serve's controller, back on the new head, says the app runs.
JOB_MILESTONES = (("job: RUNNING, its driver's new tasks logged", "Ray Job's real state shown"),
                  ("Serve app RUNNING through the new head", "Serve app RUNNING"))
COLORS = ("#e76f51", "#f4a261", "#2a9d8f", "#e9c46a", "#264653", "#1d3557", "#8d99ae", "#9b5de5", "#06d6a0")


def draw_timeline(runs: list[tuple[str, list[dict]]], path: Path,
                  reference: tuple[float, str] = (20.8, "REP-65's mean worker recovery, lease 15/10/2 s")) -> Path:
    """One row per run (its label, its rounds): the median time of each milestone after the kill, the
    figures written under the row, and a published reference time as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.6 + 1.4 * len(runs)))
    labelled = set()
    for row, (label, rounds) in enumerate(runs):
        shown = [(k, n, c) for (k, n), c in zip(MILESTONES + JOB_MILESTONES, COLORS) if k in rounds[0]]
        medians = {key: statistics.median(r[key] for r in rounds) for key, _, _ in shown}
        ax.hlines(row, 0, max(medians.values()), color="#adb5bd", lw=6)
        for key, name, color in shown:
            ax.plot(medians[key], row, "o", color=color, ms=9, label=None if name in labelled else name)
            labelled.add(name)
        parts = [f"{name} {medians[key]:.2f}" for key, name, _ in shown]
        text = " · ".join(parts[:4]) + "\n" + " · ".join(parts[4:])
        ax.annotate(text, (0.2, row), textcoords="offset points", xytext=(0, -24), fontsize=7)
    ax.axvline(0, color="crimson", lw=1)
    ax.axvline(reference[0], color="#6c757d", lw=1, ls="--")
    ax.annotate(reference[1], (reference[0], len(runs) - 0.45), ha="right", fontsize=7, color="#6c757d")
    ax.set_yticks(range(len(runs)), [label for label, _ in runs], fontsize=8)
    ax.set_ylim(-0.8, len(runs) - 0.2)
    ax.set_xlim(-0.5, reference[0] + 1)
    ax.set_xlabel("seconds from kill -9 of every process on the leader's host (median of the rounds)")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    """python -m bench.plot timeline OUT.png RUN.json ...: draw the runs `python -m bench --json` saved."""
    import json

    if len(argv) < 3 or argv[0] != "timeline":
        print("usage: python -m bench.plot timeline OUT.png RUN.json [RUN.json ...]", file=sys.stderr)
        return 2
    runs = []
    for name in argv[2:]:
        saved = json.loads(Path(name).read_text())
        results = saved["results"]
        runs.append((saved["label"], results.get("timeline-hosts") or results["follower-relay-hosts"]))
    print(draw_timeline(runs, Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
