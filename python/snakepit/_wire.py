"""Values on the wire: marshal version 4 of the types snakepit carries.

This module imports only marshal at load time: it is also loaded into every
interpreter the Go side creates, and conversions are the rare path.
"""

import marshal
import sys

VERSION = 4
MAX_DEPTH = 2000
_SIMPLE = (type(None), bool, int, float, str, bytes)


def dumps(value):
    """Marshal value, converting what has an obvious conversion first.
    Raises NotSerializable naming the part that cannot cross."""
    try:
        if scan_needed():
            value = to_wire(value, 0)
        return marshal.dumps(value, VERSION)
    except ValueError:
        pass
    except RecursionError:
        raise NotSerializable("nested more than %d levels deep" % MAX_DEPTH) from None
    try:
        converted = to_wire(value, 0)
    except RecursionError:
        raise NotSerializable("nested more than %d levels deep" % MAX_DEPTH) from None
    try:
        return marshal.dumps(converted, VERSION)
    except ValueError as e:
        raise NotSerializable(describe(converted) or str(e)) from None


_modules = sys.modules


def scan_needed():
    """Whether results must be scanned before marshal sees them.

    marshal writes any object that exposes the buffer protocol as bytes: a
    numpy array or an array.array would reach Go as its raw memory. Those
    types only exist once their modules are loaded, so only then is each
    result converted first (numpy scalars, which also subclass int/float,
    are caught by the same pass)."""
    return "numpy" in _modules or "array" in _modules


class NotSerializable(Exception):
    """A value that cannot cross to Go."""


def to_wire(v, depth):
    """Return v with documented conversions applied, recursively.

    The carried types return at once; other values go to _convert, which
    looks up the modules that could have made them in sys.modules (a value
    of a module's type cannot exist before the module is loaded), so no
    import runs here and nothing is imported on a value's behalf."""
    t = type(v)
    if t in _SIMPLE:
        return v
    if depth > MAX_DEPTH:
        raise NotSerializable("nested more than %d levels deep" % MAX_DEPTH)
    if t is list or t is tuple:
        items = [x if type(x) in _SIMPLE else to_wire(x, depth + 1) for x in v]
        if all(a is b for a, b in zip(items, v)):
            return v
        return t(items)
    if t is dict:
        out = {k: x if type(x) in _SIMPLE else to_wire(x, depth + 1) for k, x in v.items()}
        if all(out[k] is x for k, x in v.items()):
            return v
        return out
    return _convert(v, t, depth)


def _convert(v, t, depth):
    """The documented conversions of a value that is not of a carried type."""
    mods = _modules
    enum = mods.get("enum")
    if enum is not None and isinstance(v, enum.Enum):
        return to_wire(v.value, depth + 1)
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, dict):
        return {k: to_wire(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_wire(x, depth + 1) for x in v]
    if isinstance(v, (set, frozenset)):
        items = [to_wire(x, depth + 1) for x in v]
        try:
            items.sort()
        except TypeError:
            pass
        return items
    datetime = mods.get("datetime")
    if datetime is not None:
        if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
            return v.isoformat()
        if isinstance(v, datetime.timedelta):
            return v.total_seconds()
    for name, cls in (("decimal", "Decimal"), ("uuid", "UUID")):
        m = mods.get(name)
        if m is not None and isinstance(v, getattr(m, cls)):
            return str(v)
    if hasattr(t, "__fspath__"):  # os.PathLike
        return mods["os"].fspath(v)
    dataclasses = mods.get("dataclasses")
    if dataclasses is not None and dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_wire(dataclasses.asdict(v), depth + 1)
    tolist = getattr(v, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return to_wire(tolist(), depth + 1)
    return v  # left for describe() to name


def _qual(t):
    m = getattr(t, "__module__", "builtins")
    q = getattr(t, "__qualname__", getattr(t, "__name__", "?"))
    return q if m == "builtins" else m + "." + q


# Bounds of a path in a message: a value nested thousands of levels deep
# keeps its outermost and innermost elements, elided between.
_PATH_HEAD = 96
_PATH_TAIL = 96


def _short(path):
    if len(path) <= _PATH_HEAD + _PATH_TAIL + 1:
        return path
    head = path[:_PATH_HEAD + 1]
    i = head.rfind("[")
    head = head[:i] if i > 0 else head[:_PATH_HEAD]
    tail = path[-_PATH_TAIL:]
    j = tail.find("[")
    tail = tail[j:] if j > 0 else tail
    return head + "\u2026" + tail


def describe(obj):
    """Name the first part of obj outside the carried types, or None."""
    stack = [("", obj, 0)]
    while stack:
        path, o, depth = stack.pop()
        t = type(o)
        if t in _SIMPLE:
            continue
        where = _short(path) + ": " if path else ""
        if depth > MAX_DEPTH:
            return where + "nested more than %d levels deep" % MAX_DEPTH
        if t is list or t is tuple:
            for i in range(len(o) - 1, -1, -1):
                stack.append((path + "[%d]" % i, o[i], depth + 1))
            continue
        if t is dict:
            for k, v in reversed(list(o.items())):
                if type(k) is not str:
                    return where + "dict key of type " + _qual(type(k))
                stack.append((path + "[%r]" % (k,), v, depth + 1))
            continue
        return where + _qual(t)
    return None
