"""The suite's guard that test traffic stays local: GCS addresses published off loopback are found."""

import json

from conftest import KEYS
from testkit.published import published_gcs_addresses, strays


def test_an_outward_gcs_address_in_any_record_is_a_stray(redis_server):
    client = redis_server.client()
    client.set(KEYS.record, json.dumps({"node": "a", "gcs_address": "127.0.0.2:6380", "epoch": 2}))
    client.rpush(KEYS.history, json.dumps({"node": "b", "gcs_address": "192.0.2.2:6380", "epoch": 1}))
    client.set(f"{KEYS.lease}:follower:w1", json.dumps({"node": "w1", "gcs_address": "198.18.0.11:6380"}))
    client.set("unrelated", "not json")
    published = published_gcs_addresses(client.execute_command)
    assert sorted(published) == ["127.0.0.2:6380", "192.0.2.2:6380", "198.18.0.11:6380"]
    assert strays(published) == ["192.0.2.2:6380"]
    client.delete(KEYS.history)  # else this test's own Redis would fail it at teardown, rightly


def test_names_and_other_private_ranges_are_strays():
    assert strays(["localhost:1", "10.0.0.1:6379", "[::1]:6379", "127.255.0.1:1", "198.19.3.4:5"]) == \
        ["10.0.0.1:6379", "localhost:1"]
