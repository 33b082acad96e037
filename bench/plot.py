"""One PNG timeline of a crash failover: the leaders' tenures as bars, the gap split into its parts.

Needs matplotlib (`pip install -e '.[bench]'`); drawn from the crash-failover round whose total is the
median, so the picture is a typical one rather than the best.
"""

from __future__ import annotations

import statistics
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
