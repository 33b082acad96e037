"""Shell completions: `ray-ha completion SHELL` is click's script for the installed click, and through it
a real bash completes every command and every option the program has now.

No generated script is committed: click's scripts speak a protocol that changes between click releases
(the bash, zsh and fish scripts of 8.0, 8.1, 8.4 and 8.5 all differ), so a file generated with one click
is wrong for another. completions/ holds thin loaders instead, one per shell, for the directories
packagers install vendor completions into: each asks the installed ray-ha for its script. Real bash (with
bash-completion), zsh and fish complete through them, installed as a packager would, at click's floor
(8.0.0) and at its newest release.
"""

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import click
import pytest

from conftest import ROOT, ray_ha
from raylaunch.cli import COMPLETE_VAR, COMPLETION_SHELLS, main
from testkit import shells
from testkit.debian import Unavailable, cache_dir
from testkit.shells import Pty

T = TypeVar("T")
SHIM_ENV = {**os.environ, "PATH": f"{ROOT / 'bin'}{os.pathsep}{os.environ['PATH']}", "RAY_HA_PYTHON": sys.executable}


@pytest.mark.parametrize("shell", COMPLETION_SHELLS)
def test_completion_prints_the_installed_clicks_script(shell):
    printed = ray_ha("completion", shell, env=os.environ)
    generated = ray_ha(env={**os.environ, COMPLETE_VAR: f"{shell}_source"})
    assert printed.returncode == 0 and generated.returncode == 0, printed.stderr + generated.stderr
    assert printed.stdout.split() == generated.stdout.split()  # the same script; whitespace aside
    assert COMPLETE_VAR in printed.stdout and "ray-ha" in printed.stdout


def test_completion_refuses_an_unknown_shell_in_one_line():
    result = ray_ha("completion", "tcsh", env=os.environ)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("ray-ha: error: ") and "tcsh" in result.stderr


def declared_options(command: click.Command) -> set[str]:
    """Every long option name a command declares (help included), as click's completion offers them
    after `--` (a short name such as `history -n` is not offered there)."""
    names = {name for param in command.params if isinstance(param, click.Option) and not param.hidden
             for name in (*param.opts, *param.secondary_opts) if name.startswith("--")}
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


class InteractiveBash(Pty):
    """A real interactive bash on a pseudo-terminal, with ray-ha's completion loaded."""

    def __init__(self) -> None:
        env = {**SHIM_ENV, "PS1": "$ ", "TERM": "dumb", "INPUTRC": "/dev/null"}
        super().__init__([shutil.which("bash"), "--norc", "--noprofile", "-i"], env)
        self.type('eval "$(ray-ha completion bash)"\n')
        self.read_until(lambda out: "$ " in out)


def showing(*needles: str) -> Callable[[str], bool]:
    """Done once the terminal showed every one of `needles`."""
    return lambda out: all(n in out for n in needles)


@pytest.fixture
def require_bash():
    if shutil.which("bash") is None:
        pytest.fail("bash is needed for this test", pytrace=False)


@pytest.fixture
def bash(require_bash):
    shell = InteractiveBash()
    yield shell
    shell.close()


def test_bash_completes_subcommands(bash):
    bash.type("ray-ha st\t\t")
    out = bash.read_until(showing("start", "status", "stop"))
    assert all(word in out for word in ("start", "status", "stop")), out


def test_bash_completes_ha_options_of_start(bash):
    bash.type("ray-ha start --ha-\t\t")
    out = bash.read_until(showing("--ha-lease-duration", "--ha-http-port", "--ha-on-elected"))
    assert all(flag in out for flag in ("--ha-lease-duration", "--ha-http-port", "--ha-on-elected")), out


# --- completions/: the vendor files, installed as a packager would, in real shells at two clicks ------------

#: Each file of completions/ and where a packager puts it under a share directory (/usr/share).
VENDOR_FILES = {"ray-ha": "bash-completion/completions/ray-ha",
                "_ray-ha": "zsh/vendor-completions/_ray-ha",
                "ray-ha.fish": "fish/vendor_completions.d/ray-ha.fish"}
#: click's floor in setup.cfg, and its newest release this Python can install (asked of PyPI when tests run).
CLICK_VERSIONS = ("8.0.0", "newest")
#: Command lines completed with a TAB at their end: the commands, and the --ha- options of start.
LINES = ("ray-ha st", "ray-ha start --ha-")
#: The PATH of a shell without ray-ha: the loaders must then complete nothing of theirs, quietly.
BARE_PATH = "/usr/bin:/bin"
PROMPT = "PROMPT> "


def expected(line: str) -> set[str]:
    """What click completes `line` to: the commands, or the options of its command, starting with its last word."""
    words = line.split()
    names = {n for n, c in main.commands.items() if not c.hidden} if len(words) == 2 else \
        declared_options(main.commands[words[1]])
    return {n for n in names if n.startswith(words[-1])}


