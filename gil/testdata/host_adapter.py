"""Handlers calling Go host functions (ctx.host), for gil's host tests."""
import marshal
import threading

import snakepit

_kept = {}


def _describe(e):
    return {
        "type": type(e).__name__,
        "message": str(e),
        "kind": getattr(e, "kind", ""),
        "host_error": isinstance(e, snakepit.HostError),
        "timeout": isinstance(e, TimeoutError),
        "key_error": isinstance(e, KeyError),
        "type_error": isinstance(e, TypeError),
    }


@snakepit.command
def lookup(ctx, user_id):
    return ctx.host.lookup(user_id=user_id, tags=["a", "b"])


@snakepit.command
def names(ctx):
    return ctx.host.names()


@snakepit.command
def fail(ctx, name, how=""):
    try:
        ctx.host.call(name, how=how)
    except Exception as e:
        return _describe(e)
    return None


@snakepit.command
def wait(ctx):
    return ctx.host.wait()


@snakepit.command
def from_thread(ctx, n):
    out = {}

    def run():
        out["r"] = ctx.host.echo(n=n, cid=ctx.correlation_id)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["r"]


@snakepit.command
def concurrent(ctx, n):
    results = [None] * n
    errors = []

    def run(i):
        try:
            results[i] = ctx.host.gate(i=i)
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return results


@snakepit.command
def keep(ctx):
    """Starts a thread that uses ctx.host once released (after the call)."""
    go = threading.Event()
    out = {}

    def run():
        go.wait(30)
        try:
            out["r"] = ctx.host.echo(n=1)
        except Exception as e:
            out["r"] = _describe(e)

    t = threading.Thread(target=run)
    t.start()
    _kept["thread"] = (t, go, out)
    _kept["token"] = ctx._token
    _kept["transport"] = ctx._dispatcher.host_transport
    return None


@snakepit.command
def release_kept():
    t, go, out = _kept.pop("thread")
    go.set()
    t.join(30)
    return out.get("r")


@snakepit.command
def kept_transport(name):
    """Calls the transport with the kept (ended) call's token, bypassing
    the Python-side check: the Go side must refuse it."""
    reply = _kept["transport"](_kept["token"], name, marshal.dumps({"n": 1}))
    return _split(reply)


def _split(reply):
    """[0, value] for a result reply, [1, [kind, message, type]] for an
    error reply (host.Reply)."""
    if reply[0] == 1:
        return [1, marshal.loads(reply[1:])]
    return [0, marshal.loads(reply)]


@snakepit.command
def transport(ctx, token="own", name="echo", payload=None, nargs=3):
    """Calls the transport directly with what the arguments say."""
    tr = ctx._dispatcher.host_transport
    tok = ctx._token if token == "own" else token
    if payload is None:
        payload = marshal.dumps({"n": 2})
    try:
        if nargs == 3:
            reply = tr(tok, name, payload)
        else:
            reply = tr(tok, name)
    except Exception as e:
        return _describe(e)
    return _split(reply)


@snakepit.command
def stream(ctx, n):
    first = ctx.host.echo(n=-1, cid=ctx.correlation_id)

    def gen():
        yield first
        for i in range(n):
            yield ctx.host.echo(n=i, cid=ctx.correlation_id)

    return gen()


@snakepit.command
def loop(ctx, n, name="noop"):
    """n no-op host calls, a small dict each way."""
    call = ctx.host.call
    for _ in range(n):
        call(name, a=1, b="x")
    return n


@snakepit.command
def loop_stub(ctx, n, name="noop"):
    """loop with a Python stand-in for the transport: the Python side's
    share of a host call."""
    d = ctx._dispatcher
    saved = d.host_transport, d.host_fast
    reply = marshal.dumps({"a": 1, "b": "x"}, 4)
    d.host_transport, d.host_fast = (lambda token, name, payload: reply), None
    try:
        return loop(ctx, n, name)
    finally:
        d.host_transport, d.host_fast = saved


@snakepit.command
def tids(ctx):
    """[this thread's id, the thread Go ran on] here and in a new thread."""
    out = [threading.get_native_id(), ctx.host.tid()]

    def run():
        out.extend([threading.get_native_id(), ctx.host.tid()])

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


@snakepit.command
async def async_echo(ctx, n):
    """Two host calls at once from an async handler (ctx.host.acall)."""
    import asyncio
    a, b = await asyncio.gather(
        ctx.host.acall("echo", n=n, cid=ctx.correlation_id),
        ctx.host.acall("echo", n=n + 1, cid=ctx.correlation_id))
    return [a, b]


@snakepit.command
def big(ctx, n):
    """A host call with n bytes of text each way."""
    r = ctx.host.echo(n=n, cid="x" * n)
    return [r["n"], len(r["cid"]), r["cid"] == "x" * n]


@snakepit.command
def fail_raise(ctx, how=""):
    """Lets the host function's error propagate to Go."""
    return ctx.host.fail(how=how)
