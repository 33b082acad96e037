"""Shell completions: the committed files are what click generates now, and a real bash completes."""

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

SHELLS = ("bash", "zsh", "fish")
REGENERATE = "for sh in bash zsh fish; do _RAY_HA_COMPLETE=${sh}_source ray-ha > completions/ray-ha.$sh; done"


@pytest.mark.parametrize("shell", SHELLS)
def test_committed_completion_is_current(shell):
    fresh = subprocess.run([sys.executable, "-m", "raylaunch"], env={**os.environ, "_RAY_HA_COMPLETE": f"{shell}_source"},
                           capture_output=True, text=True, timeout=30, check=True).stdout
    committed = (ROOT / "completions" / f"ray-ha.{shell}").read_text()
    assert committed == fresh, f"completions/ray-ha.{shell} is stale; regenerate with: {REGENERATE}"


class InteractiveBash:
    """A real interactive bash on a pseudo-terminal, with ray-ha's completion sourced."""

    def __init__(self) -> None:
        env = {**os.environ, "PATH": f"{ROOT / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "RAY_HA_PYTHON": sys.executable, "PS1": "$ ", "TERM": "dumb", "INPUTRC": "/dev/null"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
        self.type(f"source {ROOT / 'completions' / 'ray-ha.bash'}\n")
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
def bash():
    if shutil.which("bash") is None:
        pytest.fail("bash is needed for this test")
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
