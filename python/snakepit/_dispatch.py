"""The dispatcher: runs an adapter's commands for one worker.

Both worker profiles drive this same class: the thread profile calls it from
Go inside a sub-interpreter, the process profile's main loop calls it in the
child. Every method returns values marshal can carry; errors come back as
data, never as exceptions, so log records are never lost with them.

Reply envelopes:

* ``bytes``: success, the marshalled result, no log records pending;
* ``(OK, payload, logs)``: success with log records;
* ``(ERROR, (kind, type, message, traceback, extra), logs)``;
* ``(END, None, logs)``: a stream has no more chunks.

Concurrency: a Dispatcher made with ``concurrency=1`` (the default) runs
one call at a time, on the thread that calls it. With ``concurrency`` > 1
(or whenever the caller passes a ``call_id``) its call and stream methods
may be called from several threads at once, each naming its call with a
``call_id`` (unique among the calls in flight):
``async def`` handlers (and async generators) run as tasks on one event
loop the dispatcher owns, on a thread of its own started at the first such
call and stopped by teardown(); plain ``def`` handlers run on the calling
thread, one at a time unless the adapter or the command is thread-safe
(``snakepit.configure(thread_safe=True)``, ``@command(thread_safe=True)``).
Each call keeps its own context, log records and host token; streams are
keyed by their call_id. ``cancel(call_id)`` reaches only that call.
"""

import collections
import contextvars
import importlib
import inspect
import io
import logging
import sys
import threading
import time
import traceback

from marshal import dumps as _marshal_dumps, loads as _marshal_loads

from . import _wire
from ._adapter import Cancelled, Context, HostError, commands_of, thread_safe_of

OK, ERROR, END = 0, 1, 2

# Error kinds (the first field of an ERROR payload).
K_PYTHON = "python"                  # the handler raised
K_NOT_FOUND = "not_found"            # extra: list of command names
K_BAD_ARGS = "bad_args"              # arguments do not fit the signature
K_NOT_SERIALIZABLE = "not_serializable"
K_CANCELLED = "cancelled"            # interrupted: cancelled or deadline
K_STREAMING = "streaming"            # unary call of a streaming command
K_NOT_STREAMING = "not_streaming"    # stream of a command that returns a value
K_PROTOCOL = "protocol"              # misuse of the dispatcher itself

MAX_PENDING_LOGS = 10000

_modules = sys.modules

# Result types that need no check for coroutines or generators.
_PLAIN = frozenset((dict, list, tuple, str, bytes, int, float, bool, type(None)))

# Results of these types at least RAW_MIN bytes long go back as raw bytes
# where the host takes them so (see Dispatcher.raw_results).
_BYTESLIKE = (bytes, bytearray, memoryview)
RAW_MIN = 64 << 10

# How many cancellations of calls not (yet) in flight a concurrent
# dispatcher remembers: a call that starts after its cancel does not run.
MAX_EARLY_CANCELS = 1024

# The call (a _CallRec) the running code belongs to, with concurrency > 1:
# each thread and each asyncio task has its own.
_current_call = contextvars.ContextVar("snakepit_call", default=None)


class _CallRec:
    """One call (or one operation on a stream) in flight in a concurrent
    dispatcher: its log records, context and task."""

    __slots__ = ("collector", "call_id", "command", "correlation_id", "logs", "dropped", "ctx", "task",
                 "in_loop", "cancelled")

    def __init__(self, collector, call_id, command, correlation_id, ctx=None):
        self.collector = collector
        self.call_id = call_id
        self.command = command
        self.correlation_id = correlation_id
        self.logs = []
        self.dropped = 0
        self.ctx = ctx
        if ctx is not None:
            ctx._held = False  # a stream's next operation: a hold is per operation
        self.task = None      # the asyncio task running it, once it runs on the loop
        self.in_loop = False  # it was handed to the event loop
        self.cancelled = False


class _Collector(logging.Handler):
    """Keeps log records until the worker hands them to Go."""

    def __init__(self, worker_id):
        super().__init__(logging.NOTSET)
        self.worker_id = worker_id
        self.pending = collections.deque(maxlen=MAX_PENDING_LOGS)
        self.dropped = 0
        # (command, correlation_id) of the running call, set by the
        # dispatcher: records emitted meanwhile (from any thread) carry it.
        self.current = None

    def emit(self, record):
        try:
            rec = _current_call.get()
            call = self.current
            msg = record.getMessage()
            exc = None
            if record.exc_info:
                exc = "".join(traceback.format_exception(*record.exc_info))
            if rec is not None:
                # A concurrent call's record: it goes back with that call.
                if rec.collector is not self:
                    return  # another dispatcher's call: its collector has it
                if len(rec.logs) >= MAX_PENDING_LOGS:
                    rec.dropped += 1
                else:
                    rec.logs.append((record.levelno, record.name, msg, rec.command, rec.correlation_id, exc))
                return
            if len(self.pending) == self.pending.maxlen:
                self.dropped += 1
            self.pending.append((
                record.levelno, record.name, msg,
                call[0] if call else "", call[1] if call else "", exc,
            ))
        except Exception:
            self.handleError(record)

    def drain(self):
        if not self.pending and not self.dropped:
            return None
        out = list(self.pending)
        self.pending.clear()
        if self.dropped:
            out.append((logging.WARNING, "snakepit", "%d log records dropped (more than %d pending)"
                        % (self.dropped, MAX_PENDING_LOGS), "", "", None))
            self.dropped = 0
        return out


