import marshal
import sys
import unittest

from snakepit import _dispatch
from snakepit._dispatch import END, ERROR, OK, Dispatcher


def unwrap(reply):
    """(code, value, logs) from an envelope, with the payload unmarshalled."""
    if isinstance(reply, bytes):
        return OK, marshal.loads(reply), None
    code, payload, logs = reply
    if code == OK:
        payload = marshal.loads(payload)
    return code, payload, logs


class DispatcherTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Dispatcher("snakepit.tests.fixture_adapter", worker_id="w1")
        code, _, _ = unwrap(cls.d.setup())
        assert code == OK

    def call(self, command, kwargs=None, cid="cid-1", sid=None, deadline=None, att=None):
        return unwrap(self.d.call(command, kwargs or {}, cid, sid, deadline, att))

    def test_commands(self):
        info = self.d.info()
        self.assertIn("add", info["commands"])
        self.assertEqual(info["commands"]["add"], "Add two numbers.")
        self.assertEqual(info["commands"]["ctx_info"], "what the context says")
        self.assertNotIn("not_a_command", info["commands"])
        self.assertNotIn("context_info", info["commands"])

    def test_call(self):
        self.assertEqual(self.call("add", {"a": 2}), (OK, 3, None))
        self.assertEqual(self.call("add", {"a": 2, "b": 5})[1], 7)

    def test_success_fast_path_is_bytes(self):
        self.assertIsInstance(self.d.call("add", {"a": 1}, "", None, None, None), bytes)

    def test_context(self):
        code, v, _ = self.call("ctx_info", cid="abc", sid="s1", deadline=4102444800.0, att=[b"x"])
        self.assertEqual(code, OK)
        self.assertEqual(v, {"command": "ctx_info", "correlation_id": "abc", "session_id": "s1",
                             "remaining_known": True, "attachments": [b"x"]})

    def test_sessions(self):
        self.assertEqual(self.call("counter", sid="a")[1], 1)
        self.assertEqual(self.call("counter", sid="a")[1], 2)
        self.assertEqual(self.call("counter", sid="b")[1], 1)
        self.assertEqual(unwrap(self.d.end_session("a"))[1], True)
        self.assertEqual(unwrap(self.d.end_session("a"))[1], False)
        self.assertEqual(self.call("counter", sid="a")[1], 1)
        code, err, _ = self.call("counter", sid=None)
        self.assertEqual(code, ERROR)
        self.assertIn("no session", err[2])

    def test_not_found(self):
        code, err, _ = self.call("nope")
        self.assertEqual(code, ERROR)
        self.assertEqual(err[0], _dispatch.K_NOT_FOUND)
        self.assertIn("add", err[4])

    def test_bad_arguments(self):
        for kwargs in ({}, {"a": 1, "c": 2}, {"a": 1, "b": 2, "zz": 3}):
            code, err, _ = self.call("add", kwargs)
            self.assertEqual((code, err[0]), (ERROR, _dispatch.K_BAD_ARGS), kwargs)
        code, err, _ = self.call("ctx_info", {"ctx": 1})
        self.assertEqual(err[0], _dispatch.K_BAD_ARGS)

    def test_type_error_inside_handler_is_not_bad_arguments(self):
        code, err, _ = self.call("inner_type_error")
        self.assertEqual((code, err[0], err[1]), (ERROR, _dispatch.K_PYTHON, "TypeError"))

    def test_exception(self):
        code, err, _ = self.call("boom")
        kind, typ, msg, tb, _ = err
        self.assertEqual((code, kind, typ, msg), (ERROR, "python", "ValueError", "boom"))
        self.assertIn("in boom", tb)
        self.assertIn("Traceback (most recent call last)", tb)

    def test_system_exit_is_an_error_not_an_exit(self):
        code, err, _ = self.call("exits")
        self.assertEqual((code, err[1]), (ERROR, "SystemExit"))

    def test_logs(self):
        code, v, logs = self.call("logs", cid="log-cid")
        self.assertEqual(code, OK)
        self.assertIsNone(v)
        messages = {(l[1], l[2]) for l in logs}
        self.assertIn(("snakepit.adapter.snakepit.tests.fixture_adapter", "from ctx.log 1"), messages)
        self.assertIn(("adapter.other", "from another logger"), messages)
        for rec in logs:
            self.assertEqual(rec[3:5], ("logs", "log-cid"))

    def test_stream(self):
        self.assertEqual(unwrap(self.d.stream_open("count", {"n": 3}, "c", None, None, None))[0], OK)
        chunks = []
        while True:
            code, v, _ = unwrap(self.d.stream_next())
            if code == END:
                break
            self.assertEqual(code, OK)
            chunks.append(v)
        self.assertEqual(chunks, [0, 1, 2])

    def test_stream_early_close(self):
        from snakepit.tests import fixture_adapter
        fixture_adapter.EVENTS.clear()
        unwrap(self.d.stream_open("count", {"n": 100}, "c", None, None, None))
        self.assertEqual(unwrap(self.d.stream_next())[1], 0)
        unwrap(self.d.stream_close())
        self.assertIn("count closed", fixture_adapter.EVENTS)
        self.assertEqual(unwrap(self.d.stream_next())[1][0], _dispatch.K_PROTOCOL)

    def test_stream_misuse(self):
        code, err, _ = self.call("count", {"n": 2})
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_STREAMING))
        code, err, _ = unwrap(self.d.stream_open("add", {"a": 1}, "c", None, None, None))
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_NOT_STREAMING))

    def test_async(self):
        self.assertEqual(self.call("async_add", {"a": 1, "b": 2})[1], 3)
        unwrap(self.d.stream_open("async_count", {"n": 2}, "c", None, None, None))
        self.assertEqual(unwrap(self.d.stream_next())[1], {"i": 0})
        self.assertEqual(unwrap(self.d.stream_next())[1], {"i": 1})
        self.assertEqual(unwrap(self.d.stream_next())[0], END)

    def test_conversions(self):
        code, v, _ = self.call("converted")
        self.assertEqual(v, {"when": "2024-01-02", "point": {"x": 1, "y": 2}, "tags": ["a", "b"]})

    def test_buffer_objects_are_converted_not_copied_raw(self):
        import array
        from snakepit import _wire
        self.assertTrue(_wire.scan_needed())
        v = marshal.loads(_wire.dumps({"a": array.array("d", [1.5, 2.5]), "b": bytearray(b"xy"), "c": [1, "s"]}))
        a = array.array("d", [1.5, 2.5]).tobytes()
        self.assertEqual(v, {"a": (_wire.MARKER, "array", "<f8", (2,), a), "b": b"xy", "c": [1, "s"]})

    def test_not_serialisable(self):
        code, err, _ = self.call("unserialisable")
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_NOT_SERIALIZABLE))
        self.assertEqual(err[2], "['ok'][1]: object")

    def test_cancel_marks_context(self):
        from snakepit._adapter import Context
        ctx = Context(self.d, "x", "", None, None, None)
        self.d._call = ctx
        self.d.cancel()
        self.assertTrue(ctx.cancelled())
        self.d._call = None
        past = Context(self.d, "x", "", None, 1.0, None)
        self.assertTrue(past.cancelled())
        self.assertEqual(past.remaining(), 0.0)


    def test_deadline_passed_before_start(self):
        # A call whose deadline passed while it waited is not run at all.
        code, err, _ = self.call("counter", sid="late", deadline=1.0)
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_CANCELLED))
        self.assertIn("before the handler started", err[2])
        self.assertEqual(self.call("counter", sid="late")[1], 1)  # it never counted
        code, err, _ = unwrap(self.d.stream_open("count", {"n": 2}, "", None, 1.0, None))
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_CANCELLED))
        self.assertIsNone(self.d._stream)


class StdioCaptureTest(unittest.TestCase):
    def test_print_becomes_records(self):
        saved = sys.stdout, sys.stderr
        try:
            d = Dispatcher("snakepit.tests.fixture_adapter", capture_stdio=True)
            code, _, logs = unwrap(d.call("logs", {}, "", None, None, None))
            self.assertIn(("stdout", "printed line"), {(l[1], l[2]) for l in logs})
        finally:
            sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    unittest.main()
