"""The state file's one record: written and read only through SupervisorState, versioned by its schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from raylaunch.local.state import SCHEMA, AlreadyRunning, StateFile, SupervisorState, local_supervisors


def test_a_record_survives_the_round_trip_and_unknown_fields_are_ignored():
    state = SupervisorState(node="a", role="leader", epoch=3, serving=True, gcs_address="h:1", transitions=2)
    data = json.loads(state.to_json())
    assert data["schema"] == SCHEMA
    assert SupervisorState.from_json(json.dumps({**data, "added_later": 1})) == state


def test_another_schema_or_garbage_reads_as_no_record():
    data = json.loads(SupervisorState(node="a").to_json())
    assert SupervisorState.from_json(json.dumps({**data, "schema": SCHEMA + 1})) is None
    assert SupervisorState.from_json("not json") is None
    assert SupervisorState.from_json("[1, 2]") is None
    assert SupervisorState.from_json(json.dumps({"role": "leader"})) is None, "no node: not a record"


#: A stand-in supervisor: claims node argv[2]'s files in argv[1], writes one state, holds until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from raylaunch.local.state import StateFile, SupervisorState
state = StateFile(Path(sys.argv[1]), SupervisorState(node=sys.argv[2], lease_duration=5.0), heartbeat=1.0)
state.claim()
state.update(SupervisorState(node=sys.argv[2], lease_duration=5.0, role="standby", leader="b", epoch=2))
print("ready", flush=True)
sys.stdin.read()
state.close()
"""


@pytest.fixture
def hold(tmp_path):
    """Start a stand-in supervisor for a node, in a process whose command line is `python .../NAME`."""
    started = []

    def start(directory: Path, node: str, name: str = "ray-ha") -> subprocess.Popen:
        script = tmp_path / "bin" / name
        script.parent.mkdir(exist_ok=True)
        script.write_text(HOLDER)
        proc = subprocess.Popen([sys.executable, str(script), str(directory), node], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_the_state_file_writes_the_record_and_readers_find_its_holder_from_the_kernel(tmp_path, hold):
    run = tmp_path / "run"
    holder = hold(run, "a")
    (run / "a.pid").write_text("1\n")  # the text lies: readers never take a pid from it
    [found] = local_supervisors(run)
    assert found.running and found.fresh() and found.pid == holder.pid and found.doubt is None
    assert found.state is not None and found.state.role == "standby" and found.state.leader == "b"
    assert found.state.pid == holder.pid and found.state.updated is not None
    holder.stdin.close()
    assert holder.wait(10) == 0
    assert local_supervisors(run) == [], "a supervisor that closes removes its files"


def test_a_killed_supervisors_files_read_as_stale_not_running(tmp_path, hold):
    run = tmp_path / "run"
    holder = hold(run, "a")
    holder.kill()
    holder.wait()
    [found] = local_supervisors(run)
    assert (found.running, found.pid, found.doubt) == (False, None, None), "the kernel dropped the lock"


def test_a_holder_that_is_not_ray_ha_is_named_but_never_taken_for_a_supervisor(tmp_path, hold):
    run = tmp_path / "run"
    holder = hold(run, "a", name="not-ray-ha.py")
    [found] = local_supervisors(run)
    assert not found.running and found.pid == holder.pid
    assert found.doubt is not None and "not ray-ha" in found.doubt


def test_a_second_claim_for_the_node_is_refused_naming_the_holder(tmp_path, hold):
    run = tmp_path / "run"
    holder = hold(run, "a")
    second = StateFile(run, SupervisorState(node="a"), heartbeat=1.0)
    with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
        second.claim()