class _LineWriter(io.TextIOBase):
    """A text stream that turns each written line into a log record."""

    def __init__(self, name, level):
        self._logger = logging.getLogger(name)
        self._level = level
        self._buf = ""

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._logger.log(self._level, "%s", line)
        return len(s)

    def flush(self):
        if self._buf:
            line, self._buf = self._buf, ""
            self._logger.log(self._level, "%s", line)


class _Refuse(Exception):
    """Carries an ERROR envelope out of _invoke: the call never started."""

    def __init__(self, reply):
        super().__init__()
        self.reply = reply


def _error(kind, exc=None, message=None, extra=None, logs=None):
    if exc is not None:
        t = type(exc)
        mod = getattr(t, "__module__", "builtins")
        name = t.__qualname__ if mod == "builtins" else mod + "." + t.__qualname__
        tb = "".join(traceback.format_exception(t, exc, exc.__traceback__))
        msg = str(exc) if message is None else message
    else:
        name, tb, msg = "", "", message or ""
    return (ERROR, (kind, name, msg, tb, extra), logs)


class Dispatcher:
    """Runs one adapter module's commands: one call at a time, or up to
    concurrency at once (see the module doc)."""

    def __init__(self, module_name, worker_id="", capture_stdio=False, log_level=logging.INFO, concurrency=1):
        if type(concurrency) is not int or concurrency < 1:
            raise ValueError("snakepit: concurrency must be an int >= 1, not %r" % (concurrency,))
        self.module_name = module_name
        self.worker_id = worker_id
        self.concurrency = concurrency
        # Concurrent calls (concurrency > 1): call_id -> _CallRec in flight,
        # the open streams by call_id, cancellations that came before their
        # call, the lock that keeps plain handlers that are not thread-safe
        # one at a time, and the event loop's thread.
        self._mt_lock = threading.Lock()
        self._calls = {}
        self._streams = {}
        self._early_cancels = collections.OrderedDict()
        self._sync_lock = threading.Lock()
        self._mt_loop = None
        self._mt_thread = None
        if concurrency > 1:
            _use_asyncio_cancellation()
        self.sessions = {}
        self._loop = None
        self._stream = None  # (iterator, is_async, command, correlation_id)
        self._call = None    # the running call's Context, for cancel()
        self._collector = _Collector(worker_id)
        root = logging.getLogger()
        root.addHandler(self._collector)
        root.setLevel(log_level)
        # capture_stdio: True for both streams, or a collection of names.
        if capture_stdio is True:
            capture_stdio = ("stdout", "stderr")
        if capture_stdio and "stdout" in capture_stdio:
            sys.stdout = _LineWriter("stdout", logging.INFO)
        if capture_stdio and "stderr" in capture_stdio:
            sys.stderr = _LineWriter("stderr", logging.WARNING)
        # Host functions (ctx.host): their names, and the transport the
        # profile installs: transport(token, name, kwargs_bytes) -> the
        # reply bytes of host.Reply. host_token is the running call's, as
        # the profile names it (the process profile: its request id).
        self.host_names = ()
        self.host_transport = None
        # host_fast(token, name, kwargs_dict, raise_) -> value: a transport
        # that marshals and unmarshals itself (the thread profile's
        # builtin); NotImplemented when kwargs need converting first.
        self.host_fast = None
        # host_parts: bytes, bytearray and array keyword arguments of at
        # least this many bytes reach host_transport set apart, not copied
        # into one marshalled payload (0: never; see _adapter._in_parts).
        self.host_parts = 0
        # user_gate: the concurrent mode's interrupt gate (open() before a
        # handler's own code runs, close() after; see _process._Mux), or
        # None.
        self.user_gate = None
        # hold_interrupt: called (by ctx.cancelled()) when a handler has
        # seen its cancellation; the profile then raises no Cancelled in
        # the calling thread for the running call. Returns whether the
        # calling thread runs the call (None: the profile has no hold).
        self.hold_interrupt = None
        self.host_token = None
        self.module = importlib.import_module(module_name)
        self.commands = commands_of(self.module)
        self._handlers = {name: (info.fn, info.wants_ctx) for name, info in self.commands.items()}
        self._thread_safe = {name: thread_safe_of(self.module, info) for name, info in self.commands.items()}

    # ---- life cycle ----

    def setup(self):
        """Run the adapter's setup(), if any. Returns an envelope."""
        return self._hook("setup")

    def teardown(self):
        """Run the adapter's teardown(), if any, and close the event loop."""
        if self._stream is not None:
            self.stream_close()
        for call_id in list(self._streams):
            self.stream_close(call_id)
        reply = self._hook("teardown")
        self._stop_loop_thread()
        if self._loop is not None:
            try:
                self._loop.close()
            except Exception:
                pass
            self._loop = None
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _LineWriter):
                stream.flush()
        return reply

    def _hook(self, name):
        fn = getattr(self.module, name, None)
        if fn is None:
            return self._ok(_wire.dumps(None))
        try:
            result = fn()
            if inspect.iscoroutine(result):
                result = self._run(result)
        except BaseException as e:  # SystemExit/KeyboardInterrupt must not end the host
            return _error(K_PYTHON, e, logs=self._collector.drain())
        return self._ok(_wire.dumps(None))

    def info(self):
        """{"commands": {name: description}, "worker_id": ...}."""
        return {
            "commands": {n: i.description for n, i in self.commands.items()},
            "worker_id": self.worker_id,
            "module": self.module_name,
        }

    def drain_logs(self):
        """Log records emitted between calls (background threads, setup)."""
        return self._collector.drain()

    def session_state(self, session_id):
        state = self.sessions.get(session_id)
        if state is None:
            state = self.sessions.setdefault(session_id, {})  # one dict even when calls race
        return state

    def end_session(self, session_id):
        """Drop a session's state. Replies whether there was any."""
        return self._ok(_wire.dumps(self.sessions.pop(session_id, None) is not None))

    def host_refusal(self, ctx, name):
        """The HostError for a ctx.host call that cannot be made: its call
        ended, the name is not registered, or there is no transport."""
        if ctx._ended:
            return HostError("snakepit: ctx.host of call %r used after the call ended" % (ctx.correlation_id,), "ended")
        if self.host_transport is None:
            return HostError("this worker has no host transport", "unknown")
        return HostError("no host function %r (registered: %s)" % (name, ", ".join(self.host_names) or "none"),
                         "unknown")

    @staticmethod
    def host_payload(name, kwargs):
        """kwargs of a host call that marshal refuses, converted as results
        are (TypeError when they cannot be)."""
        try:
            return _wire.dumps(kwargs)
        except _wire.NotSerializable as e:
            raise TypeError("host function %r: %s" % (name, e)) from None

    @staticmethod
    def host_raise(reply):
        """Raise the HostError an error reply (host.Reply) describes."""
        kind, message, python_type = _marshal_loads(memoryview(reply)[1:])
        e = _host_error(kind, python_type)(message)  # one argument: OSError reads more as errno, strerror
        e.kind, e.python_type = kind, python_type
        raise e

    def runs_here(self, ctx):
        """Whether ctx is the call (or stream operation) the calling thread
        runs, for ctx.cancelled()'s hold (see hold_interrupt); the profile's
        hold tells threads the handler started apart."""
        rec = _current_call.get()
        if rec is not None:
            return rec.ctx is ctx
        return self._call is ctx

    def cancel(self, call_id=None):
        """Cancel a call: ctx.cancelled() turns true.

        Without call_id (concurrency 1): the running call; the profile
        interrupts it. With call_id (concurrency > 1): that call only. An
        async handler's task is cancelled (the handler sees
        asyncio.CancelledError; the reply is K_CANCELLED) and cancel
        returns True; for a plain handler it returns False and the profile
        interrupts the thread running it. A call that has not started yet
        does not run (K_CANCELLED)."""
        if call_id is None:
            ctx = self._call
            if ctx is not None:
                ctx._cancelled = True
            return False
        with self._mt_lock:
            rec = self._calls.get(call_id)
            if rec is None:
                early = self._early_cancels
                early[call_id] = True
                while len(early) > MAX_EARLY_CANCELS:
                    early.popitem(last=False)
                return False
            rec.cancelled = True
            if rec.ctx is not None:
                rec.ctx._cancelled = True
            if not rec.in_loop:
                return False
            loop = self._mt_loop
        loop.call_soon_threadsafe(_cancel_task, rec)
        return True

    # ---- calls ----

    # The thread profile takes a large bytes-like result as a memoryview
    # reply, which it copies once into the host's memory (marshal would
    # copy it first).
    raw_results = False

    # The process profile takes a result that is one of the call's buffers
    # itself (an echo) as an EchoedBuffer, which it replies with in place.
    echo_buffers = False

    def call(self, command, kwargs, correlation_id, session_id, deadline, attachments, buffers=None,
             call_id=None, traceparent=None):
        """Run a command. Returns an envelope (see the module doc).

        buffers: the call's out-of-band payloads, which markers in kwargs
        refer to (see _wire.resolve). call_id: the call's id, with
        concurrency > 1 (see the module doc). traceparent: the W3C
        traceparent of the host's span, as ctx.traceparent."""
        if call_id is not None or self.concurrency != 1:
            return self._call_mt(command, kwargs, correlation_id, session_id, deadline, attachments,
                                 buffers, call_id, traceparent)
        collector = self._collector
        collector.current = (command, correlation_id)
        views = None
        try:
            if buffers or kwargs.__class__ is tuple:  # markers: see _wire.resolve
                try:
                    kwargs, views = _wire.resolve(kwargs, buffers or ())
                except _wire.BadMarker as e:
                    return _error(K_BAD_ARGS, message=str(e), logs=collector.drain())
            if deadline is not None and time.time() >= deadline:
                raise Cancelled("the deadline passed before the handler started")
            handler = self._handlers.get(command)
            if handler is not None and not handler[1]:
                # The common case, inlined: no context wanted.
                try:
                    result = handler[0](**kwargs)
                except TypeError as e:
                    if e.__traceback__ is not None and e.__traceback__.tb_next is None:
                        raise _Refuse(_error(K_BAD_ARGS, message=str(e), logs=collector.drain())) from None
                    raise
            else:
                result = self._invoke(command, kwargs, correlation_id, session_id, deadline, attachments,
                                      traceparent)
            if result.__class__ not in _PLAIN:
                if inspect.iscoroutine(result):
                    result = self._run(result)
                elif _is_stream(result):
                    _close_quietly(result, self)
                    return _error(K_STREAMING, message="command %r streams: call it with Stream" % command,
                                  logs=collector.drain())
            if self.raw_results and isinstance(result, _BYTESLIKE) and not (collector.pending or collector.dropped):
                raw = _wire.raw_bytes(result)
                if raw is not None and raw.nbytes >= RAW_MIN:
                    if self.echo_buffers and views:
                        i = _wire.buffer_index(views, result)
                        if i is not None:
                            return _wire.EchoedBuffer(i, raw)
                    return raw
            if "numpy" in _modules or "array" in _modules:
                payload = _wire.dumps(result)  # see _wire.scan_needed
            else:
                try:
                    payload = _marshal_dumps(result, 4)
                except ValueError:
                    payload = _wire.dumps(result)
        except _Refuse as r:
            return r.reply
        except _wire.NotSerializable as e:
            return _error(K_NOT_SERIALIZABLE, message=str(e), logs=collector.drain())
        except Cancelled as e:
            return _error(K_CANCELLED, e, logs=collector.drain())
        except BaseException as e:
            return _error(K_PYTHON, e, logs=collector.drain())
        finally:
            ctx = self._call
            if ctx is not None:
                ctx._ended = True
            self._call = None
            collector.current = None
            if views:
                _wire.release(views)
        if collector.pending or collector.dropped:
            return (OK, payload, collector.drain())
        return payload

    def stream_open(self, command, kwargs, correlation_id, session_id, deadline, attachments, buffers=None,
                    call_id=None, traceparent=None):
        """Start a streaming command; chunks come from stream_next.

        buffers: as for call, but bytes the stream keeps (not views).
        call_id: the stream's id, with concurrency > 1. traceparent: as
        for call."""
        if call_id is not None or self.concurrency != 1:
            return self._stream_open_mt(command, kwargs, correlation_id, session_id, deadline, attachments,
                                        buffers, call_id, traceparent)
        if self._stream is not None:
            return _error(K_PROTOCOL, message="a stream is already open on this worker")
        self._collector.current = (command, correlation_id)
        ctx = None
        opened = False
        try:
            try:
                if buffers or kwargs.__class__ is tuple:  # markers: see _wire.resolve
                    try:
                        kwargs, _ = _wire.resolve(kwargs, buffers or ())
                    except _wire.BadMarker as e:
                        return _error(K_BAD_ARGS, message=str(e), logs=self._collector.drain())
                if deadline is not None and time.time() >= deadline:
                    raise Cancelled("the deadline passed before the handler started")
                result = self._invoke(command, kwargs, correlation_id, session_id, deadline, attachments,
                                      traceparent)
                if inspect.iscoroutine(result):
                    result = self._run(result)
            except _Refuse as r:
                return r.reply
            except Cancelled as e:
                return _error(K_CANCELLED, e, logs=self._collector.drain())
            except BaseException as e:
                return _error(K_PYTHON, e, logs=self._collector.drain())
            finally:
                ctx, self._call = self._call, None
            if not _is_stream(result):
                return _error(K_NOT_STREAMING, message="command %r returned %s, not a generator: call it with Call"
                              % (command, type(result).__name__), logs=self._collector.drain())
            is_async = hasattr(result, "__anext__")
            self._stream = (result, is_async, command, correlation_id, ctx)
            opened = True
            return self._ok(_wire.dumps(None))
        finally:
            if ctx is not None and not opened:
                ctx._ended = True
            self._collector.current = None

    def stream_next(self, call_id=None):
        """The next chunk: OK with the chunk, END, or ERROR."""
        if call_id is not None or self.concurrency != 1:
            return self._stream_next_mt(call_id)
        if self._stream is None:
            return _error(K_PROTOCOL, message="no stream is open")
        it, is_async, command, correlation_id, ctx = self._stream
        self._collector.current = (command, correlation_id)
        self._call = ctx
        if ctx is not None:
            ctx._held = False  # a hold is per operation
        try:
            try:
                if is_async:
                    item = self._run(it.__anext__())
                else:
                    item = next(it)
                payload = _wire.dumps(item)
            except (StopIteration, StopAsyncIteration):
                self._end_stream()
                return (END, None, self._collector.drain())
            except _wire.NotSerializable as e:
                self._abandon_stream()
                return _error(K_NOT_SERIALIZABLE, message=str(e), logs=self._collector.drain())
            except Cancelled as e:
                self._abandon_stream()
                return _error(K_CANCELLED, e, logs=self._collector.drain())
            except BaseException as e:
                self._end_stream()
                return _error(K_PYTHON, e, logs=self._collector.drain())
            return self._ok(payload)
        finally:
            self._call = None
            self._collector.current = None

    def stream_close(self, call_id=None):
        """Close the open stream early: the generator's finally blocks run."""
        if call_id is not None or self.concurrency != 1:
            return self._stream_close_mt(call_id)
        if self._stream is None:
            return self._ok(_wire.dumps(None))
        it, _, command, correlation_id, _ = self._stream
        self._end_stream()
        self._collector.current = (command, correlation_id)
        try:
            _close_quietly(it, self)
        finally:
            self._collector.current = None
        return self._ok(_wire.dumps(None))

    def _abandon_stream(self):
        it = self._stream[0]
        self._end_stream()
        _close_quietly(it, self)

    def _end_stream(self):
        """Forget the open stream; its ctx.host stops working."""
        ctx = self._stream[4]
        self._stream = None
        if ctx is not None:
            ctx._ended = True

    def _invoke(self, command, kwargs, correlation_id, session_id, deadline, attachments, traceparent=None):
        handler = self._handlers.get(command)
        if handler is None:
            raise _Refuse(_error(K_NOT_FOUND, message="command %r not found" % (command,),
                          extra=sorted(self._handlers), logs=self._collector.drain()))
        fn, wants_ctx = handler
        if kwargs is None:
            kwargs = {}
        if wants_ctx:
            if "ctx" in kwargs:
                raise _Refuse(_error(K_BAD_ARGS, message="argument 'ctx' is reserved for the call context",
                                     logs=self._collector.drain()))
            ctx = Context(self, command, correlation_id, session_id, deadline, attachments, traceparent)
            self._call = ctx
            kwargs["ctx"] = ctx
        try:
            return fn(**kwargs)
        except TypeError as e:
            # Raised by the call itself (no frame of the handler ran): the
            # arguments do not fit the signature.
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:
                raise _Refuse(_error(K_BAD_ARGS, message=str(e), logs=self._collector.drain())) from None
            raise

    def _ok(self, payload):
        logs = self._collector.drain()
        if logs is None:
            return payload
        return (OK, payload, logs)

    def _run(self, awaitable):
        if self._loop is None:
            import asyncio
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        task = loop.create_task(_await(awaitable))
        try:
            return loop.run_until_complete(task)
        except Cancelled:
            # Interrupted inside the loop: cancel the task and let it unwind.
            task.cancel()
            try:
                loop.run_until_complete(_settle(task))
            except BaseException:
                pass
            raise

    # ---- concurrent calls (concurrency > 1) ----

    def _begin(self, rec):
        """Put rec in flight; False when its call was cancelled already."""
        with self._mt_lock:
            if self._early_cancels.pop(rec.call_id, None):
                return False
            self._calls[rec.call_id] = rec
            return True

    def _finish(self, rec):
        with self._mt_lock:
            if self._calls.get(rec.call_id) is rec:
                del self._calls[rec.call_id]

    def _drain(self, rec):
        """rec's log records, with those emitted outside any call."""
        logs = rec.logs
        if rec.dropped:
            logs.append((logging.WARNING, "snakepit", "%d log records dropped (more than %d pending)"
                         % (rec.dropped, MAX_PENDING_LOGS), rec.command, rec.correlation_id, None))
            rec.dropped = 0
        rec.logs = []
        other = self._collector.drain()
        if other:
            logs = other + logs
        return logs or None

    def _ok_mt(self, rec, payload):
        logs = self._drain(rec)
        if logs is None:
            return payload
        return (OK, payload, logs)

    def _call_mt(self, command, kwargs, correlation_id, session_id, deadline, attachments, buffers, call_id,
                 traceparent=None):
        if call_id is None:
            return _error(K_PROTOCOL, message="a call without a call_id in a concurrent dispatcher")
        _use_asyncio_cancellation()
        rec = _CallRec(self._collector, call_id, command, correlation_id)
        if not self._begin(rec):
            return _error(K_CANCELLED, message="cancelled before the handler started", logs=self._drain(rec))
        token = _current_call.set(rec)
        views = None
        try:
            if buffers or kwargs.__class__ is tuple:  # markers: see _wire.resolve
                try:
                    kwargs, views = _wire.resolve(kwargs, buffers or ())
                except _wire.BadMarker as e:
                    return _error(K_BAD_ARGS, message=str(e), logs=self._drain(rec))
            if deadline is not None and time.time() >= deadline:
                raise Cancelled("the deadline passed before the handler started")
            result = self._invoke_mt(rec, command, kwargs, correlation_id, session_id, deadline, attachments,
                                     traceparent)
            if result.__class__ not in _PLAIN and _is_stream(result):
                _close_quietly_mt(result, self, rec)
                return _error(K_STREAMING, message="command %r streams: call it with Stream" % command,
                              logs=self._drain(rec))
            if self.raw_results and isinstance(result, _BYTESLIKE) and not (rec.logs or rec.dropped):
                raw = _wire.raw_bytes(result)
                if raw is not None and raw.nbytes >= RAW_MIN:
                    return raw
            payload = _wire.dumps(result)
        except _Refuse as r:
            return r.reply
        except _wire.NotSerializable as e:
            return _error(K_NOT_SERIALIZABLE, message=str(e), logs=self._drain(rec))
        except _CANCELLED as e:
            return _error(K_CANCELLED, _as_cancelled(e), logs=self._drain(rec))
        except BaseException as e:
            return _error(K_PYTHON, e, logs=self._drain(rec))
        finally:
            if rec.ctx is not None:
                rec.ctx._ended = True
            self._finish(rec)
            _current_call.reset(token)
            if views:
                _wire.release(views)
        return self._ok_mt(rec, payload)

    def _invoke_mt(self, rec, command, kwargs, correlation_id, session_id, deadline, attachments,
                   traceparent=None):
        """Run command's handler for rec: an async one (and a coroutine a
        plain one returns) as a task on the event loop, a plain one on this
        thread, under the lock unless it is thread-safe. A stream's
        generator is returned as it is."""
        handler = self._handlers.get(command)
        if handler is None:
            raise _Refuse(_error(K_NOT_FOUND, message="command %r not found" % (command,),
                          extra=sorted(self._handlers), logs=self._drain(rec)))
        fn, wants_ctx = handler
        if kwargs is None:
            kwargs = {}
        if wants_ctx:
            if "ctx" in kwargs:
                raise _Refuse(_error(K_BAD_ARGS, message="argument 'ctx' is reserved for the call context",
                                     logs=self._drain(rec)))
            ctx = Context(self, command, correlation_id, session_id, deadline, attachments, traceparent)
            ctx._token = rec.call_id
            ctx._cancelled = rec.cancelled
            rec.ctx = ctx
            kwargs["ctx"] = ctx
        info = self.commands[command]
        if info.is_async or self._thread_safe[command]:
            result = self._apply(rec, fn, kwargs)
        else:
            with self._sync_lock:
                result = self._apply(rec, fn, kwargs)
        if inspect.iscoroutine(result):
            result = self._await_mt(rec, result)
        return result

    def _apply(self, rec, fn, kwargs):
        if rec.cancelled:
            raise Cancelled("cancelled before the handler started")
        gate = self.user_gate
        if gate is not None:
            gate.open()
        try:
            return fn(**kwargs)
        except TypeError as e:
            # Raised by the call itself (no frame of the handler ran): the
            # arguments do not fit the signature.
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:
                raise _Refuse(_error(K_BAD_ARGS, message=str(e), logs=self._drain(rec))) from None
            raise
        finally:
            if gate is not None:
                gate.close()

    def _next_item(self, it):
        """The next item of a plain stream's generator (its own code runs
        within the user gate, as a handler's does)."""
        gate = self.user_gate
        if gate is None:
            return next(it)
        gate.open()
        try:
            return next(it)
        finally:
            gate.close()

    def _loop_mt(self):
        """The concurrent calls' event loop, started on its thread at first use."""
        loop = self._mt_loop
        if loop is not None:
            return loop
        with self._mt_lock:
            if self._mt_loop is None:
                import asyncio
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=_run_loop, args=(loop,), name="snakepit-loop", daemon=False)
                t.start()
                self._mt_thread = t
                self._mt_loop = loop
            return self._mt_loop

    def _stop_loop_thread(self):
        with self._mt_lock:
            loop, t = self._mt_loop, self._mt_thread
            self._mt_loop = self._mt_thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            t.join()

    def _await_mt(self, rec, awaitable):
        """Run awaitable as rec's task on the event loop; wait for its
        outcome (the GIL released)."""
        import asyncio
        loop = self._loop_mt()
        with self._mt_lock:
            rec.in_loop = True
        fut = asyncio.run_coroutine_threadsafe(_task_main(rec, awaitable), loop)
        try:
            return fut.result()
        finally:
            with self._mt_lock:
                rec.in_loop = False
                rec.task = None

    def _stream_open_mt(self, command, kwargs, correlation_id, session_id, deadline, attachments, buffers,
                        call_id, traceparent=None):
        if call_id is None:
            return _error(K_PROTOCOL, message="a stream without a call_id in a concurrent dispatcher")
        _use_asyncio_cancellation()
        rec = _CallRec(self._collector, call_id, command, correlation_id)
        if call_id in self._streams:
            return _error(K_PROTOCOL, message="stream %r is already open" % (call_id,))
        if not self._begin(rec):
            return _error(K_CANCELLED, message="cancelled before the handler started", logs=self._drain(rec))
        token = _current_call.set(rec)
        opened = False
        try:
            try:
                if buffers or kwargs.__class__ is tuple:  # markers: see _wire.resolve
                    try:
                        kwargs, _ = _wire.resolve(kwargs, buffers or ())
                    except _wire.BadMarker as e:
                        return _error(K_BAD_ARGS, message=str(e), logs=self._drain(rec))
                if deadline is not None and time.time() >= deadline:
                    raise Cancelled("the deadline passed before the handler started")
                result = self._invoke_mt(rec, command, kwargs, correlation_id, session_id, deadline, attachments,
                                         traceparent)
            except _Refuse as r:
                return r.reply
            except _CANCELLED as e:
                return _error(K_CANCELLED, _as_cancelled(e), logs=self._drain(rec))
            except BaseException as e:
                return _error(K_PYTHON, e, logs=self._drain(rec))
            if not _is_stream(result):
                return _error(K_NOT_STREAMING, message="command %r returned %s, not a generator: call it with Call"
                              % (command, type(result).__name__), logs=self._drain(rec))
            is_async = hasattr(result, "__anext__")
            lock = None if is_async or self._thread_safe[command] else self._sync_lock
            self._streams[call_id] = (result, is_async, command, correlation_id, rec.ctx, lock)
            opened = True
            return self._ok_mt(rec, _wire.dumps(None))
        finally:
            if rec.ctx is not None and not opened:
                rec.ctx._ended = True
            self._finish(rec)
            _current_call.reset(token)

    def _stream_next_mt(self, call_id):
        entry = self._streams.get(call_id)
        if entry is None:
            return _error(K_PROTOCOL, message="no stream %r is open" % (call_id,))
        it, is_async, command, correlation_id, ctx, lock = entry
        rec = _CallRec(self._collector, call_id, command, correlation_id, ctx)
        if not self._begin(rec):
            self._end_stream_mt(call_id, close=True)
            return _error(K_CANCELLED, message="cancelled", logs=self._drain(rec))
        token = _current_call.set(rec)
        try:
            try:
                if is_async:
                    item = self._await_mt(rec, it.__anext__())
                elif lock is not None:
                    with lock:
                        item = self._next_item(it)
                else:
                    item = self._next_item(it)
                payload = _wire.dumps(item)
            except (StopIteration, StopAsyncIteration):
                self._end_stream_mt(call_id)
                return (END, None, self._drain(rec))
            except _wire.NotSerializable as e:
                self._end_stream_mt(call_id, close=True)
                return _error(K_NOT_SERIALIZABLE, message=str(e), logs=self._drain(rec))
            except _CANCELLED as e:
                self._end_stream_mt(call_id, close=True)
                return _error(K_CANCELLED, _as_cancelled(e), logs=self._drain(rec))
            except BaseException as e:
                self._end_stream_mt(call_id)
                return _error(K_PYTHON, e, logs=self._drain(rec))
            return self._ok_mt(rec, payload)
        finally:
            self._finish(rec)
            _current_call.reset(token)

    def _stream_close_mt(self, call_id):
        entry = self._streams.get(call_id)
        if entry is None:
            return self._ok(_wire.dumps(None))
        rec = _CallRec(self._collector, call_id, entry[2], entry[3], entry[4])
        self._begin(rec)  # a close runs even when cancelled
        token = _current_call.set(rec)
        try:
            self._end_stream_mt(call_id, close=True, rec=rec)
        finally:
            self._finish(rec)
            _current_call.reset(token)
        return self._ok_mt(rec, _wire.dumps(None))

    def _end_stream_mt(self, call_id, close=False, rec=None):
        """Forget stream call_id (its ctx.host stops working); close its
        generator when close is set."""
        entry = self._streams.pop(call_id, None)
        if entry is None:
            return
        it, _, command, correlation_id, ctx, lock = entry
        if ctx is not None:
            ctx._ended = True
        if close:
            if rec is None:
                rec = _CallRec(self._collector, call_id, command, correlation_id, ctx)
            if lock is not None:
                with lock:
                    _close_quietly_mt(it, self, rec)
            else:
                _close_quietly_mt(it, self, rec)


