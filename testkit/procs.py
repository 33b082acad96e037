"""Processes a test, chaos round or benchmark started: found by a tag in their environment, and killed."""

from __future__ import annotations

import os

import psutil

#: The environment variable that tags everything one test (or chaos round) starts.
TAG_VAR = "RAY_HA_TEST_TAG"


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every living process (not this one, not a zombie) whose environment carries `tag`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(TAG_VAR) == tag \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def describe(proc: psutil.Process) -> str:
    """One line naming a process for a leak report: pid, state, parent, command line."""
    try:
        return f"{proc.pid} {proc.status()} ppid={proc.ppid()} {' '.join(proc.cmdline())[:160]}"
    except psutil.Error as exc:
        return f"{proc.pid} ({type(exc).__name__})"


def kill(proc: psutil.Process) -> None:
    """SIGKILL one process; one already gone is fine."""
    try:
        proc.kill()
    except psutil.Error:
        pass


def kill_tree(pid: int) -> None:
    """kill -9 of `pid` and every descendant, at once, and wait for them."""
    try:
        top = psutil.Process(pid)
        victims = [top, *top.children(recursive=True)]
    except psutil.Error:
        return
    for proc in victims:
        kill(proc)
    psutil.wait_procs(victims, timeout=10)
