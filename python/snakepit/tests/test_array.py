import array
import marshal
import sys
import unittest

from snakepit import _dispatch, _wire
from snakepit._dispatch import Dispatcher

MARK = _wire.MARKER

try:
    import numpy
except ImportError:
    numpy = None


def f8(*values):
    return array.array("d", values).tobytes()


def resolve(kwargs, buffers=()):
    return _wire.resolve(kwargs, buffers)[0]


def call_marker(kwargs):
    return (MARK, "call", kwargs)


class ArrayArgumentTest(unittest.TestCase):
    def setUp(self):
        self.saved = _wire._numpy

    def tearDown(self):
        _wire._numpy = self.saved

    def test_numpy_where_installed(self):
        # Debian's CPython 3.11 comes with python3-numpy; the hermetic 3.14
        # has none and gets memoryviews.
        if sys.version_info[:2] == (3, 11) and sys.executable.startswith("/usr/bin/"):
            self.assertIsNotNone(numpy, "python3-numpy is installed for the system Python")
        got = resolve({"m": (MARK, "array", "<f8", (2, 3), f8(1, 2, 3, 4, 5, 6))})["m"]
        if numpy is None:
            self.assertIsInstance(got, memoryview)
            return
        self.assertIsInstance(got, numpy.ndarray)
        self.assertEqual(got.dtype, numpy.float64)
        self.assertEqual(got.shape, (2, 3))
        self.assertEqual(got.tolist(), [[1, 2, 3], [4, 5, 6]])
        self.assertFalse(got.flags.writeable)
        with self.assertRaises(ValueError):
            got[0, 0] = 9

    def test_memoryview_fallback(self):
        _wire._numpy = False
        cases = [
            ("<f8", "d", (2, 3), f8(1, 2, 3, 4, 5, 6), [[1, 2, 3], [4, 5, 6]]),
            ("<f4", "f", (2,), array.array("f", [1.5, 2]).tobytes(), [1.5, 2]),
            ("|i1", "b", (2,), bytes([255, 1]), [-1, 1]),
            ("<i2", "h", (1,), array.array("h", [-300]).tobytes(), [-300]),
            ("<i4", "i", (1,), array.array("i", [7]).tobytes(), [7]),
            ("<i8", "q", (1,), array.array("q", [-2 ** 40]).tobytes(), [-2 ** 40]),
            ("|u1", "B", (2, 1), bytes([1, 2]), [[1], [2]]),
            ("<u2", "H", (1,), array.array("H", [65535]).tobytes(), [65535]),
            ("<u4", "I", (1,), array.array("I", [2 ** 32 - 1]).tobytes(), [2 ** 32 - 1]),
            ("<u8", "Q", (1,), array.array("Q", [2 ** 64 - 1]).tobytes(), [2 ** 64 - 1]),
            ("|b1", "?", (2,), bytes([1, 0]), [True, False]),
        ]
        for dtype, fmt, shape, data, want in cases:
            got = resolve({"x": [(MARK, "array", dtype, shape, data)]})["x"][0]
            self.assertIsInstance(got, memoryview, dtype)
            self.assertEqual((got.format, got.shape, got.readonly), (fmt, shape, True), dtype)
            self.assertEqual(got.tolist(), want, dtype)
        empty = resolve({"x": (MARK, "array", "<f8", (0, 3), b"")})["x"]
        self.assertEqual((empty.format, empty.shape), ("d", (0,)))
        scalar = resolve({"x": (MARK, "array", "<i4", (), array.array("i", [5]).tobytes())})["x"]
        self.assertEqual(scalar.tolist(), 5)

    def test_nested_and_out_of_band(self):
        _wire._numpy = False
        buf = memoryview(bytearray(f8(1, 2)))
        got = resolve({"a": {"b": [1, ("t", (MARK, "array", "<f8", (2,), 0))]}}, (buf,))
        view = got["a"]["b"][1][1]
        self.assertEqual(view.tolist(), [1.0, 2.0])
        self.assertTrue(view.readonly)
        self.assertEqual(got["a"]["b"][0], 1)

    def test_hostile_markers(self):
        bad = [
            (MARK, "array", "<f8", (2, 3), b"\0" * 47),
            (MARK, "array", "<f8", (2, 3), b"\0" * 49),
            (MARK, "array", "<f8", (-2, -3), b"\0" * 48),
            (MARK, "array", "<f8", (2 ** 40, 2 ** 40), b""),
            (MARK, "array", "<c16", (1,), b"\0" * 16),
            (MARK, "array", ">f8", (1,), b"\0" * 8),
            (MARK, "array", 8, (1,), b"\0" * 8),
            (MARK, "array", "<f8", [1], b"\0" * 8),
            (MARK, "array", "<f8", (1.0,), b"\0" * 8),
            (MARK, "array", "<f8", (True,), b"\0"),
            (MARK, "array", "<f8", (1,), "12345678"),
            (MARK, "array", "<f8", (1,), 3),
            (MARK, "array", "<f8", (1,)),
            (MARK, "array", "|u1", (1,) * 65, b"\0"),
            (MARK, "nope", 1),
        ]
        for numpy_state in (None, False):
            _wire._numpy = numpy_state
            for m in bad:
                with self.assertRaises(_wire.BadMarker, msg=repr(m)):
                    resolve({"x": m})
        for w in ((MARK, "other", {}), ("x", "call", {}), (MARK, "call", [1])):
            with self.assertRaises(_wire.BadMarker, msg=repr(w)):
                resolve(w)
        self.assertEqual(resolve((MARK, "call", None)), {})
        deep = [1]
        for _ in range(sys.getrecursionlimit() + 10):
            deep = [deep]
        with self.assertRaises(_wire.BadMarker):
            resolve({"x": deep})