async def _await(awaitable):
    return await awaitable


async def _settle(task):
    try:
        await task
    except BaseException:
        pass


async def _task_main(rec, awaitable):
    """A concurrent call's task: its own current call, cancellable by
    Dispatcher.cancel."""
    import asyncio
    _current_call.set(rec)
    rec.task = asyncio.current_task()
    if rec.cancelled:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise Cancelled("cancelled before the handler started")
    try:
        return await awaitable
    except asyncio.CancelledError:
        if rec.cancelled:
            raise Cancelled("cancelled by the host") from None
        raise


def _cancel_task(rec):
    """On the event loop: cancel rec's task (a task that has not started
    yet sees rec.cancelled when it does)."""
    task = rec.task
    if task is not None:
        task.cancel()


def _run_loop(loop):
    import asyncio
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _cancelled_types():
    import asyncio
    import concurrent.futures
    return (Cancelled, asyncio.CancelledError, concurrent.futures.CancelledError)


# What ends a concurrent call as cancelled; asyncio's exceptions are added
# by the first concurrent call (asyncio is not imported before).
_CANCELLED = (Cancelled,)


def _use_asyncio_cancellation():
    global _CANCELLED
    if len(_CANCELLED) == 1:
        _CANCELLED = _cancelled_types()


def _as_cancelled(e):
    """A Cancelled for an asyncio cancellation (the reply names it so)."""
    if isinstance(e, Cancelled):
        return e
    c = Cancelled("cancelled")
    c.__traceback__ = e.__traceback__
    return c


