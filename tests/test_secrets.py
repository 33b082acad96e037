"""The Redis password never shows: not in logs, state files, status, errors, metrics or what we keep in Redis.

A password-protected Redis; a leader given the password as a `ray start` flag (in the detached,
non-block form, whose supervisor log we read too), a standby given it in the environment with the
HTTP endpoint on; then every surface an operator or a log shipper sees is searched for it. (Command
lines are not among them: Ray itself puts the password on gcs_server's.)
"""

import urllib.request

import pytest

from conftest import FAST_TIMING, RedisServer, free_port, ray_ha, wait_for

PASSWORD = "Pw-0f-the-cluster"
WRONG = "N0t-the-Pw"


@pytest.fixture
def secured(tmp_path):
    server = RedisServer(tmp_path, password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_ray_env, secured):
    return {**fake_ray_env, "RAY_ENABLE_HEAD_HA": "1", "RAY_REDIS_ADDRESS": secured.address}


@pytest.fixture
def stop_all(env, tmp_path):
    """`ray-ha stop` at teardown, even if the test failed, for the detached supervisor."""
    yield
    ray_ha("stop", env=env, cwd=tmp_path)


def test_the_password_appears_nowhere(env, secured, tmp_path, launch_standby, stop_all):
    leader = ray_ha("start", "--head", "--port=0", f"--temp-dir={tmp_path / 'ray'}", "--ha-node-name=a",
                    f"--redis-password={PASSWORD}", *FAST_TIMING, env={**env, "RAY_HA_TEST_NODE": "a"}, cwd=tmp_path)
    assert leader.returncode == 0, leader.stderr
    port = free_port()
    standby = launch_standby(port)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: b"standby" in fetch(url + "/healthz") or b"standby" in fetch(url + "/metrics"), 20,
             what="the standby's endpoint")
    with_pw = {**env, "RAY_REDIS_PASSWORD": PASSWORD}
    seen = {
        "start output": leader.stdout + leader.stderr,
        "status": ray_ha("status", env=with_pw, cwd=tmp_path).stdout,
        "status --json": ray_ha("status", "--json", env=with_pw, cwd=tmp_path).stdout,
        "wrong password error": ray_ha("status", env={**env, "RAY_REDIS_PASSWORD": WRONG}, cwd=tmp_path).stderr,
        "metrics": fetch(url + "/metrics").decode(),
        "healthz": fetch(url + "/healthz").decode(),
        "leader endpoint": fetch(url + "/leader").decode(),
        "supervisor log": (tmp_path / "ray" / "ray-ha" / "a.log").read_text(),
        "standby log": standby.log_path.read_text(),
        "redis keys": " ".join(f"{k}={dump(secured, k)}" for k in secured.client().keys("*")),
    }
    seen.update({f"state file {p.name}": p.read_text() for p in (tmp_path / "run").glob("*")})
    assert "leader" in seen["status"] and '"schema"' in seen["status --json"], "status did run"
    assert "credentials" in seen["wrong password error"]
    for where, text in seen.items():
        assert PASSWORD not in text, f"the password shows in the {where}"
        assert WRONG not in text, f"the wrong password shows in the {where}"


@pytest.fixture
def launch_standby(env, tmp_path):
    from conftest import Launcher

    started = []

    def launch(port):
        launcher = Launcher("b", ["--head", "--port=0", "--block", "--ha-node-name=b", *FAST_TIMING,
                                  f"--ha-http-port={port}", "--ha-http-host=127.0.0.1"],
                            {**env, "RAY_REDIS_PASSWORD": PASSWORD, "RAY_HA_TEST_NODE": "b"}, tmp_path)
        started.append(launcher)
        launcher.wait_log("standing by")
        return launcher
    yield launch
    for launcher in started:
        if launcher.proc.poll() is None:
            launcher.kill_tree()


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        return exc.read()
    except OSError:
        return b""


def dump(server, key):
    client = server.client()
    kind = client.type(key)
    if kind == "string":
        return client.get(key)
    if kind == "list":
        return " ".join(client.lrange(key, 0, -1))
    return kind