class ArrayResultTest(unittest.TestCase):
    def roundtrip(self, v):
        return marshal.loads(_wire.dumps(v))

    def test_array_module_and_memoryview(self):
        got = self.roundtrip({"a": array.array("i", [1, -2]), "m": memoryview(f8(1, 2, 3, 4)).cast("d", (2, 2))})
        self.assertEqual(got["a"], (MARK, "array", "<i4", (2,), array.array("i", [1, -2]).tobytes()))
        self.assertEqual(got["m"], (MARK, "array", "<f8", (2, 2), f8(1, 2, 3, 4)))
        # Bytes stay bytes.
        self.assertEqual(self.roundtrip(memoryview(b"ab")), b"ab")
        self.assertEqual(self.roundtrip(bytearray(b"ab")), b"ab")
        # A strided view is copied into C order.
        strided = memoryview(f8(1, 2, 3, 4)).cast("d")[::2]
        self.assertEqual(self.roundtrip(strided), (MARK, "array", "<f8", (2,), f8(1, 3)))
        # 0-d views are scalars.
        self.assertEqual(self.roundtrip(memoryview(f8(1.5)).cast("d", ())), 1.5)
        with self.assertRaises(_wire.NotSerializable) as cm:
            _wire.dumps([memoryview(b"ab").cast("c", (1, 2))])
        self.assertIn("'c'", str(cm.exception))

    def test_numpy_results(self):
        if numpy is None:
            self.assertNotIn("numpy", sys.modules)
            return
        a = numpy.arange(6, dtype=numpy.float64).reshape(2, 3)
        self.assertEqual(self.roundtrip(a), (MARK, "array", "<f8", (2, 3), a.tobytes()))
        self.assertEqual(self.roundtrip(a.T), (MARK, "array", "<f8", (3, 2), numpy.ascontiguousarray(a.T).tobytes()))
        big = numpy.arange(3, dtype=">i4")
        self.assertEqual(self.roundtrip(big), (MARK, "array", "<i4", (3,), numpy.arange(3, dtype="<i4").tobytes()))
        for dt, name in (("f4", "<f4"), ("i1", "|i1"), ("i2", "<i2"), ("i8", "<i8"), ("u1", "|u1"),
                         ("u2", "<u2"), ("u4", "<u4"), ("u8", "<u8"), ("?", "|b1")):
            self.assertEqual(self.roundtrip(numpy.zeros(2, dtype=dt))[2], name)
        self.assertEqual(self.roundtrip(numpy.float64(2.5)), 2.5)
        self.assertEqual(self.roundtrip(numpy.array(7)), 7)
        for dt in ("c16", "O", "U3", "f2"):
            with self.assertRaises(_wire.NotSerializable) as cm:
                _wire.dumps({"x": numpy.zeros(2, dtype=dt)})
            self.assertIn(str(numpy.dtype(dt)), str(cm.exception))


class DispatchArrayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Dispatcher("snakepit.tests.array_adapter", worker_id="w1")

    def call(self, command, kwargs):
        r = self.d.call(command, kwargs, "cid", None, None, None)
        return marshal.loads(r) if isinstance(r, bytes) else r

    def test_echo(self):
        m = (MARK, "array", "<f8", (2, 2), f8(1, 2, 3, 4))
        self.assertEqual(self.call("echo", call_marker({"x": m})), m)
        got = self.call("describe", call_marker({"x": m}))
        self.assertEqual((got["shape"], got["readonly"]), ([2, 2], True))
        self.assertEqual(got["type"], "memoryview" if numpy is None else "ndarray")

    def test_bad_marker_is_bad_arguments(self):
        m = (MARK, "array", "<f8", (2, 2), b"short")
        code, err, _ = self.call("echo", call_marker({"x": m}))
        self.assertEqual((code, err[0]), (_dispatch.ERROR, _dispatch.K_BAD_ARGS))
        self.assertIn("needs 32 bytes", err[2])

    def test_stream(self):
        m = (MARK, "array", "<f8", (2, 2), f8(1, 2, 3, 4))
        self.assertEqual(self.d.stream_open("lengths", call_marker({"x": m}), "c", None, None, None), marshal.dumps(None, 4))
        self.assertEqual(marshal.loads(self.d.stream_next()), 2)
        self.assertEqual(self.d.stream_next()[0], _dispatch.END)
        bad = (MARK, "array", "<f8", (2, 2), b"")
        code, err, _ = self.d.stream_open("lengths", call_marker({"x": bad}), "c", None, None, None)
        self.assertEqual((code, err[0]), (_dispatch.ERROR, _dispatch.K_BAD_ARGS))

    def test_unwrapped_tuples_are_left_alone(self):
        self.assertEqual(self.call("echo", {"x": (MARK, "array")}), (MARK, "array"))


if __name__ == "__main__":
    unittest.main()
