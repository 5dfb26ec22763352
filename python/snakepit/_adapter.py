"""The adapter API: the command decorator and the per-call context."""

import inspect
import logging
import time
from marshal import dumps as _dumps, loads as _loads

from . import _wire
from ._wire import MARKER as _MARKER, resolve_value as _resolve_value, scan_needed as _scan_needed

_MARKER_BYTES = _MARKER.encode()

import sys

__all__ = ["Cancelled", "CommandInfo", "Context", "HostError", "command", "commands_of", "configure",
           "thread_safe_of"]


class Cancelled(BaseException):
    """Raised inside a handler whose call was cancelled or ran past its
    deadline. It derives from BaseException, like asyncio.CancelledError,
    so ``except Exception`` blocks do not swallow it."""


class HostError(Exception):
    """A Go host function called through ``ctx.host`` failed.

    ``str(e)`` is the Go error's text; ``kind`` is "error", "deadline"
    (then it is also a TimeoutError), "cancelled" (also a Cancelled),
    "arguments" (also a TypeError: the arguments did not decode into the
    function's argument type), "unknown" (no such function), "panic", or
    "ended" (ctx.host used after its call ended). An error the Go side
    marked with a Python type (host.WithPythonType) is also an instance of
    that type; ``python_type`` names it."""

    def __init__(self, message, kind="error", python_type=""):
        super().__init__(message)
        self.kind = kind
        self.python_type = python_type


class CommandInfo:
    """What @command recorded about a handler."""

    __slots__ = ("name", "description", "fn", "wants_ctx", "thread_safe", "is_async")

    def __init__(self, name, description, fn, thread_safe=None):
        self.name = name
        self.description = description
        self.fn = fn
        # None: as the adapter says (configure); True/False: this command's own.
        self.thread_safe = thread_safe
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        self.wants_ctx = "ctx" in params

    def __repr__(self):
        return "CommandInfo(%r)" % (self.name,)


def command(fn=None, *, name=None, description=None, thread_safe=None):
    """Mark a function as a command Go can call.

    Use it bare (``@command``) or with options: ``name`` overrides the
    function's name, ``description`` defaults to the first line of the
    docstring. ``thread_safe=True`` lets a plain ``def`` handler run on
    several threads at once in a worker that serves calls concurrently
    (``False`` keeps it one at a time even in a thread-safe adapter; the
    default follows ``configure(thread_safe=...)``). ``async def``
    handlers always run concurrently, on the worker's event loop.
    """
    if thread_safe is not None and not isinstance(thread_safe, bool):
        raise TypeError("snakepit.command: thread_safe must be a bool, not %s" % type(thread_safe).__name__)

    def mark(f):
        if not callable(f):
            raise TypeError("snakepit.command: %r is not callable" % (f,))
        desc = description
        if desc is None:
            doc = inspect.getdoc(f) or ""
            desc = doc.strip().splitlines()[0] if doc.strip() else ""
        f.__snakepit_command__ = CommandInfo(name or f.__name__, desc, f, thread_safe)
        return f

    if fn is not None:
        return mark(fn)
    return mark


_CONFIG = "__snakepit_config__"


def configure(*, thread_safe=None):
    """Declare properties of the calling adapter module; call it at module
    level. ``thread_safe=True``: the adapter's plain ``def`` handlers may
    run on several threads at once when the worker serves calls
    concurrently (a per-command ``@command(thread_safe=...)`` overrides
    it). By default they run one at a time."""
    if thread_safe is not None and not isinstance(thread_safe, bool):
        raise TypeError("snakepit.configure: thread_safe must be a bool, not %s" % type(thread_safe).__name__)
    module_globals = sys._getframe(1).f_globals
    config = module_globals.setdefault(_CONFIG, {})
    if thread_safe is not None:
        config["thread_safe"] = thread_safe


def thread_safe_of(module, info):
    """Whether command info of module may run on several threads at once."""
    if info.thread_safe is not None:
        return info.thread_safe
    return bool(getattr(module, _CONFIG, {}).get("thread_safe", False))


def commands_of(module):
    """Return {name: CommandInfo} for the commands a module defines."""
    found = {}
    for attr, obj in vars(module).items():
        info = getattr(obj, "__snakepit_command__", None)
        if not isinstance(info, CommandInfo) or attr.startswith("_"):
            continue
        if info.name in found and found[info.name].fn is not obj:
            raise ValueError(
                "snakepit: two commands named %r in %s" % (info.name, module.__name__))
        found[info.name] = info
    return found


