"""The signal-safe stop flag: set from a real signal handler, it wakes a waiting loop at once."""

import os
import signal
import threading
import time

from raylaunch.proc.stopflag import StopFlag


def test_wait_times_out_when_not_set():
    flag = StopFlag()
    t0 = time.monotonic()
    assert flag.wait(0.2) is False
    assert 0.15 < time.monotonic() - t0 < 1.0
    flag.close()


def test_signal_handler_wakes_the_waiter_at_once():
    flag = StopFlag()
    previous = signal.signal(signal.SIGUSR1, lambda *_: flag.set())
    try:
        timer = threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGUSR1))
        timer.start()
        t0 = time.monotonic()
        assert flag.wait(10.0) is True
        assert time.monotonic() - t0 < 1.0
        assert flag.is_set() and flag.wait(10.0) is True
    finally:
        signal.signal(signal.SIGUSR1, previous)
        flag.close()


def test_many_sets_never_block():
    flag = StopFlag()
    for _ in range(100_000):
        flag.set()
    assert flag.is_set()
    flag.close()
