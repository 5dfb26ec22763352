"""The adapter API: the command decorator and the per-call context."""

import inspect
import logging
import time

__all__ = ["Cancelled", "CommandInfo", "Context", "command", "commands_of"]


class Cancelled(BaseException):
    """Raised inside a handler whose call was cancelled or ran past its
    deadline. It derives from BaseException, like asyncio.CancelledError,
    so ``except Exception`` blocks do not swallow it."""


class CommandInfo:
    """What @command recorded about a handler."""

    __slots__ = ("name", "description", "fn", "wants_ctx")

    def __init__(self, name, description, fn):
        self.name = name
        self.description = description
        self.fn = fn
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        self.wants_ctx = "ctx" in params

    def __repr__(self):
        return "CommandInfo(%r)" % (self.name,)


def command(fn=None, *, name=None, description=None):
    """Mark a function as a command Go can call.

    Use it bare (``@command``) or with options: ``name`` overrides the
    function's name, ``description`` defaults to the first line of the
    docstring.
    """

    def mark(f):
        if not callable(f):
            raise TypeError("snakepit.command: %r is not callable" % (f,))
        desc = description
        if desc is None:
            doc = inspect.getdoc(f) or ""
            desc = doc.strip().splitlines()[0] if doc.strip() else ""
        f.__snakepit_command__ = CommandInfo(name or f.__name__, desc, f)
        return f

    if fn is not None:
        return mark(fn)
    return mark


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
    ``attachments`` (a list of bytes), ``worker_id``.
    """

    __slots__ = ("command", "correlation_id", "session_id", "deadline",
                 "attachments", "worker_id", "_dispatcher", "_cancelled", "_log")

    def __init__(self, dispatcher, command, correlation_id, session_id, deadline, attachments):
        self._dispatcher = dispatcher
        self.command = command
        self.correlation_id = correlation_id
        self.session_id = session_id
        self.deadline = deadline
        self.attachments = attachments if attachments is not None else []
        self.worker_id = dispatcher.worker_id
        self._cancelled = False
        self._log = None

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
        loops can poll it to stop cleanly before Cancelled is raised."""
        return self._cancelled or (self.deadline is not None and time.time() >= self.deadline)

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
