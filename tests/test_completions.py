"""Shell completions: `ray-ha completion SHELL` is click's script for the installed click, and through it
a real bash completes every command and every option the program has now.

No script is committed: click's scripts speak a protocol that changes between click releases (the
bash, zsh and fish scripts of 8.0, 8.1, 8.4 and 8.5 all differ), so a file generated with one click
is wrong for another. Generating it from the installed program cannot go stale; the behavioural
test catches an option that does not complete.
"""

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time

import click
import pytest

from conftest import ROOT
from raylaunch.cli import COMPLETE_VAR, COMPLETION_SHELLS, main

SHIM_ENV = {**os.environ, "PATH": f"{ROOT / 'bin'}{os.pathsep}{os.environ['PATH']}", "RAY_HA_PYTHON": sys.executable}


def ray_ha(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raylaunch", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell", COMPLETION_SHELLS)
def test_completion_prints_the_installed_clicks_script(shell):
    printed = ray_ha("completion", shell)
    generated = ray_ha(**{COMPLETE_VAR: f"{shell}_source"})
    assert printed.returncode == 0 and generated.returncode == 0, printed.stderr + generated.stderr
    assert printed.stdout.split() == generated.stdout.split()  # the same script; whitespace aside
    assert COMPLETE_VAR in printed.stdout and "ray-ha" in printed.stdout


def test_completion_refuses_an_unknown_shell_in_one_line():
    result = ray_ha("completion", "tcsh")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("ray-ha: error: ") and "tcsh" in result.stderr


def declared_options(command: click.Command) -> set[str]:
    """Every option name a command declares (help included), as click's completion offers them."""
    names = {name for param in command.params if isinstance(param, click.Option) and not param.hidden
             for name in (*param.opts, *param.secondary_opts)}
    return names | set(command.get_help_option_names(click.Context(command)))


def complete_in_bash(lines: list[str]) -> list[list[str]]:
    """Run the generated bash script in a real bash for each command line (ending in the word to
    complete); returns the candidates bash's COMPREPLY got for each."""
    calls = "".join(f"COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=()\n"
                    "_ray_ha_completion ray-ha; printf '%s\\n' \"${COMPREPLY[@]}\"; echo '<end>'\n"
                    for line in lines)
    script = f'eval "$(ray-ha completion bash)"\n{calls}'
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=SHIM_ENV, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("<end>\n")[:-1]
    assert len(blocks) == len(lines), out.stdout + out.stderr
    return [[word for word in block.splitlines() if word] for block in blocks]


def test_every_command_and_option_completes_through_the_generated_script(require_bash):
    commands = sorted(main.commands)
    lines = ["ray-ha ''", *[f"ray-ha {name} --" for name in commands]]
    replies = complete_in_bash(lines)
    assert set(replies[0]) == set(commands)
    for name, reply in zip(commands, replies[1:]):
        assert set(reply) == declared_options(main.commands[name]), f"ray-ha {name} --<TAB>"


class InteractiveBash:
    """A real interactive bash on a pseudo-terminal, with ray-ha's completion loaded."""

    def __init__(self) -> None:
        env = {**SHIM_ENV, "PS1": "$ ", "TERM": "dumb", "INPUTRC": "/dev/null"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
        self.type('eval "$(ray-ha completion bash)"\n')
        self.read_until("$ ")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, *needles: str, timeout: float = 20) -> str:
        out, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n in out for n in needles):
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    out += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    break
        return out

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def require_bash():
    if shutil.which("bash") is None:
        pytest.fail("bash is needed for this test")


@pytest.fixture
def bash(require_bash):
    shell = InteractiveBash()
    yield shell
    shell.close()


def test_bash_completes_subcommands(bash):
    bash.type("ray-ha st\t\t")
    out = bash.read_until("start", "status", "stop")
    assert all(word in out for word in ("start", "status", "stop")), out


def test_bash_completes_ha_options_of_start(bash):
    bash.type("ray-ha start --ha-\t\t")
    out = bash.read_until("--ha-lease-duration", "--ha-http-port", "--ha-on-elected")
    assert all(flag in out for flag in ("--ha-lease-duration", "--ha-http-port", "--ha-on-elected")), out
