"""The adapter the soak test runs: quick work, and ways to die."""
import ctypes
import os
import signal
import sys
import time

import snakepit


@snakepit.command
def work(ms, ctx):
    end = time.perf_counter() + ms / 1000.0
    n = 0
    while time.perf_counter() < end:
        n += 1
    return {"cid": ctx.correlation_id, "pid": os.getpid()}


@snakepit.command
def crash(how):
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "abort":
        os.abort()
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        sys.exit(3)  # an exception in the dispatcher, not an exit
    raise ValueError("unknown crash " + how)


def teardown():
    raise RuntimeError("teardown fails on purpose")
