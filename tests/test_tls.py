"""`rediss://` with Ray's TLS variables, through a real TLS handshake to a real Redis."""

import pytest

from conftest import KEYS
from raylaunch.store.errors import RedisUnavailable, guarded


from raylaunch.store.keyspace import Keyspace
from raylaunch.store.lease import RedisLease

from raylaunch.store.records import Holder
from raylaunch.store.connect import connect, target_from
from tlsproxy import TLSProxy, make_certs

pytestmark = pytest.mark.redis_versions

KEY = KEYS.lease


@pytest.fixture
def tls_redis(redis_server, tmp_path):
    certs = make_certs(tmp_path)
    proxy = TLSProxy(redis_server.port, certs)
    yield proxy, certs
    proxy.close()


def tls_env(port, certs, **overrides):
    env = {"RAY_REDIS_ADDRESS": f"rediss://127.0.0.1:{port}", "RAY_REDIS_CA_CERT": certs["ca"],
           "RAY_REDIS_CLIENT_CERT": certs["client"], "RAY_REDIS_CLIENT_KEY": certs["client_key"]}
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def test_lease_over_tls_with_client_certificate(tls_redis, redis_server):
    proxy, certs = tls_redis
    target = target_from(tls_env(proxy.port, certs), None, None)
    lease = RedisLease(Keyspace(connect(target, 2.0), KEYS), Holder.me("tls", "h"), 5.0)
    lease.check()
    assert lease.try_acquire().won
    assert redis_server.client().get(KEY) == lease.me.value
    assert lease.renew(1) == 1 and lease.release()
    assert proxy.handshakes_failed == 0
    lease.close()


def test_ca_directory_works_like_a_ca_file(tls_redis, redis_server, tmp_path):
    import shutil
    import subprocess

    proxy, certs = tls_redis
    ca_dir = tmp_path / "cas"
    ca_dir.mkdir()
    shutil.copy(certs["ca"], ca_dir / "ca.pem")
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to hash a CA directory")
    subprocess.run(["openssl", "rehash", str(ca_dir)], check=True, capture_output=True)
    target = target_from(tls_env(proxy.port, certs, RAY_REDIS_CA_CERT=None, RAY_REDIS_CA_PATH=str(ca_dir)),
                         None, None)
    lease = RedisLease(Keyspace(connect(target, 2.0), KEYS), Holder.me("tls", "h"), 5.0)
    lease.check()
    assert lease.try_acquire().won
    assert redis_server.client().get(KEY) == lease.me.value, "the lease was written through the TLS proxy"
    assert lease.release() and redis_server.client().get(KEY) is None
    assert proxy.handshakes_failed == 0
    lease.close()


def test_untrusted_server_is_refused(tls_redis, tmp_path):
    proxy, certs = tls_redis
    (tmp_path / "other").mkdir()
    other = make_certs(tmp_path / "other")
    target = target_from(tls_env(proxy.port, certs, RAY_REDIS_CA_CERT=other["ca"]), None, None)
    with pytest.raises(RedisUnavailable, match="certificate"):
        guarded(lambda: connect(target, 2.0), KEY)  # the first exchange already checks the certificate
