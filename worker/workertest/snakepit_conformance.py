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


@snakepit.command(thread_safe=True)
def poll_then_clean(ctx):
    """Polls ctx.cancelled(), then cleans up: sleeps 0.1 s, then runs
    bytecodes for 0.1 s. A Cancelled raised after the poll saw the
    cancellation would land in the clean-up; a cancellation that woke the
    sleep would cut it short."""
    try:
        while not ctx.cancelled():
            time.sleep(0.001)
    except snakepit.Cancelled:
        EVENTS.append("poll interrupted")
        return
    try:
        start = time.monotonic()
        time.sleep(0.1)
        if time.monotonic() - start < 0.095:
            EVENTS.append("clean-up sleep cut short")
            return
        end = time.monotonic() + 0.1
        n = 0
        while time.monotonic() < end:
            n += 1
    except snakepit.Cancelled:
        EVENTS.append("clean-up interrupted")
        raise
    EVENTS.append("cleaned up")


_KEPT = []


@snakepit.command
def keep_ctx(ctx):
    """Keeps this call's ctx for spin_polling_kept."""
    _KEPT[:] = [ctx]


@snakepit.command
def spin_polling_kept(ctx):
    """Spins, polling the kept ctx of an ended call (cancelled: its
    deadline passed), never its own: it must still be interrupted."""
    kept = _KEPT[0]
    n = 0
    try:
        while True:
            if kept.cancelled():
                n += 1
    finally:
        EVENTS.append("spin_polling_kept interrupted")


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


# ---- host functions (ctx.host): the suite registers add, whoami, fail,
# block, boom and barrier ----

_kept = {}


@snakepit.command
def host_add(ctx, a, b, enum_a=False):
    if enum_a:  # an int subclass: marshal refuses it, ctx.host converts it
        import enum
        a = enum.IntEnum("E", {"A": a})(a)
    return ctx.host.add(a=a, b=b)


@snakepit.command
def host_info(ctx):
    return {"names": ctx.host.names(), "who": ctx.host.call("whoami"), "has_add": "add" in dir(ctx.host)}


@snakepit.command
def host_error(ctx, name, **kwargs):
    try:
        ctx.host.call(name, **kwargs)
    except snakepit.HostError as e:
        return {"kind": e.kind, "text": str(e), "key_error": isinstance(e, KeyError),
                "timeout": isinstance(e, TimeoutError), "type_error": isinstance(e, TypeError)}
    return None


@snakepit.command
def host_block(ctx):
    """Wait in a Go function until the call's context ends."""
    ctx.host.block()
    return "not interrupted"


@snakepit.command
def host_threads(ctx, n):
    """n Python threads each make a host call at once (the Go side waits
    for all n before any returns)."""
    import threading
    out = [None] * n

    def run(i):
        try:
            out[i] = ctx.host.barrier(n=n, i=i)
        except BaseException as e:  # reported, not lost
            out[i] = repr(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


_INVERT = bytes(255 - i for i in range(256))


@snakepit.command
def host_invert(ctx, sizes):
    """One host call per size, from a thread each, all at once: bytes of
    that size to Go, their inversion back; whether each came back right."""
    import threading
    out = [None] * len(sizes)

    def run(i):
        data = (bytes(range(i, 256)) + bytes(range(i))) * (sizes[i] // 256 + 1)
        data = data[:sizes[i]]
        try:
            r = ctx.host.invert(data=data)
            out[i] = r["len"] == len(data) and r["back"] == data.translate(_INVERT)
        except BaseException as e:  # reported, not lost
            out[i] = repr(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(sizes))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


@snakepit.command
def host_keep_thread(ctx):
    """Start a thread that calls ctx.host after this call has ended."""
    import threading
    go = threading.Event()

    def late():
        go.wait(30)
        try:
            ctx.host.add(a=1, b=2)
            _kept["late"] = "succeeded"
        except snakepit.HostError as e:
            _kept["late"] = e.kind
        except BaseException as e:
            _kept["late"] = repr(e)

    t = threading.Thread(target=late)
    t.start()
    _kept["thread"], _kept["go"] = t, go
    return "started"


@snakepit.command
def host_late_result():
    _kept["go"].set()
    _kept["thread"].join(30)
    return _kept.get("late")


@snakepit.command
def host_stream(ctx, n):
    for i in range(n):
        yield ctx.host.add(a=i, b=100)


@snakepit.command
async def host_async(ctx):
    a, b = await asyncio.gather(ctx.host.acall("add", a=1, b=2), ctx.host.acall("add", a=3, b=4))
    return [a, b]


@snakepit.command
def host_none(ctx):
    try:
        ctx.host.call("add", a=1, b=2)
    except snakepit.HostError as e:
        return [ctx.host.names(), e.kind]
    return "called"


# ---- concurrency (a worker with several slots) ----

import threading

_groups = {}
_groups_lock = threading.Lock()


def _group(name):
    with _groups_lock:
        g = _groups.get(name)
        if g is None:
            g = _groups[name] = {"in": 0, "max": 0, "lock": threading.Lock(), "objs": {}}
        return g


def _obj(g, key, make):
    with g["lock"]:
        o = g["objs"].get(key)
        if o is None:
            o = g["objs"][key] = make()
        return o


@snakepit.command
async def overlap_async(ctx, group, n):
    """Waits until n calls of group are in at once; returns what this call
    sees of itself: its correlation id, the one a host function gets, and
    the most calls of the group seen in at once."""
    g = _group(group)
    with g["lock"]:
        g["in"] += 1
        g["max"] = max(g["max"], g["in"])
        reached = g["in"] >= n
    ev = _obj(g, "event", asyncio.Event)
    if reached:
        ev.set()
    await asyncio.wait_for(ev.wait(), 30)
    who = ctx.host.call("whoami")["cid"] if "whoami" in ctx.host.names() else ""
    logging.getLogger("conformance").info("overlap %s", ctx.correlation_id)
    return {"cid": ctx.correlation_id, "host_cid": who, "max": g["max"]}


@snakepit.command
def plain_probe(group, ms):
    """A plain handler that is not thread-safe: returns the most calls of
    group seen in at once (1 unless the worker broke its promise)."""
    g = _group(group)
    with g["lock"]:
        g["in"] += 1
        g["max"] = max(g["max"], g["in"])
    time.sleep(ms / 1000)
    with g["lock"]:
        g["in"] -= 1
        return g["max"]


@snakepit.command(thread_safe=True)
def plain_barrier(group, n):
    """A thread-safe plain handler: passes only when n run at once."""
    b = _obj(_group(group), "barrier", lambda: threading.Barrier(n, timeout=30))
    b.wait()
    return True


@snakepit.command
async def wait_release(group, timeout=30):
    """Waits until release(group) is called (at most timeout seconds)."""
    ev = _obj(_group(group), "release", asyncio.Event)
    try:
        await asyncio.wait_for(ev.wait(), timeout)
    except asyncio.CancelledError:
        EVENTS.append("cancelled " + group)
        raise
    return "released"


@snakepit.command
async def release(group):
    _obj(_group(group), "release", asyncio.Event).set()
    return True


@snakepit.command
def log_and_return(msg):
    """Logs msg and returns 1: the record travels with the reply."""
    logging.getLogger("conformance").warning(msg)
    return 1
