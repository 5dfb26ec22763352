import builtins
import dataclasses
import datetime
import decimal
import enum
import os
import pathlib
import subprocess
import sys
import unittest
import uuid

from snakepit import _wire


class Color(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int
    y: float


class ToList:
    """Stands for a numpy array: converted through tolist()."""

    def tolist(self):
        return [1.5, 2.5]


class WireTest(unittest.TestCase):
    def sample(self):
        return {
            "floats": [float(i) for i in range(1000)],
            "nested": [{"a": [1, "x", None, b"y"]}, (True, 2.5)],
            "color": Color.RED,
            "when": datetime.datetime(2024, 5, 6, 7, 8, 9),
            "day": datetime.date(2024, 5, 6),
            "span": datetime.timedelta(seconds=90),
            "price": decimal.Decimal("1.25"),
            "id": uuid.UUID(int=1),
            "path": pathlib.PurePosixPath("/tmp/x"),
            "point": Point(1, 2.0),
            "tags": {"b", "a"},
            "raw": bytearray(b"ab"),
            "array": ToList(),
        }

    def test_dataclass_class_is_not_converted(self):
        # The class itself is no instance: it stays as it is, for
        # describe() to name as not serialisable (asdict would raise).
        got = _wire.to_wire({"schema": Point}, 0)
        self.assertIs(got["schema"], Point)

    def test_conversions(self):
        got = _wire.to_wire(self.sample(), 0)
        self.assertEqual(got["floats"], [float(i) for i in range(1000)])
        self.assertEqual(got["nested"], [{"a": [1, "x", None, b"y"]}, (True, 2.5)])
        self.assertEqual(got["color"], 1)
        self.assertEqual(got["when"], "2024-05-06T07:08:09")
        self.assertEqual(got["day"], "2024-05-06")
        self.assertEqual(got["span"], 90.0)
        self.assertEqual(got["price"], "1.25")
        self.assertEqual(got["id"], str(uuid.UUID(int=1)))
        self.assertEqual(got["path"], "/tmp/x")
        self.assertEqual(got["point"], {"x": 1, "y": 2.0})
        self.assertEqual(got["tags"], ["a", "b"])
        self.assertEqual(got["raw"], b"ab")
        self.assertEqual(got["array"], [1.5, 2.5])
        self.assertEqual(_wire.describe(got), None)

    def test_unchanged_containers_are_returned_as_is(self):
        v = [1.0, [2, "x"], {"k": None}]
        self.assertIs(_wire.to_wire(v, 0), v)

    def test_no_import_statement_per_value(self):
        # Conversions resolve what they need once, not per value: an import
        # statement per element made results with numpy loaded many times
        # slower.
        calls = []
        real = builtins.__import__

        def counting(*args, **kwargs):
            calls.append(args[0])
            return real(*args, **kwargs)

        builtins.__import__ = counting
        try:
            _wire.to_wire(self.sample(), 0)
            _wire.dumps([self.sample()] * 3)
        finally:
            builtins.__import__ = real
        self.assertEqual(calls, [], "import statements ran during conversion")

    def test_imports_nothing_on_a_values_behalf(self):
        code = (
            "import sys\n"
            "from snakepit import _wire\n"
            "class Odd: pass\n"
            "before = set(sys.modules)\n"
            "_wire.to_wire([Odd(), {1, 2}, bytearray(b'x')], 0)\n"
            "print(sorted(set(sys.modules) - before))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(_wire.__file__)))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": root})
        self.assertEqual(out.stdout.strip(), "[]", out.stderr)


class ResolveValueTest(unittest.TestCase):
    """resolve_value: a host function's result with its markers replaced."""

    def test_buffers_and_arrays(self):
        m = _wire.MARKER
        big = b"\x01" * 16
        v = {"b": (m, "buf", 0), "l": [1, (m, "buf", 0), ((m, "buf", 1),)], "s": "x",
             "a": (m, "array", "<u2", (2,), 1), "i": (m, "array", "|u1", (3,), b"abc")}
        got = _wire.resolve_value(v, (big, b"\x02\x00\x03\x00"))
        self.assertIs(got["b"], big)
        self.assertIs(got["l"][1], big)
        self.assertEqual(got["l"][2], (b"\x02\x00\x03\x00",))
        self.assertEqual(got["s"], "x")
        self.assertEqual(list(got["a"]), [2, 3])
        self.assertEqual(bytes(got["i"]), b"abc")

    def test_bad_markers(self):
        m = _wire.MARKER
        for v in ((m, "buf", 2), (m, "buf", -1), (m, "buf", "0"), [(m, "array", "<f8", (2,), 0)]):
            with self.assertRaises(_wire.BadMarker, msg=repr(v)):
                _wire.resolve_value(v, (b"x",))

    def test_plain_values_unchanged(self):
        v = {"a": [1, (2, "x")], "m": (_wire.MARKER,)}
        self.assertEqual(_wire.resolve_value(v, ()), v)


if __name__ == "__main__":
    unittest.main()
