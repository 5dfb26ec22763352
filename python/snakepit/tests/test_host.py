import datetime
import marshal
import unittest

import snakepit
from snakepit._dispatch import END, ERROR, OK, Dispatcher
from snakepit.tests import fixture_adapter


def value(reply):
    if isinstance(reply, bytes):
        return marshal.loads(reply)
    code, payload, _ = reply
    assert code == OK, reply
    return marshal.loads(payload)


class HostTest(unittest.TestCase):
    """ctx.host against a transport that plays the Go side."""

    def setUp(self):
        self.d = Dispatcher("snakepit.tests.fixture_adapter", worker_id="w1")
        self.d.host_names = ("echo", "fail")
        self.d.host_token = 42
        self.seen = []

        def transport(token, name, payload):
            kwargs = marshal.loads(payload)
            self.seen.append((token, name, kwargs))
            if name == "echo":
                return marshal.dumps(kwargs)
            return b"\x01" + marshal.dumps([kwargs["kind"], "go says no", kwargs.get("type", "")])

        self.d.host_transport = transport

    def call(self, command, **kwargs):
        return value(self.d.call(command, kwargs, "cid", None, None, None))

    def test_call(self):
        self.assertEqual(self.call("use_host", name="echo", kwargs={"a": [1, 2]}), ["ok", {"a": [1, 2]}])
        self.assertEqual(self.seen, [(42, "echo", {"a": [1, 2]})])

    def test_errors(self):
        got = self.call("use_host", name="fail", kwargs={"kind": "deadline"})
        self.assertEqual(got, ["error", "HostError", "deadline", "go says no", True, False])
        got = self.call("use_host", name="fail", kwargs={"kind": "error", "type": "KeyError"})
        self.assertEqual(got, ["error", "HostError", "error", "'go says no'", False, True])
        got = self.call("use_host", name="fail", kwargs={"kind": "error", "type": "nosuchmodule.Error"})
        self.assertEqual(got, ["error", "Exception", "error", "go says no", False, False])
        got = self.call("use_host", name="missing", kwargs={})
        self.assertEqual(got[:3], ["error", "Exception", "unknown"])
        self.assertEqual(len(self.seen), 3)  # an unknown name makes no round trip

    def test_values_marshal_refuses(self):
        got = self.call("use_host", name="echo", kwargs={"when": datetime.date(2026, 12, 1)})
        self.assertEqual(got, ["ok", {"when": "2026-12-01"}])  # converted as results are
        code, err, _ = self.d.call("use_host", {"name": "echo", "kwargs": {"x": object()}}, "cid", None, None, None)
        self.assertEqual((code, err[1]), (ERROR, "TypeError"))  # raised in the handler

    def test_arrays_both_ways(self):
        import array
        got = self.call("host_types", name="echo", kwargs={"a": array.array("d", [1.5, 2.5]), "b": bytearray(b"xy")})
        # Sent as an array marker (as results are), echoed back, and
        # resolved to an array again.
        _, _, sent = self.seen[-1]
        self.assertEqual(sent["a"][:4], ("\x00snakepit", "array", "<f8", (2,)))
        self.assertEqual(sent["b"], b"xy")
        self.assertIn(got["a"][0], ("memoryview", "ndarray"))
        self.assertEqual(got["a"][1], [1.5, 2.5])
        self.assertEqual(got["b"], ["bytes", b"xy"])

    def test_sugar_and_async(self):
        self.assertEqual(self.call("host_sugar"), [["echo", "fail"], {"x": 1}, True])
        self.assertEqual(self.call("host_async"), {"x": 2})

    def test_after_the_call(self):
        fixture_adapter.KEPT.clear()
        self.call("use_host", name="echo", kwargs={}, keep=True)
        with self.assertRaises(snakepit.HostError) as e:
            fixture_adapter.KEPT[0].call("echo")
        self.assertEqual(e.exception.kind, "ended")

    def test_stream(self):
        value(self.d.stream_open("host_stream", {"n": 2}, "cid", None, None, None))
        self.assertEqual(value(self.d.stream_next()), {"i": 0})
        self.assertEqual(value(self.d.stream_next()), {"i": 1})
        self.assertEqual(self.d.stream_next()[0], END)


if __name__ == "__main__":
    unittest.main()


class InPartsTest(unittest.TestCase):
    """Host call kwargs with large bytes set apart: the marshalled kwargs
    hold buffer markers in their place, and the buffers are the caller's
    own objects, not copies."""

    def test_buffers_set_apart(self):
        from snakepit import _adapter, _wire
        big, arr = b"x" * 1000, bytearray(b"y" * 500)
        kwargs = {"blob": big, "n": 7, "name": "snake", "none": None, "f": 1.5, "small": b"ab",
                  "buf": arr, "big_int": 1 << 70, "flag": True}
        data, bufs = _adapter._in_parts(kwargs, 100)
        self.assertEqual(len(bufs), 2)
        self.assertIs(bufs[0], big)
        self.assertIs(bufs[1].obj, arr)  # a view: the bytearray cannot be resized meanwhile
        with self.assertRaises(BufferError):
            arr.extend(b"z")
        got = marshal.loads(data)
        self.assertEqual(got["blob"], (_wire.MARKER, "buf", 0))
        self.assertEqual(got["buf"], (_wire.MARKER, "buf", 1))
        self.assertEqual(_wire.resolve_value(got, [bytes(b) for b in bufs]), dict(kwargs, buf=bytes(arr)))

    def test_arrays_set_apart(self):
        import array
        from snakepit import _adapter, _wire
        a = array.array("d", range(100))
        small = array.array("i", [1, 2])
        data, bufs = _adapter._in_parts({"a": a, "n": 1}, 100)
        self.assertEqual(len(bufs), 1)
        self.assertEqual((bufs[0].format, bufs[0].nbytes), ("B", 800))
        self.assertEqual(bytes(bufs[0]), a.tobytes())
        got = marshal.loads(data)
        self.assertEqual(got["a"], (_wire.MARKER, "array", "<f8", (100,), 0))
        back = _wire.resolve_value(got, [bytes(bufs[0])])["a"]
        self.assertEqual(list(memoryview(back)), list(a))
        self.assertIsNone(_adapter._in_parts({"a": small}, 100))  # below the threshold
        self.assertIsNone(_adapter._in_parts({"a": a, "b": small}, 100))  # small arrays: marshalled

    def test_none_when_not_worth_it(self):
        from snakepit import _adapter
        self.assertIsNone(_adapter._in_parts({"a": b"x" * 10}, 100))  # nothing large
        self.assertIsNone(_adapter._in_parts({"a": b"x" * 200, "l": [1]}, 100))  # not plain
        self.assertIsNone(_adapter._in_parts({}, 100))
