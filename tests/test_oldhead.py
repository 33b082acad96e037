"""The new leader's helper that marks the previous head node dead (head/oldhead.py), as a campaign watcher.

A fake interpreter stands in for Ray's Python here: it records what it was given and answers as the
helper would. The helper itself runs against a real GCS in tests/hosts/test_ray_on_hosts.py
(test_the_new_leader_marks_the_old_head_dead).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for
from raylaunch.config import Role
from raylaunch.head.oldhead import MARK, OldHeadMarker
from raylaunch.head.steps import Snapshot, Step

#: Writes its argv (after -c MARK) and the line it reads to $OUT_DIR, then prints $ANSWER and sleeps $LINGER.
FAKE_PYTHON = """#!/bin/sh
shift 2
echo "$@" > "$OUT_DIR/argv"
read -r line
printf '%s' "$line" > "$OUT_DIR/stdin"
printf '%s\\n' "$ANSWER"
sleep "${LINGER:-0}"
"""

GCS = "10.0.0.2:6379"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snapshot(role: Role = Role.LEADER, epoch: int = 2, serving: bool = False) -> Snapshot:
    return Snapshot(node="b", role=role, epoch=epoch, leader="b", gcs_address=GCS if serving else None,
                    serving=serving, transitions=1, renew_failures=0, takeover_seconds=None,
                    lease_confirmed_at=None, redis_refused=None, step=Step.LEADING, outcome=None,
                    won_wall=1700000000.25)


@pytest.fixture
def fake(tmp_path: Path):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    made: list[OldHeadMarker] = []

    def make(answer: str, linger: float = 0, python_path: str | None = str(python)) -> OldHeadMarker:
        env = {"PATH": os.environ["PATH"], "OUT_DIR": str(tmp_path), "ANSWER": answer, "LINGER": str(linger)}
        marker = OldHeadMarker(python_path, env, limit=7, clock=clock)
        made.append(marker)
        return marker

    clock = Clock()
    make.clock, make.dir = clock, tmp_path  # type: ignore[attr-defined]
    yield make
    for marker in made:
        marker.close()


def finish(marker: OldHeadMarker, shot: Snapshot) -> None:
    """Tick until the helper has ended and been heard."""
    wait_for(lambda: marker(shot) or marker.proc is None, 20, what="the helper's answer")


def test_the_helper_starts_on_winning_and_gets_the_gcs_address_once_it_serves(fake, caplog):
    caplog.set_level(logging.INFO, "ray-ha")
    marker = fake('{"marked": [["0123456789abcdef", "10.0.0.1"]]}')
    marker(snapshot(serving=False))
    assert marker.proc is not None, "started on winning, so Ray's modules load while the head starts"
    wait_for((fake.dir / "argv").exists, 20, what="the helper's start")
    assert not (fake.dir / "stdin").exists(), "no address before our GCS serves"
    finish(marker, snapshot(serving=True))
    assert (fake.dir / "argv").read_text().split() == ["1700000000250", "7"], "won at (ms), limit (s)"
    assert (fake.dir / "stdin").read_text() == GCS
    assert "marked the previous head node 0123456789ab (10.0.0.1) dead in the new GCS" in caplog.text
    marker(snapshot(serving=True))
    assert marker.proc is None, "once per epoch"


def test_a_new_epoch_marks_again(fake, caplog):
    caplog.set_level(logging.INFO, "ray-ha")
    marker = fake('{"marked": []}')
    finish(marker, snapshot(epoch=2, serving=True))
    marker(snapshot(role=Role.STANDBY, epoch=3))
    finish(marker, snapshot(epoch=4, serving=True))
    assert caplog.text.count("the new GCS lists no previous head node alive") == 2


def test_a_ray_without_the_call_is_said_once(fake, caplog):
    marker = fake('{"unsupported": "AttributeError: no UnregisterNodeRequest"}')
    finish(marker, snapshot(epoch=2, serving=True))
    marker(snapshot(role=Role.STANDBY, epoch=3))
    finish(marker, snapshot(epoch=4, serving=True))
    said = [r.getMessage() for r in caplog.records if "offers no way to mark" in r.getMessage()]
    assert len(said) == 1 and "no UnregisterNodeRequest" in said[0] and "health checks" in said[0]


def test_an_unknown_python_is_said_once_and_starts_nothing(fake, caplog):
    marker = fake("", python_path=None)
    marker(snapshot(serving=True))
    marker(snapshot(epoch=3, serving=True))
    assert marker.proc is None
    assert caplog.text.count("which Python runs Ray is not known") == 1


@pytest.mark.parametrize("answer, said", [('{"error": "UNAVAILABLE: no GCS"}', "UNAVAILABLE: no GCS"),
                                          ("Traceback: it broke", "Traceback: it broke")])
def test_a_failure_is_a_warning_naming_why(fake, caplog, answer, said):
    marker = fake(answer)
    finish(marker, snapshot(serving=True))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"could not mark the previous head node dead: {said}; Ray's health checks will" == warning.getMessage()


def test_standing_by_ends_the_helper(fake):
    marker = fake('{"marked": []}')
    marker(snapshot(serving=False))
    proc = marker.proc
    assert proc is not None and marker.pids() == {proc.pid}
    marker(snapshot(role=Role.STANDBY, epoch=3))
    assert proc.returncode is not None and marker.proc is None and marker.pids() == set()


def test_a_helper_that_overruns_is_killed(fake, caplog):
    marker = fake('{"marked": []}', linger=600)
    marker(snapshot(serving=True))
    proc = marker.proc
    assert proc is not None
    fake.clock.now += 16  # the helper's own limit is 7 s; it is given 10 s more
    marker(snapshot(serving=True))
    assert marker.proc is proc and proc.poll() is None
    fake.clock.now += 2
    marker(snapshot(serving=True))
    assert proc.returncode is not None and marker.proc is None
    assert "marking the previous head node dead took over 17s" in caplog.text


def test_what_the_helper_says_is_logged_as_it_says_it(fake, caplog):
    """The marking is logged while the helper goes on to start Ray's job recovery."""
    caplog.set_level(logging.INFO, "ray-ha")
    marker = fake('{"marked": [["0123456789abcdef", "10.0.0.1"]]}', linger=600)
    marker(snapshot(serving=True))
    wait_for(lambda: marker(snapshot(serving=True)) or "marked the previous head node" in caplog.text, 20,
             what="the marking logged")
    assert marker.proc is not None and marker.proc.poll() is None, "the helper is still running"


def test_the_job_recovery_it_started_is_logged(fake, caplog):
    caplog.set_level(logging.INFO, "ray-ha")
    marker = fake('{"marked": [["0123456789abcdef", "10.0.0.1"]]}\n{"jobs": "asked"}')
    finish(marker, snapshot(serving=True))
    assert "Ray's job recovery on this head: started now" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("tls", ["0", "1"])
def test_the_helper_loads_only_rays_protobuf_modules_unless_tls_needs_all_of_ray(tls):
    """Real Ray's modules: the helper's start (until it waits for the address) loads Ray's generated
    gRPC modules without running all of Ray, except where Ray's own channel is needed (TLS, tokens)."""
    probe = MARK.split("gcs = sys.stdin.readline()")[0] + (
        "\nprint(json.dumps({'all of ray': 'ray._raylet' in sys.modules, 'call': hasattr(pb, 'UnregisterNodeRequest')}))")
    env = {**os.environ, "RAY_USE_TLS": tls}
    result = subprocess.run([sys.executable, "-c", probe, "0", "1"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"all of ray": tls == "1", "call": True}
