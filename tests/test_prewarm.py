"""The pre-warmed standby: which Python runs `ray`, and the warm interpreter's life.

The warm interpreter is run for real; its `ray.scripts.scripts` is a stand-in package on PYTHONPATH
that writes down what it was asked to run, so these tests need no Ray and take no 5 s start.
"""

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from raylaunch.config import ConfigError
from raylaunch.plan import prewarm_python
from raylaunch.proc.prewarm import RESPAWN_EVERY, WarmStart, ray_python

CONSOLE_SCRIPT = "# -*- coding: utf-8 -*-\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"


def script(tmp_path: Path, first_line: str, body: str = CONSOLE_SCRIPT) -> str:
    path = tmp_path / "ray"
    path.write_text(first_line + "\n" + body)
    path.chmod(0o755)
    return str(path)


def test_the_console_scripts_own_python_is_used(tmp_path):
    assert ray_python(script(tmp_path, f"#!{sys.executable}"), (2, 60), None) == sys.executable


def test_env_in_the_shebang_is_resolved_on_path(tmp_path):
    found = ray_python(script(tmp_path, "#!/usr/bin/env python3"), (2, 60), None)
    assert found is not None and os.path.basename(found).startswith("python3")


def test_a_python_wrapper_that_is_not_rays_cli_cannot_be_prewarmed(tmp_path):
    wrapper = script(tmp_path, f"#!{sys.executable}", "import os\nos.execvp('ray', ['ray'])\n")
    assert ray_python(wrapper, (2, 60), (2, 60)) is None


@pytest.mark.parametrize("own, expected", [((2, 60), sys.executable), ((2, 59), None), (None, None)])
def test_a_shim_falls_back_to_this_python_only_with_the_same_ray(tmp_path, own, expected):
    shim = script(tmp_path, "#!/usr/bin/env bash", 'exec pyenv exec ray "$@"\n')
    assert ray_python(shim, (2, 60), own) == expected


def test_an_unreadable_ray_cannot_be_prewarmed(tmp_path):
    assert ray_python(str(tmp_path / "missing"), (2, 60), (2, 60)) is None


@pytest.fixture
def fake_ray_cli(tmp_path):
    """A `ray.scripts.scripts` whose main() records argv, environment, sys.path and the session name its
    head Node would resume (a stand-in `ray._private.node` that reads "nothing persisted"), then exits 7."""
    package = tmp_path / "site" / "ray" / "scripts"
    package.mkdir(parents=True)
    (package.parent / "_private").mkdir()
    for init in (package.parent, package, package.parent / "_private"):
        (init / "__init__.py").write_text("")
    (package.parent / "_private" / "node.py").write_text(textwrap.dedent("""
        def get_session_key_from_storage(host, port, user, password, ssl, config, key):
            return None

        class Node:
            def check_persisted_session_name(self):
                self.redis_address = "r:6379"  # what Ray's does beside the read, and must still do
                return get_session_key_from_storage("r", 6379, None, None, False, "{}", b"session_name")
    """))
    (package / "scripts.py").write_text(textwrap.dedent(f"""
        import json, os, sys
        from ray._private.node import Node
        def main():
            node = Node()
            resumed = node.check_persisted_session_name()
            with open({str(tmp_path / "ran.json")!r}, "w") as out:
                json.dump({{"argv": sys.argv, "env": dict(os.environ), "path": sys.path,
                           "session": resumed.decode() if resumed else None, "redis": node.redis_address}}, out)
            sys.exit(7)
    """))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path / "site"), "EARLY": "1"}
    warms: list[WarmStart] = []

    def make(clock=None, **extra):
        warm = WarmStart(sys.executable, {**env, **extra}, **({"clock": clock} if clock else {}))
        warms.append(warm)
        return warm

    make.ran = tmp_path / "ran.json"
    yield make
    for warm in warms:
        warm.close()