class Context:
    """The per-call context a handler receives when it declares ``ctx``.

    Attributes: ``command``, ``correlation_id``, ``session_id`` (None without
    a session), ``deadline`` (seconds since the epoch, or None),
    ``attachments`` (a list of bytes), ``worker_id``, ``host`` (the Go
    functions the handler may call), ``traceparent`` (the W3C traceparent
    of the Go span the call runs under, or None when the call is not
    traced: OpenTelemetry code continues the trace from it).
    """

    __slots__ = ("command", "correlation_id", "session_id", "deadline",
                 "attachments", "worker_id", "traceparent", "_dispatcher", "_cancelled", "_log",
                 "_ended", "_host", "_token", "_held")

    def __init__(self, dispatcher, command, correlation_id, session_id, deadline, attachments,
                 traceparent=None):
        self._dispatcher = dispatcher
        self.traceparent = traceparent
        self.command = command
        self.correlation_id = correlation_id
        self.session_id = session_id
        self.deadline = deadline
        self.attachments = attachments if attachments is not None else []
        self.worker_id = dispatcher.worker_id
        self._cancelled = False
        self._held = False  # the handler saw cancelled() true: no interrupt
        self._log = None
        self._ended = False  # set when the call (or stream) ends
        self._host = None
        self._token = dispatcher.host_token

    @property
    def host(self):
        """The Go functions registered for this worker (host.Set):
        ``ctx.host.call("name", **kwargs)``, ``ctx.host.name(**kwargs)``,
        ``await ctx.host.acall("name", **kwargs)``, ``ctx.host.names()``.
        Usable from threads the handler starts, until the call ends."""
        if self._host is None:
            self._host = Host(self)
        return self._host

    @property
    def session(self):
        """A dict that lives on this worker for this session until the
        session ends. Raises RuntimeError when the call has no session."""
        if self.session_id is None:
            raise RuntimeError("snakepit: this call has no session (call it through a pool session)")
        return self._dispatcher.session_state(self.session_id)

    def remaining(self):
        """Seconds left before the deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def cancelled(self):
        """True once the call was cancelled or its deadline passed. Long
        loops can poll it to stop cleanly: once it has returned True in
        the thread that runs the handler, snakepit raises no Cancelled in
        that thread for this call or stream operation (the handler still
        has the worker's interrupt grace to end)."""
        if not (self._cancelled or (self.deadline is not None and time.time() >= self.deadline)):
            return False
        if not self._held and not self._ended:
            d = self._dispatcher
            hold = d.hold_interrupt
            if hold is not None and d.runs_here(self) and hold():
                self._held = True
        return True

    @property
    def log(self):
        """A logging.Logger whose records reach the Go logger, tagged with
        the worker, command and correlation id."""
        if self._log is None:
            self._log = logging.getLogger("snakepit.adapter." + self._dispatcher.module_name)
        return self._log

    def __repr__(self):
        return "Context(command=%r, correlation_id=%r, session_id=%r)" % (
            self.command, self.correlation_id, self.session_id)


_PLAIN = frozenset((type(None), bool, int, float, str, bytes))


def _in_parts(kwargs, threshold):
    """kwargs with each top-level bytes or bytearray value, and the data of
    each top-level array (array.array, numpy, a numeric memoryview), of at
    least threshold bytes set apart, not copied: (the marshalled kwargs,
    version 2, with a buffer marker (MARKER, "buf", i) in place of the i-th
    such bytes and an array marker whose data is the index i, the tuple of
    those buffers, as bytes-like objects of format "B"). None when there is
    no such value, or another value is not plain (None, bool, int, float,
    str, bytes): marshal then writes them all."""
    items = []
    big = False
    for k, v in kwargs.items():
        c = v.__class__
        if (c is bytes or c is bytearray) and len(v) >= threshold:
            # A view pins a bytearray's size until the call has sent it.
            items.append((k, None, v if c is bytes else memoryview(v)))
            big = True
        elif c in _PLAIN:
            items.append((k, v, None))
        else:
            a = _array_apart(v, threshold)
            if a is None:
                return None
            items.append((k, a[0], a[1]))
            big = True
    if not big:
        return None
    parts = [b"{"]
    bufs = []
    try:
        for k, v, buf in items:
            if buf is None:
                parts.append(_dumps(k, 2) + _dumps(v, 2))
                continue
            marker = (_MARKER, "buf", len(bufs)) if v is None else v + (len(bufs),)
            parts.append(_dumps(k, 2) + _dumps(marker, 2))
            bufs.append(buf)
    except ValueError:
        return None  # a value marshal refuses
    parts.append(b"0")
    return b"".join(parts), tuple(bufs)


def _array_apart(v, threshold):
    """For an array of at least threshold bytes: (its marker without the
    data, its data as a view of bytes); None for anything else."""
    if not _scan_needed():
        return None  # no array type is loaded: marshal writes a memoryview as bytes
    c = v.__class__
    mods = sys.modules
    if not (c is memoryview or c is getattr(mods.get("array"), "array", None)
            or c is getattr(mods.get("numpy"), "ndarray", None)):
        return None  # not an array: converted once, with the rest
    try:
        if memoryview(v).nbytes < threshold:
            return None
    except (TypeError, ValueError):
        return None
    try:
        m = _wire.to_wire(v, 0)
    except _wire.NotSerializable:
        return None
    if type(m) is not tuple or len(m) != 5 or m[0] != _MARKER or m[1] != "array":
        return None
    data = memoryview(m[4])
    if data.format != "B" or data.ndim != 1:
        data = data.cast("B")  # C-contiguous: to_wire made it so
    return m[:4], data


class Host:
    """ctx.host: calls into the Go functions registered with the worker."""

    __slots__ = ("_ctx", "_names", "_transport", "_fast", "_raise", "_token", "_parts")

    def __init__(self, ctx):
        d = ctx._dispatcher
        self._ctx = ctx
        self._names = d.host_names
        self._transport = d.host_transport
        self._fast = d.host_fast
        self._raise = d.host_raise
        self._token = ctx._token
        self._parts = d.host_parts

    def names(self):
        """The names of the functions Go registered, sorted."""
        return list(self._names)

    def call(self, name, /, **kwargs):
        """Call the Go function name with kwargs and return its result.
        Raises HostError when it fails (see HostError)."""
        ctx = self._ctx
        if ctx._ended or name not in self._names or self._transport is None:
            raise ctx._dispatcher.host_refusal(ctx, name)
        fast = self._fast
        if fast is not None:
            result = fast(self._token, name, kwargs, self._raise, _resolve_value)
            if result is not NotImplemented:  # no result decodes to it
                return result
        # Large bytes and arrays set apart, where the transport takes them
        # (see _in_parts); else marshalled with the rest.
        payload = _in_parts(kwargs, self._parts) if self._parts else None
        if payload is None:
            if _scan_needed():
                # marshal would write an array.array or a numpy array as its
                # raw bytes: convert them as results are (to arrays).
                payload = ctx._dispatcher.host_payload(name, kwargs)
            else:
                try:
                    payload = _dumps(kwargs, 2)  # version 2: no reference table to build
                except ValueError:
                    payload = ctx._dispatcher.host_payload(name, kwargs)  # values marshal does not take
        reply = self._transport(self._token, name, payload)
        if reply.__class__ is tuple:
            # The result's large bytes came beside it: (the marshalled
            # result with their markers, the bytes).
            return _resolve_value(_loads(reply[0]), reply[1])
        if reply[0] != 1:  # host.ReplyError
            result = _loads(reply)
            if _MARKER_BYTES in reply:  # arrays: see _wire.resolve_value
                result = _resolve_value(result, ())
            return result
        ctx._dispatcher.host_raise(reply)

    async def acall(self, name, /, **kwargs):
        """call() for async handlers: the Go function runs while the event
        loop goes on (the call waits in a thread of the default executor)."""
        import asyncio
        import functools
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.call, name, **kwargs))

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._names:
            raise AttributeError("no host function %r (registered: %s)" % (
                name, ", ".join(self._names) or "none"))
        return lambda **kwargs: self.call(name, **kwargs)

    def __dir__(self):
        return ["acall", "call", "names"] + list(self._names)

    def __repr__(self):
        return "<snakepit host functions: %s>" % (", ".join(self._names) or "none")
