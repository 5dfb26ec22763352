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


# ---- markers: out-of-band payloads and arrays ----
#
# Values marshal has no type for cross as marker tuples whose first item
# is MARKER, a str no real value starts with:
#
#   (MARKER, "buf", i)  the call's i-th out-of-band payload: a call's large
#       payloads may travel beside its arguments.
#   (MARKER, "array", dtype, shape, data)  n-dimensional numeric data: dtype
#       numpy's little-endian spelling (the keys of _DTYPES), shape a tuple
#       of ints, data the elements in C order as bytes, or an int indexing
#       the call's out-of-band payloads.
#
# The Go side wraps keyword arguments that may contain markers as
# (MARKER, "call", kwargs), so the dispatcher only looks for markers in
# calls that have payloads or such arguments.
#
# The thread profile hands payloads over as read-only memoryviews of the
# host's memory, valid during the call only; the process profile as bytes.
#
# A host function's result (ctx.host) may hold the same markers: the thread
# profile's out-of-band result buffers are bytes objects, and arrays come
# as array markers in both profiles (see resolve_value).

MARKER = "\x00snakepit"


class BadMarker(Exception):
    """A marker in the arguments that does not fit the call's payloads."""


class _HostBuffer:
    """Exports a memoryview of host memory while its call runs (3.12+:
    Python-level buffer protocol). After the call it refuses new exports,
    so no view made later can reach memory the host may have reused."""

    __slots__ = ("_raw",)

    def __init__(self, raw):
        self._raw = raw

    def __buffer__(self, flags):
        raw = self._raw
        if raw is None:
            raise BufferError("this payload was only valid during its call")
        return raw

    def __release_buffer__(self, view):
        pass


def _view(b, hosts):
    """The handler's view of payload b."""
    if type(b) is memoryview and sys.version_info >= (3, 12):
        h = _HostBuffer(b)
        hosts.append(h)
        return memoryview(h)
    return memoryview(b)


def resolve(kwargs, buffers):
    """Return kwargs (a dict, or one wrapped as (MARKER, "call", kwargs))
    with the markers replaced by their values (views of buffers, arrays),
    and what release needs after the call. Raises BadMarker."""
    hosts = []
    views = [None] * len(buffers)
    if type(kwargs) is tuple:
        if len(kwargs) != 3 or kwargs[0] != MARKER or kwargs[1] != "call":
            raise BadMarker("keyword arguments are a tuple that is not a call marker")
        kwargs = kwargs[2]
        if kwargs is None:
            kwargs = {}
        elif type(kwargs) is not dict:
            raise BadMarker("keyword arguments are %s, not a dict" % _qual(type(kwargs)))

    def sub(v, depth):
        t = type(v)
        if t is tuple and len(v) >= 2 and v[0] == MARKER:
            return marker(v)
        if depth > MAX_DEPTH:
            raise BadMarker("arguments nested more than %d levels deep" % MAX_DEPTH)
        if t is dict:
            return {k: sub(x, depth + 1) for k, x in v.items()}
        if t is list or t is tuple:
            return t(sub(x, depth + 1) for x in v)
        return v

    def view(i):
        if not 0 <= i < len(buffers):
            raise BadMarker("payload %d of %d" % (i, len(buffers)))
        if views[i] is None:
            views[i] = _view(buffers[i], hosts)
        return views[i]

    def marker(v):
        if v[1] == "buf" and len(v) == 3 and type(v[2]) is int:
            return view(v[2])
        if v[1] == "array":
            return _array(v, view)
        raise BadMarker("unknown marker %r" % (v[1:2],))

    try:
        return sub(kwargs, 0), (views, hosts)
    except RecursionError:
        raise BadMarker("arguments nested too deeply to look for markers") from None


def resolve_value(value, buffers):
    """value (a host function's result) with its markers replaced: a
    buffer marker by buffers[i] itself (bytes), an array marker by an array
    (see _array) over its data, inline or buffers[i]. Raises BadMarker."""
    def view(i):
        if type(i) is not int or not 0 <= i < len(buffers):
            raise BadMarker("payload %r of %d" % (i, len(buffers)))
        return buffers[i]

    def sub(v, depth):
        t = type(v)
        if t is tuple and len(v) >= 2 and v[0] == MARKER:
            if v[1] == "buf" and len(v) == 3:
                return view(v[2])
            if v[1] == "array":
                return _array(v, view)
        if depth > MAX_DEPTH:
            raise BadMarker("value nested more than %d levels deep" % MAX_DEPTH)
        if t is dict:
            return {k: sub(x, depth + 1) for k, x in v.items()}
        if t is list or t is tuple:
            return t(sub(x, depth + 1) for x in v)
        return v

    try:
        return sub(value, 0)
    except RecursionError:
        raise BadMarker("value nested too deeply to look for markers") from None


def release(state):
    """End the views resolve made: views kept past the call (or exported,
    e.g. by numpy.frombuffer) stay readable, but no new ones can be made."""
    views, hosts = state
    for v in views:
        if v is not None:
            try:
                v.release()
            except BufferError:
                pass  # exported: stays until its exports go
    for h in hosts:
        h._raw = None


class EchoedBuffer:
    """A call's result that is one of its buffers, as the handler got it:
    index names the buffer, raw is a byte view of it that outlives the
    call (see Dispatcher.echo_buffers)."""

    __slots__ = ("index", "raw")

    def __init__(self, index, raw):
        self.index = index
        self.raw = raw


def buffer_index(state, v):
    """The index of the buffer resolve gave the handler as v itself, or
    None."""
    for i, b in enumerate(state[0]):
        if b is v:
            return i
    return None


def raw_bytes(v):
    """v as a C-contiguous byte memoryview, or None (also for a view of
    numbers or with a shape, which goes back as an array: see
    _from_memoryview)."""
    m = memoryview(v)
    if not m.c_contiguous or m.format not in ("B", "c") or m.ndim != 1:
        return None
    if m.format != "B":
        m = m.cast("B")
    return m


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


_numpy = None  # the module, False when it cannot be imported here


def _array(m, view):
    """An array marker as a read-only numpy.ndarray, or as a read-only
    memoryview cast to its format and shape where numpy cannot be
    imported (one with a zero dimension is a one-dimensional empty view:
    memoryview cannot have zeros in its shape). view(i) returns the i-th
    out-of-band payload, for data given as an index."""
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
        data = view(data)
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


def _array_marker(dtype, shape, data):
    return (MARKER, "array", dtype, tuple(shape), data)


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