def test_take_runs_rays_cli_in_the_warm_interpreter_with_the_heads_argv_and_env(fake_ray_cli):
    warm = fake_ray_cli()
    warm.ensure()
    pid = warm.proc.pid
    head = warm.take(["ray", "start", "--head", "--block"], {"PATH": os.environ["PATH"], "RAY_HA_EPOCH": "3"})
    assert head is not None and head.pid == pid, "the warm process itself becomes the head"
    assert head.wait(30) == 7, "ray start's exit code is the process's"
    ran = json.loads(fake_ray_cli.ran.read_text())
    assert ran["argv"] == ["ray", "start", "--head", "--block"]
    assert ran["env"]["RAY_HA_EPOCH"] == "3" and "EARLY" not in ran["env"], "the head's env replaces the warm one"
    raylaunch_dir = str(Path(__file__).resolve().parent.parent / "raylaunch")
    assert raylaunch_dir not in ran["path"], "raylaunch's modules must not shadow Ray's imports"
    assert warm.take(["ray"], {}) is None, "a warm interpreter is handed over once"
    assert ran["session"] is None, "without a session name Ray's own read runs"


def test_a_session_name_handed_over_is_the_one_rays_head_node_resumes(fake_ray_cli):
    warm = fake_ray_cli()
    warm.ensure()
    head = warm.take(["ray", "start", "--head"], {"PATH": os.environ["PATH"]}, "session_2026-11-24_00-11-02_1_2")
    assert head is not None and head.wait(30) == 7
    ran = json.loads(fake_ray_cli.ran.read_text())
    assert ran["session"] == "session_2026-11-24_00-11-02_1_2"
    assert ran["redis"] == "r:6379", "only the read is answered; the rest of Ray's method still runs"


def test_an_unused_warm_interpreter_is_gone_after_close(fake_ray_cli):
    warm = fake_ray_cli()
    warm.ensure()
    proc = warm.proc
    warm.close()
    assert proc.poll() is not None and not fake_ray_cli.ran.exists()


def test_the_warm_interpreter_exits_on_eof_when_the_launcher_goes(fake_ray_cli):
    warm = fake_ray_cli()
    warm.ensure()
    warm.proc.stdin.close()  # what a dying launcher's pipe does
    assert warm.proc.wait(30) == 0 and not fake_ray_cli.ran.exists()


def test_a_dead_warm_interpreter_is_replaced_no_faster_than_the_respawn_period(fake_ray_cli, tmp_path):
    broken = tmp_path / "broken" / "ray"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken Ray install')\n")
    now = [100.0]
    warm = fake_ray_cli(clock=lambda: now[0], PYTHONPATH=str(broken.parent))
    warm.ensure()
    first = warm.proc
    assert first.wait(30) != 0
    warm.ensure()
    assert warm.proc is first, "not replaced before the respawn period"
    assert warm.take(["ray"], {}) is None, "a dead one is never handed the head"
    now[0] += RESPAWN_EVERY
    warm.ensure()
    assert warm.proc is not None and warm.proc is not first


@pytest.mark.parametrize("setting", ["auto", "on"])
def test_auto_and_on_prewarm_rays_own_python(tmp_path, setting):
    assert prewarm_python(setting, script(tmp_path, f"#!{sys.executable}"), (2, 60)) == (sys.executable, ())


def test_where_no_python_can_be_told_auto_starts_cold_with_a_warning_and_on_refuses(tmp_path):
    wrapper = script(tmp_path, f"#!{sys.executable}", "import os\nos.execvp('ray', ['ray'])\n")
    python, warnings = prewarm_python("auto", wrapper, (2, 60))
    assert python is None and "starts it cold" in warnings[0]
    with pytest.raises(ConfigError, match="cannot tell which Python runs"):
        prewarm_python("on", wrapper, (2, 60))
    assert prewarm_python("off", wrapper, (2, 60)) == (None, ())
