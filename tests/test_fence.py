"""The ACL fence against a real Redis: per-epoch GCS users, and an older epoch locked out for good."""

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from raylaunch.store.keyspace import Keyspace
from raylaunch.store.fence import AclFence
from raylaunch.store.errors import RedisRefused
from raylaunch.store.keys import Keys

pytestmark = pytest.mark.redis_versions

KEY = "ray-ha:test:leader"  # the lease key name; its GCS users are <name>:gcs:e<epoch>
KEYS = Keys(KEY)


def login(server, credentials):
    client = redis.Redis(port=server.port, username=credentials.username, password=credentials.password,
                         decode_responses=True, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    client.ping()
    return client


def test_each_epoch_gets_a_user_that_can_use_redis(redis_server):
    fence = AclFence(Keyspace(redis_server.client(), KEYS))
    assert fence.lock_out(1) == []
    gcs = login(redis_server, fence.credentials(1))
    gcs.set("ray-state", "x")
    assert gcs.acl_whoami() == f"{KEY}:gcs:e1"


def test_a_new_epoch_locks_the_old_one_out_and_drops_its_connections(redis_server):
    old, new = AclFence(Keyspace(redis_server.client(), KEYS)), AclFence(Keyspace(redis_server.client(), KEYS))
    old.lock_out(1)
    stale = login(redis_server, old.credentials(1))
    assert new.lock_out(2) == [f"{KEY}:gcs:e1"]
    # its connection was killed, and logging in again fails (redis-py < 4.3 says so as a ResponseError)
    with pytest.raises((redis.ConnectionError, redis.ResponseError)):
        stale.set("ray-state", "written by a zombie")
    with pytest.raises((redis.AuthenticationError, redis.ResponseError), match="invalid username-password"):
        login(redis_server, old.credentials(1))  # and it cannot log in again
    assert redis_server.client().get("ray-state") is None
    login(redis_server, new.credentials(2)).ping()
    assert new.lock_out(2) == [], "raising the same fence again changes nothing"


def test_other_clusters_users_are_left_alone(redis_server):
    AclFence(Keyspace(redis_server.client(), Keys("ray-ha:other:leader"))).lock_out(1)
    assert AclFence(Keyspace(redis_server.client(), KEYS)).lock_out(5) == []
    assert "ray-ha:other:leader:gcs:e1" in redis_server.client().acl_users()


def test_a_user_without_acl_rights_is_refused_at_start(redis_server):
    redis_server.client().execute_command("ACL", "SETUSER", "plain", "on", ">pw", "~*", "&*", "+@all", "-@admin")
    client = redis.Redis(port=redis_server.port, username="plain", password="pw", decode_responses=True)
    with pytest.raises(RedisRefused, match="may not run"):
        AclFence(Keyspace(client, KEYS)).check()
