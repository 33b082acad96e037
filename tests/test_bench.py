"""The benchmark command: its table logic, and one real round that must run end to end."""

import os
import subprocess
import sys

import pytest

from bench.__main__ import table
from conftest import ROOT


def test_table_compares_each_scenario_with_the_baseline_of_the_same_run():
    results = {"baseline": [{"total": 2.0}, {"total": 1.0}, {"total": 3.0}],
               "gcs-crash": [{"total": 3.0}], "graceful-handover": [{"total": 3.0}],
               "crash-failover": [{"total": 7.0, "detection": 4.5, "takeover": 0.1, "start": 2.4}]}
    rows = {row.split(" | ")[0].lstrip("| "): row for row in table(results, lease=5.0)[2:]}
    assert "| 2.00 | 1.00 | 3.00 | 1.00 |" in rows["baseline"]
    assert "≤ 3.20 | yes" in rows["gcs-crash"], "1 s + 1.10 x the 2.0 s median"
    assert "≤ 2.70 | no" in rows["graceful-handover"], "0.5 s + 1.10 x 2.0 s"
    assert "≤ 7.20 | yes" in rows["crash-failover"] and "| 3.50 |" in rows["crash-failover"]
    relay = table({"baseline": [{"total": 2.0}], "follower-relay-hosts": [{"total": 8.5}]}, lease=5.0)
    assert any(row.startswith("| follower-relay-hosts |") and "≤ 8.00 | no" in row for row in relay), \
        "the relay's target: lease + 1.5 x baseline"
    assert "| 4.50 |" in rows["— detection"]


def test_the_prewarmed_takeover_is_held_to_half_a_start():
    results = {"baseline": [{"total": 2.0}],
               "crash-failover": [{"total": 6.0, "detection": 4.6, "takeover": 0.0, "start": 1.4,
                                   "to serving": 1.4}]}
    rows = table(results, lease=5.0)
    serving = next(row for row in rows if row.startswith("| — to serving"))
    assert serving.endswith("| 0.70 | ≤ 0.5 × baseline = 1.00 | no |")
    assert next(row for row in rows if row.startswith("| — start")).endswith("|  | | |")


@pytest.mark.ray
@pytest.mark.hosts
def test_one_round_runs_and_leaves_nothing(leak_guard):
    result = subprocess.run([sys.executable, "-m", "bench", "--rounds", "1", "--only", "gcs-crash",
                             "crash-failover-hosts", "follower-relay-hosts", "--cost-seconds", "2", "--scale", "5",
                             "--relay-rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "RAY_HA_TEST_TAG": leak_guard})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| gcs-crash |" in result.stdout and "| baseline |" in result.stdout
    assert "| crash-failover-hosts |" in result.stdout, "the host layout (heads on hosts of their own)"
    assert "| follower-relay-hosts |" in result.stdout, "the worker's actor and raylet kept by the relay"
    assert "| tasks/s |" in result.stdout and "| follower CPU % |" in result.stdout, "the relay's cost"
    assert "| standby RSS MiB |" in result.stdout and "| heads at once (overlaps) | 0 | 0 | yes |" in result.stdout


def test_the_plot_draws_the_median_round_not_the_best():
    from bench.plot import typical

    rounds = [{"total": t} for t in (6.9, 6.1, 6.5, 6.3)]
    assert typical(rounds)["total"] == 6.3, "the lower middle of an even count"
    assert typical(rounds[:3])["total"] == 6.5