def _close_quietly_mt(it, dispatcher, rec):
    try:
        if hasattr(it, "aclose"):
            dispatcher._await_mt(rec, it.aclose())
        elif hasattr(it, "close"):
            it.close()
    except BaseException:
        logging.getLogger("snakepit").exception("closing a stream raised")


def _is_stream(v):
    return (hasattr(v, "__next__") and hasattr(v, "__iter__")) or hasattr(v, "__anext__")


def _close_quietly(it, dispatcher):
    try:
        if hasattr(it, "aclose"):
            dispatcher._run(it.aclose())
        elif hasattr(it, "close"):
            it.close()
    except BaseException:
        logging.getLogger("snakepit").exception("closing a stream raised")


_host_errors = {}


def _host_error(kind, python_type):
    """The HostError class for a reply's kind and marked Python type: also
    a TimeoutError for "deadline", a Cancelled for "cancelled", a TypeError
    for "arguments", and an instance of python_type when it names an
    exception class this interpreter can import."""
    key = (kind, python_type)
    cls = _host_errors.get(key)
    if cls is not None:
        return cls
    extra = {"deadline": TimeoutError, "cancelled": Cancelled, "arguments": TypeError}.get(kind)
    bases = [HostError]
    if extra is not None:
        bases.append(extra)
    if python_type:
        t = _python_type(python_type)
        if t is not None and not issubclass(HostError, t) and t not in bases:
            bases.append(t)
    if len(bases) == 1:
        cls = HostError
    else:
        try:
            cls = type("HostError", tuple(bases), {"__module__": "snakepit"})
        except TypeError:  # the types' layouts do not combine
            cls = type("HostError", tuple(bases[:2]), {"__module__": "snakepit"}) if extra else HostError
    if len(_host_errors) < 256:
        _host_errors[key] = cls
    return cls


def _python_type(name):
    """The exception class name names (a builtin, or "module.Name"), or
    None."""
    import builtins
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            t = getattr(importlib.import_module(module), attr, None)
        except Exception:
            return None
    else:
        t = getattr(builtins, name, None)
    if isinstance(t, type) and issubclass(t, BaseException):
        return t
    return None
