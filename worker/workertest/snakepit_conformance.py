"""The adapter the conformance suite runs in every worker implementation."""

import asyncio
import logging
import os
import time

import snakepit

EVENTS = []
TEARDOWN_MARKER = os.environ.get("SNAKEPIT_CONFORMANCE_TEARDOWN", "")
_state = {"setup_ran": False}


def setup():
    _state["setup_ran"] = True


def teardown():
    if TEARDOWN_MARKER:
        with open(TEARDOWN_MARKER, "w") as f:
            f.write("teardown ran")


@snakepit.command
def echo(value):
    """Return the value unchanged."""
    return value


@snakepit.command
def type_of(value):
    return type(value).__name__


@snakepit.command
def setup_ran():
    return _state["setup_ran"]


@snakepit.command(name="renamed", description="a command whose name differs from its function")
def some_function_name():
    return "renamed"


@snakepit.command
def context(ctx):
    return {
        "correlation_id": ctx.correlation_id,
        "session_id": ctx.session_id,
        "command": ctx.command,
        "has_deadline": ctx.deadline is not None,
        "attachments": ctx.attachments,
        "worker_id": ctx.worker_id,
    }


@snakepit.command
def remember(key, value, ctx):
    ctx.session[key] = value
    return len(ctx.session)


@snakepit.command
def recall(key, ctx):
    return ctx.session.get(key)


@snakepit.command
def fail(message):
    def inner():
        raise ValueError(message)
    inner()


@snakepit.command
def exit_handler():
    raise SystemExit(2)


@snakepit.command
def not_serialisable():
    return {"fine": 1, "bad": object()}


@snakepit.command
def log_things(ctx):
    ctx.log.info("info from %s", ctx.command)
    logging.getLogger("conformance.other").warning("warning from another logger")
    print("printed by the handler")
    return "logged"


@snakepit.command
def count(n):
    try:
        for i in range(n):
            yield i
    finally:
        EVENTS.append("count finally")


@snakepit.command
def fail_midstream():
    yield 1
    raise RuntimeError("midstream")


@snakepit.command
def events():
    out = list(EVENTS)
    EVENTS.clear()
    return out


@snakepit.command
async def async_double(x):
    await asyncio.sleep(0.001)
    return x * 2


@snakepit.command
async def async_count(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i * 10


@snakepit.command
def spin(ctx):
    """A pure-Python loop that never ends by itself."""
    n = 0
    try:
        while True:
            n += 1
    finally:
        EVENTS.append("spin interrupted")


@snakepit.command
def block_in_c(seconds):
    """Blocks in C where no interrupt reaches: a timed wait on a held lock
    (the thread profile's asynchronous exception waits for it, and its
    time.sleep would wake on cancellation), with the cancel signal held off
    in a worker process of its own (a signal would cut the wait short)."""
    import signal
    import threading
    held = threading.Lock()
    held.acquire()
    own_process = bool(os.environ.get("SNAKEPIT_RUN_TOKEN"))
    if own_process and threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            held.acquire(timeout=seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    else:
        held.acquire(timeout=seconds)
    return "woke"


_kept = {}


@snakepit.command
def payload_info(data, other=None):
    """Describe an out-of-band payload without copying it."""
    info = {"type": type(data).__name__, "len": len(data), "readonly": data.readonly,
            "head": bytes(data[:4]), "sum": sum(data[:64])}
    if other is not None:
        info["same"] = other is data
    return info


@snakepit.command
def payload_echo(data):
    return data


@snakepit.command
def payload_keep(data):
    """Keep a slice of the payload and the view itself past the call."""
    _kept["slice"] = data[1:5]
    _kept["view"] = data
    return True


@snakepit.command
def payload_kept():
    """What was kept: the slice stays readable, the view is released."""
    try:
        len(_kept["view"])
        view = "readable"
    except ValueError:
        view = "released"
    return {"slice": bytes(_kept["slice"]), "view": view}
