"""The advised Redis ACL (docs/redis-acl.md) against real Redis 6.2 and 7: a cluster's candidates, followers,
`status`, `switchover` and Ray's own GCS work under it, and another tenant's user cannot reach the cluster.

The ACL lines are read from the doc, so the doc and the tests cannot drift. Redis's `default` user needs a
password only the test knows, so nothing works by accident: every client of the cluster logs in as its user.
"""

from __future__ import annotations

import inspect
import json
import re
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from conftest import FAST_TIMING, LaunchPad, Launcher, RedisServer, ray_ha, tagged_processes, wait_for
from raylaunch.store.keys import Keys
from test_e2e_ray import drive, ray_pad

pytestmark = pytest.mark.redis_versions

DOC = Path(__file__).resolve().parent.parent / "docs" / "redis-acl.md"
NS = "acl-test"
NAMESPACE = {"RAY_external_storage_namespace": NS}
KEYS = Keys(f"ray-ha:{NS}:leader")
GCS_TABLE = f"RAY{NS}@KV"
USER, PASSWORD, ADMIN_PASSWORD = "ray-acl-test", "cluster-pw", "admin-pw"
CREDENTIALS = [f"--redis-username={USER}", f"--redis-password={PASSWORD}"]
TENANT = {"tenant": "other-app", "tenant-password": "tenant-pw", "prefix": "app:"}
#: The refusals ray-ha expects and passes over: its look for a lease on the layout before 0.2, and (6.2,
#: which knows CLIENT but not SETINFO) redis-py's CLIENT SETINFO at connect.
EXPECTED_DENIALS = {("key", KEYS.legacy_lease), ("command", "client")}


