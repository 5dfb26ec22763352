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
    if isinstance(v, memoryview):
        return _from_memoryview(v, depth)
    if isinstance(v, bytearray):
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
    np = mods.get("numpy")
    if np is not None and isinstance(v, np.ndarray):
        return _from_ndarray(v, np, depth)
    array = mods.get("array")
    if array is not None and isinstance(v, array.array):
        return _from_memoryview(memoryview(v), depth)
    tolist = getattr(v, "tolist", None)  # numpy scalars
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


# ---- arrays ----
#
# Values marshal has no type for cross as marker tuples whose first item
# is MARK, a str no real value starts with:
#
#   (MARK, "array", dtype, shape, data)  n-dimensional numeric data: dtype
#       numpy's little-endian spelling (the keys of _DTYPES), shape a tuple
#       of ints, data the elements in C order as bytes, or an int indexing
#       the call's out-of-band buffers.
#
# The Go side wraps keyword arguments that contain markers as
# (MARK, "call", kwargs) so the dispatcher only looks for markers when a
# call has some (see unwrap).

MARK = "\x00snakepit"

# dtype -> (memoryview format, item size)
_DTYPES = {
    "<f8": ("d", 8), "<f4": ("f", 4),
    "|i1": ("b", 1), "<i2": ("h", 2), "<i4": ("i", 4), "<i8": ("q", 8),
    "|u1": ("B", 1), "<u2": ("H", 2), "<u4": ("I", 4), "<u8": ("Q", 8),
    "|b1": ("?", 1),
}
# memoryview / array.array format (native, little-endian hosts) -> dtype by
# item size
_FORMATS = {
    "d": "<f8", "f": "<f4", "?": "|b1",
    "b": "|i%d", "h": "<i%d", "i": "<i%d", "l": "<i%d", "q": "<i%d", "n": "<i%d",
    "B": "|u%d", "H": "<u%d", "I": "<u%d", "L": "<u%d", "Q": "<u%d", "N": "<u%d",
}
_MAX_DIMS = 64
_LITTLE = sys.byteorder == "little"


class BadMarker(ValueError):
    """An argument marker that does not describe a valid value."""


def unwrap(wrapped):
    """The keyword arguments of a call the Go side wrapped as
    (MARK, "call", kwargs[, buffers]), with their markers resolved."""
    if len(wrapped) < 3 or wrapped[0] != MARK or wrapped[1] != "call":
        raise BadMarker("keyword arguments are a tuple that is not a call marker")
    kwargs = wrapped[2]
    if kwargs is None:
        return {}
    if type(kwargs) is not dict:
        raise BadMarker("keyword arguments are %s, not a dict" % _qual(type(kwargs)))
    return resolve(kwargs, wrapped[3] if len(wrapped) > 3 else ())


def resolve(kwargs, buffers):
    """kwargs with every marker in them replaced by its value. Raises
    BadMarker for a marker that is not valid."""
    try:
        return {k: _resolve(v, buffers, 0) for k, v in kwargs.items()}
    except RecursionError:
        raise BadMarker("arguments nested too deeply to look for markers") from None


def _resolve(v, buffers, depth):
    t = type(v)
    if t is tuple:
        if len(v) >= 2 and v[0] == MARK:
            conv = _MARKERS.get(v[1])
            if conv is None:
                raise BadMarker("unknown marker %r" % (v[1],))
            return conv(v, buffers)
        return tuple([_resolve(x, buffers, depth + 1) for x in v])
    if t is list:
        return [x if type(x) in _SIMPLE else _resolve(x, buffers, depth + 1) for x in v]
    if t is dict:
        return {k: x if type(x) in _SIMPLE else _resolve(x, buffers, depth + 1) for k, x in v.items()}
    return v


_numpy = None  # the module, False when it cannot be imported here


def _array(m, buffers):
    """An array marker as a read-only numpy.ndarray, or as a read-only
    memoryview cast to its format and shape where numpy cannot be
    imported (one with a zero dimension is a one-dimensional empty view:
    memoryview cannot have zeros in its shape)."""
    global _numpy
    if len(m) != 5:
        raise BadMarker("array marker of %d fields, want 5" % len(m))
    _, _, dtype, shape, data = m
    spec = _DTYPES.get(dtype) if type(dtype) is str else None
    if spec is None:
        raise BadMarker("array of unsupported dtype %r" % (dtype,))
    fmt, size = spec
    if type(shape) is not tuple or len(shape) > _MAX_DIMS or any(type(d) is not int or d < 0 for d in shape):
        raise BadMarker("array shape %r is not a tuple of at most %d non-negative ints" % (shape, _MAX_DIMS))
    if type(data) is int:
        if not 0 <= data < len(buffers):
            raise BadMarker("array data refers to buffer %d of %d" % (data, len(buffers)))
        data = buffers[data]
    elif type(data) is not bytes:
        raise BadMarker("array data is %s, want bytes" % _qual(type(data)))
    n = 1
    for d in shape:
        n *= d
    view = memoryview(data)
    if view.nbytes != n * size:
        raise BadMarker("array %s of shape %r needs %d bytes of data, has %d" % (dtype, shape, n * size, view.nbytes))
    if not _LITTLE:
        raise BadMarker("arrays are little-endian and this host is not")
    if _numpy is None:
        try:
            import numpy
            _numpy = numpy
        except Exception:  # absent, or refusing this sub-interpreter
            _numpy = False
    if _numpy:
        a = _numpy.frombuffer(view, dtype=dtype).reshape(shape)
        a.flags.writeable = False
        return a
    # Results are scanned for buffers (see scan_needed) once the array
    # module is loaded: a handler may return the view it was given.
    if "array" not in _modules:
        import array  # noqa: F401
    view = view.toreadonly()
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if n == 0:
        return view.cast(fmt)
    return view.cast(fmt, shape)


_MARKERS = {"array": _array}


def _array_marker(dtype, shape, data):
    return (MARK, "array", dtype, tuple(shape), data)


def _from_ndarray(a, np, depth):
    """A numpy array result as an array marker, its data inline."""
    if a.ndim == 0:
        return to_wire(a.item(), depth + 1)
    dt = a.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and not _LITTLE):
        dt = dt.newbyteorder("<")
        a = a.astype(dt)
    name = dt.str
    if name not in _DTYPES:
        raise NotSerializable("numpy array of dtype %s (arrays carry %s)" % (a.dtype, ", ".join(_DTYPES)))
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return _array_marker(name, a.shape, memoryview(a))


def _from_memoryview(v, depth):
    """A memoryview (or array.array) result: bytes when it holds bytes,
    an array marker when it holds numbers."""
    fmt = v.format
    if fmt in ("B", "c") and v.ndim <= 1:
        return bytes(v)
    if v.ndim == 0:
        return to_wire(v.tolist(), depth + 1)
    if len(fmt) == 2 and fmt[0] in "@=<":
        fmt = fmt[1:]
    dtype = _FORMATS.get(fmt) if _LITTLE else None
    if dtype is None:
        raise NotSerializable("memoryview of format %r (arrays carry the numeric formats %s)"
                              % (v.format, "".join(_FORMATS)))
    if "%" in dtype:
        dtype = dtype % v.itemsize
        if dtype not in _DTYPES:
            raise NotSerializable("memoryview of format %r and item size %d" % (v.format, v.itemsize))
    data = v if v.c_contiguous else v.tobytes()
    return _array_marker(dtype, v.shape, data)
