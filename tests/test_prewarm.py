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
from raylaunch.proc.prewarm import RESPAWN_EVERY, NotRaysScript, WarmStart, ray_python

#: pip's (distlib's) `ray` console script after its #! line, as pip writes it.
CONSOLE_SCRIPT = r"""# -*- coding: utf-8 -*-
import re
import sys
from ray.scripts.scripts import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\.pyw|\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

#: uv's.
UV_CONSOLE_SCRIPT = """# -*- coding: utf-8 -*-
import sys
from ray.scripts.scripts import main
if __name__ == "__main__":
    if sys.argv[0].endswith("-script.pyw"):
        sys.argv[0] = sys.argv[0][:-11]
    elif sys.argv[0].endswith(".exe"):
        sys.argv[0] = sys.argv[0][:-4]
    sys.exit(main())
"""

#: pyenv-rehash's prototype shim (pyenv 2.6), for PYENV_ROOT {root} and its pyenv {pyenv}.
PYENV_SHIM = """#!/usr/bin/env bash
set -e
[ -n "$PYENV_DEBUG" ] && set -x

program="${{0##*/}}"

export PYENV_ROOT="{root}"
SHIM_PATH=${{0%/*}}
if [[ $SHIM_PATH != "{root}/shims" ]]; then
  export _PYENV_SHIM_PATH="$SHIM_PATH"
fi
exec "{pyenv}" exec "$program" "$@"
"""

#: A stand-in for pyenv's `which`: the command in $PYENV_ROOT's one version, as pyenv answers.
STAND_IN_PYENV = """#!/bin/sh
[ "$1" = which ] || exit 2
found="$PYENV_ROOT/versions/3.11.7/bin/$2"
[ -x "$found" ] || {{ echo "pyenv: $2: command not found" >&2; exit 127; }}
echo "$found"
"""

#: A site's `ray`: sets its environment, then runs Ray's own console script (here: this interpreter's).
SHELL_WRAPPER = f"""#!/bin/sh
export RAY_TMPDIR=/scratch/ray
exec {sys.executable} -c 'import sys; from ray.scripts.scripts import main; sys.exit(main())' "$@"
"""


def script(tmp_path: Path, first_line: str, body: str = CONSOLE_SCRIPT, name: str = "ray") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{first_line}\n{body}" if first_line else body)
    path.chmod(0o755)
    return str(path)


def pyenv_root(tmp_path: Path, ray_body: str = CONSOLE_SCRIPT) -> Path:
    """A PYENV_ROOT with a stand-in pyenv (libexec/pyenv) and one version whose `ray` has `ray_body`."""
    root = tmp_path / "pyenv-root"
    script(root / "libexec", "", STAND_IN_PYENV.format(), name="pyenv")
    script(root / "versions" / "3.11.7" / "bin", f"#!{sys.executable}", ray_body)
    return root


def shim(tmp_path: Path, root: Path, pyenv: str) -> str:
    """pyenv's shim for `ray` in root/shims, running `pyenv`."""
    return script(root / "shims", "", PYENV_SHIM.format(root=root, pyenv=pyenv))


def not_prewarmable(ray_exe: str, env=os.environ) -> str:
    """Why ray_python refuses `ray_exe` (the test fails if it does not)."""
    with pytest.raises(NotRaysScript) as refused:
        ray_python(ray_exe, env)
    return str(refused.value)


@pytest.mark.parametrize("body", [CONSOLE_SCRIPT, UV_CONSOLE_SCRIPT], ids=["pip", "uv"])
def test_the_console_scripts_own_python_is_used(tmp_path, body):
    assert ray_python(script(tmp_path, f"#!{sys.executable}", body), os.environ) == sys.executable


def test_env_in_the_shebang_is_resolved_on_the_heads_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    ray = script(tmp_path, "#!/usr/bin/env python3")
    assert ray_python(ray, {"PATH": str(bin_dir)}) == str(bin_dir / "python3")
    assert "its #! Python python3 is not on PATH" in not_prewarmable(ray, {"PATH": str(tmp_path / "none")})


def test_a_shell_wrapper_in_front_of_a_python_with_ray_cannot_be_prewarmed(tmp_path):
    why = not_prewarmable(script(tmp_path, "", SHELL_WRAPPER))
    assert "names no Python alone, and it is not a pyenv shim: a wrapper, which pre-warming would bypass" in why


@pytest.mark.parametrize("body", [
    "import os\nos.execvp('ray', ['ray'])\n",
    "import os, sys\nos.environ['RAY_TMPDIR'] = '/scratch'\nfrom ray.scripts.scripts import main\nsys.exit(main())\n",
], ids=["execs-ray", "sets-env-then-rays-cli"])
def test_a_python_script_that_is_not_rays_console_script_cannot_be_prewarmed(tmp_path, body):
    why = not_prewarmable(script(tmp_path, f"#!{sys.executable}", body))
    assert "a Python script but not Ray's console script: a wrapper" in why


def test_a_python_with_arguments_in_the_shebang_is_not_rays_console_script(tmp_path):
    assert "names no Python alone" in not_prewarmable(script(tmp_path, f"#!{sys.executable} -E"))


def test_an_unreadable_ray_cannot_be_prewarmed(tmp_path):
    assert not_prewarmable(str(tmp_path / "missing")) == "cannot read it (No such file or directory)"


def test_a_pyenv_shim_is_resolved_by_its_pyenv_with_its_pyenv_root(tmp_path):
    root = pyenv_root(tmp_path)
    ray = shim(tmp_path, root, str(root / "libexec" / "pyenv"))
    assert ray_python(ray, {**os.environ, "PYENV_ROOT": str(tmp_path / "another")}) == sys.executable


def test_a_bare_pyenv_exec_shim_is_resolved_by_the_pyenv_on_path(tmp_path):
    root = pyenv_root(tmp_path)
    ray = script(tmp_path / "shims", "#!/usr/bin/env bash", 'exec pyenv exec ray "$@"\n')
    env = {"PATH": f"{root / 'libexec'}{os.pathsep}{os.environ['PATH']}", "PYENV_ROOT": str(root)}
    assert ray_python(ray, env) == sys.executable


def test_a_shim_whose_pyenv_cannot_resolve_ray_starts_cold(tmp_path):
    root = pyenv_root(tmp_path)
    (root / "versions" / "3.11.7" / "bin" / "ray").unlink()
    why = not_prewarmable(shim(tmp_path, root, str(root / "libexec" / "pyenv")))
    pyenv = root / "libexec" / "pyenv"
    assert why == f"it is a pyenv shim, and `{pyenv} which ray` failed: pyenv: ray: command not found"


def test_a_shim_whose_pyenv_is_missing_starts_cold(tmp_path):
    root = pyenv_root(tmp_path)
    why = not_prewarmable(shim(tmp_path, root, str(tmp_path / "gone" / "pyenv")))
    assert why.startswith(f"it is a pyenv shim, and `{tmp_path / 'gone' / 'pyenv'} which ray` could not run (")
    bare = script(tmp_path / "bare", "#!/usr/bin/env bash", 'exec pyenv exec ray "$@"\n')
    assert "there is no pyenv on PATH" in not_prewarmable(bare, {"PATH": str(tmp_path / "none")})


def test_a_shim_resolving_to_a_wrapper_starts_cold(tmp_path):
    root = pyenv_root(tmp_path, ray_body="import os\nos.execvp('ray', ['ray'])\n")
    why = not_prewarmable(shim(tmp_path, root, str(root / "libexec" / "pyenv")))
    assert why.startswith(f"it is a pyenv shim for {root / 'versions' / '3.11.7' / 'bin' / 'ray'}, where it is a "
                          "Python script but not Ray's console script")


def test_a_shim_with_a_line_of_its_own_is_a_wrapper(tmp_path):
    root = pyenv_root(tmp_path)
    ray = shim(tmp_path, root, str(root / "libexec" / "pyenv"))
    Path(ray).write_text(Path(ray).read_text().replace("set -e\n", "set -e\nexport RAY_TMPDIR=/scratch\n"))
    assert "names no Python alone, and it is not a pyenv shim" in not_prewarmable(ray)


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
    assert prewarm_python(setting, script(tmp_path, f"#!{sys.executable}"), os.environ) == (sys.executable, ())


def test_a_shell_wrapper_starts_cold_with_a_warning_in_auto_and_is_refused_in_one_line_in_on(tmp_path):
    wrapper = script(tmp_path, "", SHELL_WRAPPER)
    python, warnings = prewarm_python("auto", wrapper, os.environ)
    assert python is None and warnings == (f"--ha-prewarm auto: cannot tell which Python runs {wrapper}: its #! "
                                           "line (#!/bin/sh) names no Python alone, and it is not a pyenv shim: a "
                                           "wrapper, which pre-warming would bypass; a takeover starts it cold",)
    with pytest.raises(ConfigError, match="^--ha-prewarm on: cannot tell which Python runs .*; --ha-prewarm auto "
                                          "starts it cold instead$") as refused:
        prewarm_python("on", wrapper, os.environ)
    assert "\n" not in str(refused.value)
    assert prewarm_python("off", wrapper, os.environ) == (None, ())
