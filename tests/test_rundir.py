"""The run dir and the log dir: per user, checked like ssh's StrictModes before any use, and files in
them reached only through the checked directory, never through a link. Plus how a lock's holder is told
(the kernel's answer, then ray-ha's command line). A second uid plays the neighbour in test_neighbours.py;
these are the checks one user can show alone."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for
from raylaunch.local.holder import flock_holder, is_ray_ha, judge
from raylaunch.local.rundir import RUN_DIR_ENV, PrivateDir, UnsafeDir, owner_problem, run_dir
from raylaunch.local.state import StateFile, SupervisorState


def test_the_default_run_dir_is_per_user(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_dir({}, euid=0, run=run) == run / "ray-ha", "root: under /run where it is writable"
    assert run_dir({}, euid=0, run=tmp_path / "missing") == Path("/tmp/ray-ha-0")
    assert run_dir({}, euid=1000, run=run) == Path("/tmp/ray-ha-1000"), "other users: their own, in /tmp"
    assert run_dir({RUN_DIR_ENV: str(tmp_path / "mine")}, euid=0, run=run) == tmp_path / "mine"


def test_a_new_run_dir_is_made_mode_0700_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        with PrivateDir.open(tmp_path / "a" / "run", create=True) as made:
            assert os.stat(made.path).st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


@pytest.mark.parametrize("prepare, problem", [
    (lambda d: d.mkdir(mode=0o777) or d.chmod(0o1777), "writable by group or others"),
    (lambda d: d.mkdir() or d.chmod(0o770), "writable by group or others"),
    (lambda d: d.with_name("real").mkdir(mode=0o700) or d.symlink_to("real"), "symlink"),
    (lambda d: d.write_text(""), "symlink or not a directory"),
    (lambda d: d.parent.chmod(0o777) or d.mkdir(mode=0o700), "writable by group or others without the sticky bit"),
])
def test_an_unsafe_run_dir_is_refused_saying_what_to_fix(tmp_path, prepare, problem):
    place = tmp_path / "shared" / "run"
    place.parent.mkdir()
    prepare(place)
    with pytest.raises(UnsafeDir, match=problem) as refused:
        PrivateDir.open(place, create=True)
    assert str(place) in str(refused.value) and RUN_DIR_ENV in str(refused.value)


def test_a_run_dir_in_a_sticky_world_writable_place_like_tmp_is_fine(tmp_path):
    tmp_path.joinpath("tmp").mkdir()
    tmp_path.joinpath("tmp").chmod(0o1777)
    with PrivateDir.open(tmp_path / "tmp" / "run", create=True) as run:
        assert run.names(".pid") == []


def test_a_directory_of_another_uid_is_named(tmp_path):
    problem = owner_problem(os.stat(tmp_path), euid=os.geteuid() + 12345)
    if os.geteuid() == 0:
        assert problem is None, "root's own directory is fine for anyone"
    else:
        assert problem is not None and f"owned by uid {os.geteuid()}" in problem


def test_links_planted_in_the_run_dir_are_never_followed(tmp_path):
    run, target = tmp_path / "run", tmp_path / "precious"
    run.mkdir(mode=0o700)
    target.write_text("keep me\n")
    (run / "a.pid").symlink_to(target)
    (run / "a.json.tmp").symlink_to(tmp_path / "new-path")
    state = StateFile(run, SupervisorState(node="a"), heartbeat=1.0)
    with pytest.raises(OSError) as refused:
        state.claim()
    assert refused.value.errno == errno.ELOOP
    (run / "a.pid").unlink()
    state.claim()
    try:
        state.update(SupervisorState(node="a", role="standby"))
    finally:
        state.close()
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "new-path").exists(), "the planted temp link was replaced, not followed"


@pytest.mark.parametrize("cmdline, ours", [
    (["/usr/bin/python3", "-m", "raylaunch", "start", "--head"], True),
    (["/usr/bin/python3", "-X", "importtime", "-m", "raylaunch", "health"], True),
    (["/opt/venv/bin/python", "/opt/venv/bin/ray-ha", "start", "--block"], True),
    (["/usr/local/bin/ray-ha", "start"], True),
    (["sleep", "1000"], False),
    (["flock", "/tmp/ray-ha/evil.pid", "sleep", "1000"], False),
    (["/usr/bin/python3", "-c", "print('ray-ha')", "ray-ha"], False),
    (["/usr/bin/python3", "-m", "raylaunchx"], False),
])
def test_only_ray_has_own_command_lines_count_as_a_supervisor(cmdline, ours):
    assert is_ray_ha(cmdline) is ours


def test_a_pid_of_nobody_visible_is_never_proven():
    assert not judge(0, os.geteuid()).proven


def test_the_holder_of_an_flock_is_read_from_the_kernel(tmp_path):
    locked = tmp_path / "old.pid"
    locked.write_text("1\n")  # 0.2's layout: the pid's text is not the holder
    holder = subprocess.Popen(["flock", str(locked), sys.executable, "-c", "import sys; print('in'); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"in\n"
        assert flock_holder(os.stat(locked)) == holder.pid, "flock(1) took it and holds it while python runs"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # python shares flock's lock: both must go
        holder.wait()
        wait_for(lambda: flock_holder(os.stat(locked)) is None, 10, what="the lock to go with its holders")