def one_line(text: str) -> str:
    """The last non-empty line of a program's output, for a one-line failure."""
    return next((line for line in reversed(text.strip().splitlines()) if line.strip()), "(no output)")


def check(argv: list[str], what: str, timeout: float = 600) -> str:
    """Run `argv`; fail the test in one line, saying `what` could not be done, if it does not succeed."""
    try:
        got = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot {what}: {exc}", pytrace=False)
    if got.returncode != 0:
        pytest.fail(f"cannot {what}: {one_line(got.stderr or got.stdout)}", pytrace=False)
    return got.stdout


def newest_click() -> str:
    """click's newest release that this Python can install, as pip resolves it from PyPI."""
    report = check([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                    "--ignore-installed", "--no-deps", "click"], "ask PyPI for click's newest release")
    return json.loads(report)["install"][0]["metadata"]["version"]


def click_venv_bin(version: str) -> Path:
    """bin/ of a venv with click==`version` and ray-ha installed from this checkout (editable): made once,
    under a lock, in the tests' cache, per checkout, Python and setup.cfg."""
    key = hashlib.sha256(f"{ROOT}\n{sys.base_prefix}\n{sys.version}\n".encode()
                         + (ROOT / "setup.cfg").read_bytes()).hexdigest()[:12]
    venv = fetched(cache_dir) / f"click-{version}-{key}"
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((venv / "made").exists() and (venv / "bin" / "python").exists()):  # a dead link: rebuild
            shutil.rmtree(venv, ignore_errors=True)
            # From the real interpreter, not a venv's (compat's venvs are gone after their run).
            check([os.path.realpath(sys.executable), "-m", "venv", str(venv)], f"make a venv for click {version}")
            check([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"click=={version}",
                   "-e", str(ROOT)], f"install click {version} and ray-ha into {venv}")
            (venv / "made").touch()
    return venv / "bin"


@dataclass(frozen=True)
class ClickVenv:
    version: str
    bin: Path


@pytest.fixture(scope="session", params=CLICK_VERSIONS, ids=lambda v: f"click-{v}")
def click_venv(request: pytest.FixtureRequest) -> ClickVenv:
    """A venv of ray-ha on click's floor, or on its newest release."""
    version = newest_click() if request.param == "newest" else request.param
    return ClickVenv(version, click_venv_bin(version))


def clean(shown: str) -> str:
    """What a terminal showed, as plain lines: escape sequences, bells and carriage returns left out."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[\x07\r]", "", shown)


def listing(shown: str, line: str) -> set[str]:
    """The candidates a shell listed under `line` after a TAB, up to its prompt drawn again; zsh's
    descriptions (` -- ...`) left out."""
    rows = clean(shown).split("\n")
    end = next((i for i, row in enumerate(rows) if i and row.startswith(PROMPT + line)), len(rows))
    return {word for row in rows[1:end] for word in row.split(" -- ")[0].split()}


class VendorShell:
    """A real shell that finds completions/ where a packager puts it: under `share`, its vendor dirs."""

    name = ""

    def __init__(self, tmp: Path) -> None:
        self.share, self.home = tmp / "share", tmp / "home"
        self.home.mkdir()
        for source, target in VENDOR_FILES.items():
            (self.share / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "completions" / source, self.share / target)

    def env(self, path: str) -> dict[str, str]:
        """A clean environment: a home of its own, `share` as the system's data dir, `path` as PATH."""
        return {"HOME": str(self.home), "PATH": path, "TERM": "dumb", "LANG": "C.UTF-8",
                "XDG_DATA_DIRS": str(self.share), "XDG_DATA_HOME": str(self.home / ".local" / "share"),
                "XDG_CONFIG_HOME": str(self.home / ".config")}

    def version(self) -> str:
        raise NotImplementedError

    def start(self, path: str) -> Pty:
        """The interactive shell, its prompt shown."""
        raise NotImplementedError

    def complete(self, line: str, path: str) -> tuple[set[str], str]:
        """The candidates one TAB after `line` lists, and the screen, for a failure."""
        term = self.start(path)
        try:
            term.type(line + "\t")
            shown = term.read_until(lambda out: f"\n{PROMPT}{line}" in clean(out), timeout=15)
        finally:
            term.close()
        return listing(shown, line), shown

    def complete_without_ray_ha(self) -> str:
        """The screen of `ray-ha <TAB>` and a command after it, with no ray-ha on PATH."""
        term = self.start(BARE_PATH)
        try:
            term.type("ray-ha \t\x15echo quiet-$((6*7))\n")  # Ctrl-U clears the line
            return clean(term.read_until(lambda out: "\nquiet-42" in clean(out), timeout=15))
        finally:
            term.close()


