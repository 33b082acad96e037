"""The state file's one record: written and read only through SupervisorState, versioned by its schema."""

import json

from raylaunch.local.state import SCHEMA, StateFile, SupervisorState, local_supervisors


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


def test_the_state_file_writes_the_record_with_pid_and_time_and_readers_get_it_typed(tmp_path):
    state = StateFile(tmp_path, SupervisorState(node="a", lease_duration=5.0), heartbeat=1.0)
    state.claim()
    try:
        state.update(SupervisorState(node="a", lease_duration=5.0, role="standby", leader="b", epoch=2))
        [found] = local_supervisors(tmp_path)
        assert found.running and found.fresh()
        assert found.state is not None and found.state.role == "standby" and found.state.leader == "b"
        assert found.state.pid is not None and found.state.updated is not None
    finally:
        state.close()
    assert local_supervisors(tmp_path) == []
