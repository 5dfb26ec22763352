"""An adapter used by the dispatcher's unit tests."""

import asyncio
import dataclasses
import datetime
import logging

import snakepit

EVENTS = []


def setup():
    EVENTS.append("setup")


def teardown():
    EVENTS.append("teardown")


@snakepit.command
def add(a, b=1):
    """Add two numbers."""
    return a + b


@snakepit.command(name="ctx_info", description="what the context says")
def context_info(ctx):
    return {
        "command": ctx.command,
        "correlation_id": ctx.correlation_id,
        "session_id": ctx.session_id,
        "remaining_known": ctx.remaining() is not None,
        "attachments": ctx.attachments,
    }


@snakepit.command
def counter(ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]


@snakepit.command
def logs(ctx):
    ctx.log.warning("from ctx.log %d", 1)
    logging.getLogger("adapter.other").error("from another logger")
    print("printed line")
    return None


@snakepit.command
def boom():
    raise ValueError("boom")


@snakepit.command
def inner_type_error():
    return len(1)


@snakepit.command
def count(n):
    try:
        for i in range(n):
            yield i
    finally:
        EVENTS.append("count closed")


@snakepit.command
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


@snakepit.command
async def async_count(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield {"i": i}


@dataclasses.dataclass
class Point:
    x: int
    y: int


@snakepit.command
def converted():
    return {"when": datetime.date(2024, 1, 2), "point": Point(1, 2), "tags": {"b", "a"}}


@snakepit.command
def unserialisable():
    return {"ok": [1, object()]}


@snakepit.command
def exits():
    raise SystemExit(3)


def not_a_command():
    return "hidden"


KEPT = []


@snakepit.command
def use_host(ctx, name, kwargs, keep=False):
    """Call a host function; keep=True keeps ctx.host for later."""
    if keep:
        KEPT.append(ctx.host)
    try:
        return ["ok", ctx.host.call(name, **kwargs)]
    except snakepit.HostError as e:
        return ["error", type(e).__mro__[1].__name__, e.kind, str(e),
                isinstance(e, TimeoutError), isinstance(e, KeyError)]


@snakepit.command
def host_types(ctx, name, kwargs):
    """The type and content of each value a host function returns."""
    r = ctx.host.call(name, **kwargs)
    return {k: [type(v).__name__, list(v) if not isinstance(v, (bytes, str)) else v] for k, v in r.items()}


@snakepit.command
def host_sugar(ctx):
    return [ctx.host.names(), ctx.host.echo(x=1), "echo" in dir(ctx.host)]


@snakepit.command
async def host_async(ctx):
    return await ctx.host.acall("echo", x=2)


@snakepit.command
def host_stream(ctx, n):
    for i in range(n):
        yield ctx.host.call("echo", i=i)


@snakepit.command
def echo_bytes(b, cut=False):
    return b[:] if cut else b