class Bash(VendorShell):
    """The machine's bash, a ~/.bashrc sourcing bash-completion (Debian's), which loads vendor files on demand."""

    name = "bash"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.bash = shutil.which("bash") or pytest.fail("bash is needed for this test", pytrace=False)
        script = fetched(shells.bash_completion)
        (self.home / ".bashrc").write_text(f"PS1={shlex.quote(PROMPT)}\n. {shlex.quote(str(script))}\n")
        # One TAB lists what is ambiguous, so the test sees that the first TAB already completes.
        (self.home / ".inputrc").write_text("set show-all-if-ambiguous on\n")

    def version(self) -> str:
        return check([self.bash, "--version"], "run bash").splitlines()[0]

    def start(self, path: str) -> Pty:
        env = {**self.env(path), "INPUTRC": str(self.home / ".inputrc"),
               "BASH_COMPLETION_COMPAT_DIR": str(self.home / "none")}  # not the machine's /etc/bash_completion.d
        term = Pty([self.bash, "--noprofile", "--rcfile", str(self.home / ".bashrc"), "-i"],
                   env, cwd=self.home)
        term.read_until(lambda out: PROMPT in out)
        return term


class Zsh(VendorShell):
    """Debian's zsh with a ~/.zshrc that runs compinit, its fpath holding the vendor dir Debian's has."""

    name = "zsh"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.shell = fetched(shells.zsh)
        root, vendor = shlex.quote(str(self.shell.root)), shlex.quote(str(self.share / "zsh" / "vendor-completions"))
        (self.home / ".zshrc").write_text(
            f"root={root}\n"
            "# the packages' modules and functions, unpacked under $root, where a packaged zsh has them under /\n"
            "module_path=($root${^module_path})\n"
            "fpath=($root${^fpath})\n"
            f"fpath[(r)$root/usr/share/zsh/vendor-completions]={vendor}\n"
            "autoload -Uz compinit && compinit -u\n"
            f"PS1={shlex.quote(PROMPT)}\n")

    def version(self) -> str:
        return self.shell.version()

    def start(self, path: str) -> Pty:
        env = {**self.env(path), **self.shell.env, "ZDOTDIR": str(self.home)}
        term = Pty([str(self.shell.path), "--no-globalrcs", "-i"], env, cwd=self.home)
        term.read_until(lambda out: PROMPT in out)
        return term


class Fish(VendorShell):
    """Debian's fish, asked what it completes with `complete -C`, as its first completion of ray-ha."""

    name = "fish"

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.shell = fetched(shells.fish)

    def version(self) -> str:
        return self.shell.version()

    def run(self, line: str, path: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.shell.path), "-c", f"complete -C {shlex.quote(line)}"],
                              env={**self.env(path), **self.shell.env}, cwd=self.home, capture_output=True,
                              text=True, timeout=60)

    def complete(self, line: str, path: str) -> tuple[set[str], str]:
        got = self.run(line, path)
        return {row.split("\t")[0] for row in got.stdout.splitlines()}, got.stdout + got.stderr

    def complete_without_ray_ha(self) -> str:
        got = self.run("ray-ha ", BARE_PATH)
        return got.stderr + ("" if got.returncode == 0 else f"\nexit status {got.returncode}")


def fetched(fetch: Callable[[], T]) -> T:
    """What `fetch` (of testkit.shells) gives; the test fails in one line where it cannot be had."""
    try:
        return fetch()
    except Unavailable as exc:
        pytest.fail(str(exc), pytrace=False)


SHELLS = {shell.name: shell for shell in (Bash, Zsh, Fish)}


@pytest.fixture(params=SHELLS)
def vendor_shell(request: pytest.FixtureRequest, tmp_path: Path) -> VendorShell:
    """bash, zsh or fish with completions/ installed as a packager would, under the test's own share dir."""
    return SHELLS[request.param](tmp_path)


@pytest.mark.parametrize("line", LINES)
def test_the_vendor_file_completes_from_the_first_tab(vendor_shell: VendorShell, click_venv: ClickVenv, line: str):
    got, screen = vendor_shell.complete(line, f"{click_venv.bin}:{BARE_PATH}")
    assert got == expected(line), (f"{vendor_shell.version()}, click {click_venv.version}: {line}<TAB> gave "
                                   f"{sorted(got)}; the screen:\n{screen}")


def test_the_vendor_file_is_quiet_without_ray_ha(vendor_shell: VendorShell):
    if shutil.which("ray-ha", path=BARE_PATH):
        pytest.fail(f"a ray-ha in {BARE_PATH}: the loaders cannot be tried without one", pytrace=False)
    screen = vendor_shell.complete_without_ray_ha()
    assert not re.search(r"not found|error|warning|no such|ray-ha:", screen, re.I), screen
