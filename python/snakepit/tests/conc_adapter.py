"""An adapter for the concurrency tests: handlers that record how many of
them run at once."""

import asyncio
import logging
import threading
import time

import snakepit

_lock = threading.Lock()
STATE = {"in_flight": 0, "max": 0, "runs": [], "cancelled": []}
_gate = {}  # key -> asyncio.Event / threading.Event


def reset():
    with _lock:
        STATE.update(in_flight=0, max=0, runs=[], cancelled=[])
        _gate.clear()


def _enter(tag):
    with _lock:
        STATE["in_flight"] += 1
        STATE["max"] = max(STATE["max"], STATE["in_flight"])
        STATE["runs"].append(tag)
        return STATE["in_flight"]


def _leave():
    with _lock:
        STATE["in_flight"] -= 1


def _async_gate(key):
    with _lock:
        ev = _gate.get(key)
        if ev is None:
            ev = _gate[key] = asyncio.Event()
        return ev


@snakepit.command
async def rendezvous(n, tag="", sleep=0.05, timeout=20.0):
    """Waits until n calls are in flight at once (or timeout), then sleeps."""
    now = _enter(tag)
    ev = _async_gate(("rv", n))
    try:
        if now >= n:
            ev.set()
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(sleep)
        return STATE["max"]
    finally:
        _leave()


@snakepit.command
def plain(tag="", sleep=0.01):
    """Not thread-safe: must never overlap another."""
    _enter(tag)
    try:
        time.sleep(sleep)
    finally:
        _leave()
    return tag


@snakepit.command(thread_safe=True)
def safe_meet(n, tag="", timeout=20.0):
    """Thread-safe: waits until n of it are in flight at once."""
    now = _enter(tag)
    with _lock:
        ev = _gate.setdefault(("safe", n), threading.Event())
    try:
        if now >= n:
            ev.set()
        ev.wait(timeout)
        return STATE["max"]
    finally:
        _leave()


@snakepit.command
async def wait_forever(ctx, tag=""):
    _enter(tag)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        with _lock:
            STATE["cancelled"].append(tag)
        raise
    finally:
        _leave()


@snakepit.command
async def nap(tag="", sleep=0.05):
    _enter(tag)
    try:
        await asyncio.sleep(sleep)
        return tag
    finally:
        _leave()


@snakepit.command(thread_safe=True)
def spin(ctx, tag=""):
    """A plain handler that runs until interrupted."""
    _enter(tag)
    try:
        while True:
            time.sleep(0.001)
    except snakepit.Cancelled:
        with _lock:
            STATE["cancelled"].append(tag)
        raise
    finally:
        _leave()


@snakepit.command
async def log_twice(ctx, tag):
    ctx.log.info("first %s", tag)
    await asyncio.sleep(0.01)
    logging.getLogger("conc").warning("second %s", tag)
    return [ctx.correlation_id, ctx._token]


@snakepit.command
async def agen(n, tag=""):
    for i in range(n):
        await asyncio.sleep(0)
        yield [tag, i]


@snakepit.command
def gen(n, tag=""):
    for i in range(n):
        yield [tag, i]


GATE = threading.Event()


@snakepit.command
def poll_then_gated(ctx, tag=""):
    """Polls ctx.cancelled() until its deadline, then cleans up: waits for
    GATE, then runs bytecodes, where an interrupt would land."""
    _enter(tag)
    try:
        while not ctx.cancelled():
            time.sleep(0.001)
        with _lock:
            STATE["runs"].append(tag + " cleaning")
        GATE.wait(30)
        n = 0
        for _ in range(10000):
            n += 1
        with _lock:
            STATE["runs"].append(tag + " cleaned")
        return tag
    finally:
        _leave()


@snakepit.command
def gated(tag=""):
    """Not thread-safe: runs until GATE is set."""
    _enter(tag)
    try:
        GATE.wait(30)
        return tag
    finally:
        _leave()
