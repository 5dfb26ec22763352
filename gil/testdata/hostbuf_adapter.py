"""Handlers passing large bytes and arrays to Go host functions and back,
for gil's out-of-band host call tests."""
import array
import ctypes

import snakepit
from snakepit import _wire

# Arrays arrive as memoryviews here, numpy or not: numpy's support of
# sub-interpreters is partial (3.11 loads it, and it crashes under
# AddressSanitizer), and the memoryview form is the one every run has.
_wire._numpy = False

_payloads = {}


def _payload(n):
    p = _payloads.get(n)
    if p is None:
        p = _payloads[n] = bytes(range(256)) * (n // 256) + bytes(n % 256)
    return p


def _value(kind, n):
    """(value, base, offset): the value to send and the bytes or
    bytearray whose memory it is, from offset on."""
    raw = _payload(n + 16)
    if kind == "bytes":
        v = raw[3:3 + n]
        return v, v, 0
    if kind == "bytearray":
        v = bytearray(raw[3:3 + n])
        return v, v, 0
    if kind == "mv_ro":
        base = raw[:n + 9]
        return memoryview(base)[9:].toreadonly(), base, 9
    if kind == "mv_rw":
        base = bytearray(raw[:n + 9])
        return memoryview(base)[9:], base, 9
    raise ValueError(kind)


def _addr(base, off):
    if isinstance(base, bytes):
        return ctypes.cast(ctypes.c_char_p(base), ctypes.c_void_p).value + off
    return ctypes.addressof(ctypes.c_char.from_buffer(base)) + off


@snakepit.command
def send(ctx, kind, n):
    """[Go's address and length of the data, Python's address] for a
    value of kind, and the same for it nested in a dict and a list."""
    v, base, off = _value(kind, n)
    got = ctx.host.addr(data=v)
    nested = ctx.host.addrs(d={"x": [1, v]}, t=(v,), small=b"ab")
    return {"go": got, "py": _addr(base, off) if n else 0, "nested": nested, "same": bytes(v) == _payload(n + 16)[3 if kind in ("bytes", "bytearray") else 9:][:n]}


@snakepit.command
def echo(ctx, kind, n):
    v, _, _ = _value(kind, n)
    r = ctx.host.echo(data=v)
    return [type(r).__name__, r == bytes(v), len(r), r is v]


@snakepit.command
def raw_len(ctx, n):
    return ctx.host.raw_len(data=_payload(n), t=(1, "x"))


@snakepit.command
def arrays(ctx, n):
    """An array.array to Go and an Array back."""
    a = array.array("d", range(n))
    got = ctx.host.arr(a=a, n=n)
    back = got["back"]
    return {"go": got["go"], "back": [type(back).__name__, back.format, back.readonly, list(back.shape), sum(back)]}


_mutable = {}


@snakepit.command
def bench(ctx, name, n, rounds, kind="bytes"):
    """rounds host calls of name with n bytes (prepared before), as bytes
    or as a bytearray."""
    p = _payload(n)
    if kind == "bytearray":
        p = _mutable.get(n)
        if p is None:
            p = _mutable[n] = bytearray(_payload(n))
    call = ctx.host.call
    for _ in range(rounds):
        r = call(name, data=p)
    return r if type(r) is int else len(r)


@snakepit.command
def echo_addr(ctx, n):
    return ctx.host.addr(data=_payload(n))