def advised(block: str, **values: str) -> list[list[str]]:
    """The commands of the ```redis <block>``` block of docs/redis-acl.md, its <placeholders> filled in."""
    found = re.search(rf"^```redis {block}\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert found, f"{DOC} has no ```redis {block} block"
    text = re.sub(r"<([\w-]+)>", lambda m: values[m.group(1)], found.group(1))
    return [line.split() for line in text.splitlines() if line.strip()]


def apply(admin: redis.Redis, block: str, **values: str) -> None:
    """Run one block of the doc as the admin (the cluster's blocks get the cluster's user and namespace)."""
    for command in advised(block, **{"user": USER, "password": PASSWORD, "ns": NS, **values}):
        admin.execute_command(*command)


def denials(admin: redis.Redis, user: str = USER) -> set[tuple[str, str]]:
    """What Redis refused `user` so far (ACL LOG), as (reason, object) pairs."""
    return {(entry["reason"], entry["object"]) for entry in admin.acl_log() if entry["username"] == user}


def users_connected(admin: redis.Redis) -> set[str]:
    """The users of every client connected now, but the admin's own."""
    return {client["user"] for client in admin.client_list() if client["user"] != "default"}


@pytest.fixture
def acl_redis(tmp_path: Path, make_redis) -> Iterator[RedisServer]:
    """A Redis whose default user needs the admin's password, with the advised user of the cluster."""
    server = make_redis(tmp_path, password=ADMIN_PASSWORD).start()
    try:
        apply(server.client(), "cluster")
        yield server
    finally:
        server.stop()


@pytest.fixture
def pad(acl_redis: RedisServer, fake_ray_env: dict[str, str], tmp_path: Path) -> Iterator[LaunchPad]:
    """Launchers of the cluster (fake ray, fast timings), logging in as the cluster's user."""
    launchers = LaunchPad({**fake_ray_env, **NAMESPACE}, tmp_path, acl_redis.address, FAST_TIMING)
    yield launchers
    launchers.close()


def candidate(pad: LaunchPad, name: str, *args: str) -> Launcher:
    return pad(name, "--port=0", *CREDENTIALS, *args)


def status(env: dict[str, str]) -> dict[str, Any]:
    result = ray_ha("status", "--json", *CREDENTIALS, env=env)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def serving_leader(env: dict[str, str], epoch: int) -> str | None:
    """The node whose GCS serves in `epoch`, per `ray-ha status`; None until there is one."""
    leader = status(env)["leader"]
    return leader["node"] if leader and leader["epoch"] == epoch and leader["gcs_address"] else None


def test_candidates_lead_fail_over_switch_over_and_report_under_the_advised_acl(pad, acl_redis, fake_ray_env,
                                                                                leak_guard):
    env = {**fake_ray_env, **NAMESPACE, "RAY_REDIS_ADDRESS": acl_redis.address}
    admin = acl_redis.client()
    a = candidate(pad, "a")
    a.wait_log("GCS serving")
    standbys = {name: candidate(pad, name) for name in "bc"}
    for launcher in standbys.values():
        launcher.wait_log("standing by; leader is a")
    view = status(env)
    assert view["leader"]["node"] == "a" and sorted(s["node"] for s in view["standbys"]) == ["b", "c"]

    a.kill_tree()
    new = wait_for(lambda: serving_leader(env, 2), 10, 0.1, what="a takeover")
    other = "c" if new == "b" else "b"
    moved = ray_ha("switchover", "--to", other, "--timeout", "20", *CREDENTIALS, env=env)
    assert moved.returncode == 0 and f"{other} leads (epoch 3)" in moved.stdout, moved.stdout + moved.stderr
    assert serving_leader(env, 3) == other
    assert users_connected(admin) == {USER}, "every client of the cluster logs in as its user"
    assert denials(admin) <= EXPECTED_DENIALS
    for launcher in standbys.values():
        launcher.proc.send_signal(signal.SIGTERM)
        assert launcher.wait(20) == 0
    assert tagged_processes(leak_guard) == []


def test_a_follower_follows_under_the_advised_acl(pad, acl_redis, fake_ray_env, tmp_path, leak_guard):
    env = {**fake_ray_env, **NAMESPACE, "RAY_REDIS_ADDRESS": acl_redis.address}
    worker = Launcher("f", ["--ha-follow", "--ha-relay=off", "--ha-node-name=f", *FAST_TIMING, *CREDENTIALS,
                            "--block"], {**env, "RAY_HA_TEST_NODE": "f"}, tmp_path)
    pad.started.append(worker)  # killed at teardown if still running
    a = candidate(pad, "a")
    worker.wait_log("joining leader a (epoch 1)")
    b = candidate(pad, "b")
    b.wait_log("standing by; leader is a")
    a.kill_tree()
    worker.wait_log("leader is now b (epoch 2)")
    wait_for(lambda: [(f["node"], f["epoch"]) for f in status(env)["followers"]] == [("f", 2)], 5,
             what="status listing f as following epoch 2")
    assert denials(acl_redis.client()) <= EXPECTED_DENIALS
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert acl_redis.client().get(KEYS.follower("f")) is None, "the follower removed its record"


def test_the_acl_fence_is_refused_at_start_without_its_extra_permissions_and_fences_with_them(pad, acl_redis):
    refused = candidate(pad, "x", "--ha-fence=acl")
    assert refused.wait() == 2 and "may not run what ray-ha needs" in refused.log()
    apply(acl_redis.client(), "fence")
    a = candidate(pad, "a", "--ha-fence=acl")
    a.wait_log("GCS serving")
    b = candidate(pad, "b", "--ha-fence=acl")
    b.wait_log("standing by; leader is a")
    a.kill_tree()
    b.wait_log(f"older GCS users removed: {KEYS.gcs_user_prefix}1")  # ACL SETUSER off, CLIENT KILL, ACL DELUSER
    b.wait_log("GCS serving")
    assert [u for u in acl_redis.client().acl_users() if u.startswith(KEYS.name)] == [f"{KEYS.gcs_user_prefix}2"]


def test_min_replicas_leads_with_its_extra_permission(pad, acl_redis, make_redis, tmp_path):
    (tmp_path / "replica").mkdir()
    replica = make_redis(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(acl_redis.port),
                                                           "--masterauth", ADMIN_PASSWORD]).start()
    try:
        wait_for(lambda: acl_redis.client().info("replication")["connected_slaves"] == 1, 10, what="the replica")
        apply(acl_redis.client(), "min-replicas")
        leader = candidate(pad, "a", "--ha-min-replicas=1")
        leader.wait_log("GCS serving")
        assert denials(acl_redis.client()) <= EXPECTED_DENIALS
    finally:
        replica.stop()


#: RESP2 where redis-py can be told (4.4, the floor, speaks only RESP2 and has no such argument).
RESP2 = {"protocol": 2} if "protocol" in inspect.signature(redis.Redis.__init__).parameters else {}


def tenant_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, username=TENANT["tenant"], password=TENANT["tenant-password"],
                       decode_responses=True, **RESP2)


#: What another tenant might try on the cluster's keys and channel, or on everyone's data at once.
TENANT_TRIES = [
    ("GET", KEYS.lease), ("SET", KEYS.lease, "mine"), ("DEL", KEYS.epoch), ("TYPE", KEYS.record),
    ("HGET", GCS_TABLE, "@namespace_session:session_name"), ("HSET", GCS_TABLE, "f", "v"), ("HGETALL", GCS_TABLE),
    ("EVAL", "return redis.call('GET', KEYS[1])", "1", KEYS.record),
    ("SORT", "app:list", "BY", "nosort", "GET", KEYS.lease + ":*"),  # reads other keys on 6.2 without -@dangerous
    ("SUBSCRIBE", KEYS.channel), ("PSUBSCRIBE", "*"), ("PUBLISH", KEYS.channel, "x"),
    ("FLUSHALL",), ("FLUSHDB",), ("SWAPDB", "0", "1"), ("KEYS", "*"), ("CLIENT", "LIST"), ("CONFIG", "GET", "*"),
]


def test_another_tenants_user_cannot_reach_the_clusters_keys_or_channel(acl_redis):
    admin = acl_redis.client()
    admin.set(KEYS.record, "the leader's record")
    admin.hset(GCS_TABLE, "@namespace_session:session_name", "session_x")
    apply(admin, "tenant", **TENANT)
    tenant = tenant_client(acl_redis)
    tenant.rpush("app:list", "record")
    for attempt in TENANT_TRIES:
        with pytest.raises(redis.exceptions.NoPermissionError):
            tenant.execute_command(*attempt)
    with pytest.raises(redis.ResponseError, match="can't access"):  # a key named inside a script only
        tenant.eval(f"return redis.call('GET', '{KEYS.record}')", 0)
    assert admin.get(KEYS.record) == "the leader's record" and admin.hlen(GCS_TABLE) == 1, "all still there"
    assert KEYS.record in tenant.scan(count=1000)[1], "what an ACL does not hide: key names"
    cluster = redis.Redis(port=acl_redis.port, username=USER, password=PASSWORD, decode_responses=True, **RESP2)
    with pytest.raises(redis.exceptions.NoPermissionError):
        cluster.get("app:list")


def test_a_tenant_kept_out_only_by_its_key_pattern_can_still_wipe_the_cluster(acl_redis, redis_version):
    """Why the tenant's line says -@dangerous: keyless commands reach every tenant's data."""
    admin = acl_redis.client()
    admin.set(KEYS.record, "the leader's record")
    (line,) = advised("tenant", **TENANT)
    admin.execute_command(*[rule for rule in line if rule != "-@dangerous"])
    tenant = tenant_client(acl_redis)
    tenant.rpush("app:list", "record")
    sort = ["SORT", "app:list", "BY", "nosort", "GET", KEYS.lease + ":*"]
    if redis_version == "6.2":
        assert tenant.execute_command(*sort) == ["the leader's record"], "6.2 checks no key SORT GET reads"
    else:
        with pytest.raises(redis.ResponseError, match="denied due to insufficient ACL permissions"):
            tenant.execute_command(*sort)
    assert tenant.flushall() and admin.get(KEYS.record) is None, "FLUSHALL needs no key access"


@pytest.mark.ray
def test_a_real_head_and_its_takeover_resume_the_session_under_the_advised_acl(acl_redis, leak_guard, tmp_path):
    """Ray 2.60's GCS keeps and reloads the cluster's state as the cluster's user: the GCS's part of the ACL."""
    admin = acl_redis.client()
    gcs_address = lambda: json.loads(admin.get(KEYS.record))["gcs_address"]  # noqa: E731
    launches = ray_pad(acl_redis.address, leak_guard, tmp_path)
    start = next(launches)
    try:
        leader = start("a", *CREDENTIALS, env=NAMESPACE)
        leader.wait_log("GCS serving", timeout=90)
        standby = start("b", *CREDENTIALS, env=NAMESPACE)
        standby.wait_log("standing by; leader is a", timeout=60)
        before = drive(start.env, gcs_address(), "create")
        assert admin.hget(GCS_TABLE, "@namespace_session:session_name") == before["session"]
        leader.kill_tree()
        standby.wait_log("GCS serving", timeout=90)
        after = drive(start.env, gcs_address(), "get")
        assert after["session"] == before["session"] and after["value"] >= 1, "the session and its actor, resumed"
        assert users_connected(admin) == {USER}, "the GCS logs in as the cluster's user"
        assert denials(admin) <= EXPECTED_DENIALS
        standby.proc.send_signal(signal.SIGTERM)
        assert standby.wait(60) == 0
    finally:
        next(launches, None)  # the pad's own clean-up
    assert tagged_processes(leak_guard) == []


def test_the_operators_commands_work_under_the_advised_acl(pad, acl_redis, fake_ray_env, leak_guard):
    """pause, resume, history, status --json and a planned switchover and its cancel, as the cluster's user."""
    env = {**fake_ray_env, **NAMESPACE, "RAY_REDIS_ADDRESS": acl_redis.address}
    admin = acl_redis.client()
    a = candidate(pad, "a", "--ha-priority=2")
    a.wait_log("GCS serving")
    candidate(pad, "b").wait_log("standing by; leader is a")
    for args in (["pause", "--for", "1h"], ["switchover", "--at", "+1h"], ["switchover", "--cancel"], ["resume"],
                 ["history", "--json"]):
        result = ray_ha(*args, *CREDENTIALS, env=env)
        assert result.returncode == 0, f"{args}: {result.stderr}"
    assert status(env)["pause"] is None
    a.kill_tree()
    wait_for(lambda: serving_leader(env, 2), 30, 0.1, what="b serving in epoch 2")
    assert json.loads(ray_ha("history", "--json", *CREDENTIALS, env=env).stdout)[0]["previous"]["reason"] == "expired"
    assert denials(admin) <= EXPECTED_DENIALS, "nothing of ours was refused"
