import marshal
import threading
import unittest

import snakepit
from snakepit import _adapter, _dispatch
from snakepit._dispatch import END, ERROR, OK, Dispatcher
from snakepit.tests import conc_adapter
from snakepit.tests.test_dispatch import unwrap

TIMEOUT = 60


def run_threads(n, fn):
    """Run fn(i) on n threads at once; their results in order."""
    out = [None] * n
    errs = []

    def body(i):
        try:
            out[i] = fn(i)
        except BaseException as e:  # reported below
            errs.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        if t.is_alive():
            raise AssertionError("a thread did not finish")
    if errs:
        raise errs[0]
    return out


class ConcurrentDispatcherTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Dispatcher("snakepit.tests.conc_adapter", worker_id="w", concurrency=100)

    @classmethod
    def tearDownClass(cls):
        cls.d.teardown()

    def setUp(self):
        conc_adapter.reset()

    def call(self, command, kwargs, call_id, cid="", deadline=None):
        return unwrap(self.d.call(command, kwargs, cid, None, deadline, None, call_id=call_id))

    def test_async_calls_overlap(self):
        got = run_threads(100, lambda i: self.call("rendezvous", {"n": 100, "tag": i}, i))
        self.assertEqual(conc_adapter.STATE["max"], 100, "got max in flight %d, want 100" % conc_adapter.STATE["max"])
        self.assertEqual([g[0] for g in got], [OK] * 100)

    def test_plain_handlers_do_not_overlap(self):
        got = run_threads(8, lambda i: self.call("plain", {"tag": i}, i))
        self.assertEqual([g[1] for g in got], list(range(8)))
        self.assertEqual(conc_adapter.STATE["max"], 1)

    def test_thread_safe_handlers_overlap(self):
        got = run_threads(4, lambda i: self.call("safe_meet", {"n": 4}, i))
        self.assertEqual(conc_adapter.STATE["max"], 4)
        self.assertEqual([g[0] for g in got], [OK] * 4)

    def test_configure_makes_the_adapter_thread_safe(self):
        ns = {"__name__": "x"}
        exec("import snakepit\nsnakepit.configure(thread_safe=True)\n"
             "@snakepit.command\ndef a(): pass\n"
             "@snakepit.command(thread_safe=False)\ndef b(): pass\n", ns)
        mod = type(snakepit)("x")
        mod.__dict__.update(ns)
        cmds = _adapter.commands_of(mod)
        self.assertTrue(_adapter.thread_safe_of(mod, cmds["a"]))
        self.assertFalse(_adapter.thread_safe_of(mod, cmds["b"]))
        self.assertFalse(_adapter.thread_safe_of(conc_adapter, _adapter.commands_of(conc_adapter)["plain"]))
        with self.assertRaises(TypeError):
            snakepit.configure(thread_safe="yes")
        with self.assertRaises(TypeError):
            snakepit.command(thread_safe=1)

    def test_cancel_hits_only_its_call(self):
        started = threading.Event()
        results = {}

        def victim():
            results["victim"] = self.call("wait_forever", {"tag": "victim"}, 1)

        def neighbour():
            results["neighbour"] = self.call("nap", {"tag": "neighbour", "sleep": 0.3}, 2)

        threads = [threading.Thread(target=victim), threading.Thread(target=neighbour)]
        for t in threads:
            t.start()
        # Wait for the victim to be in flight on the loop, then cancel it.
        while True:
            with self.d._mt_lock:
                rec = self.d._calls.get(1)
                if rec is not None and rec.task is not None:
                    break
            started.wait(0.001)
        self.assertTrue(self.d.cancel(1))
        for t in threads:
            t.join(TIMEOUT)
        code, err, _ = results["victim"]
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_CANCELLED))
        self.assertEqual(results["neighbour"], (OK, "neighbour", None))
        self.assertEqual(conc_adapter.STATE["cancelled"], ["victim"])

    def test_cancel_of_a_plain_call_returns_false(self):
        # The profile interrupts the thread itself: cancel only marks it.
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", self.call("spin", {"tag": "s"}, 7)))
        t.start()
        while True:
            with self.d._mt_lock:
                rec = self.d._calls.get(7)
                if rec is not None and rec.ctx is not None:
                    break
            threading.Event().wait(0.001)
        self.assertFalse(self.d.cancel(7))
        self.assertTrue(rec.ctx.cancelled())
        import ctypes
        n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(snakepit.Cancelled))
        self.assertEqual(n, 1)
        t.join(TIMEOUT)
        self.assertEqual(out["r"][1][0], _dispatch.K_CANCELLED)

    def test_cancel_before_start_does_not_run(self):
        self.assertFalse(self.d.cancel(55))
        code, err, _ = self.call("nap", {"tag": "early"}, 55)
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_CANCELLED))
        self.assertNotIn("early", conc_adapter.STATE["runs"])
        # The id is free again.
        self.assertEqual(self.call("nap", {"tag": "later", "sleep": 0}, 55), (OK, "later", None))

    def test_deadline_passed_does_not_run(self):
        code, err, _ = self.call("nap", {"tag": "late"}, 3, deadline=1.0)
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_CANCELLED))
        self.assertNotIn("late", conc_adapter.STATE["runs"])

    def test_logs_and_ids_stay_with_their_call(self):
        got = run_threads(20, lambda i: self.call("log_twice", {"tag": str(i)}, 100 + i, cid="cid-%d" % i))
        for i, (code, v, logs) in enumerate(got):
            self.assertEqual(code, OK)
            self.assertEqual(v, ["cid-%d" % i, 100 + i])
            self.assertEqual(sorted(l[2] for l in logs), ["first %d" % i, "second %d" % i])
            for rec in logs:
                self.assertEqual(rec[3:5], ("log_twice", "cid-%d" % i))

    def test_streams_keyed_by_id(self):
        d = self.d
        self.assertEqual(unwrap(d.stream_open("agen", {"n": 3, "tag": "a"}, "", None, None, None, call_id=10))[0], OK)
        self.assertEqual(unwrap(d.stream_open("gen", {"n": 2, "tag": "b"}, "", None, None, None, call_id=11))[0], OK)
        self.assertEqual(unwrap(d.stream_next(10))[1], ["a", 0])
        self.assertEqual(unwrap(d.stream_next(11))[1], ["b", 0])
        self.assertEqual(unwrap(d.stream_next(10))[1], ["a", 1])
        self.assertEqual(unwrap(d.stream_next(11))[1], ["b", 1])
        self.assertEqual(unwrap(d.stream_next(11))[0], END)
        self.assertEqual(unwrap(d.stream_next(11))[1][0], _dispatch.K_PROTOCOL)
        self.assertEqual(unwrap(d.stream_close(10))[0], OK)
        self.assertEqual(unwrap(d.stream_next(10))[1][0], _dispatch.K_PROTOCOL)
        self.assertEqual(d._streams, {})

    def test_concurrent_streams_from_threads(self):
        def body(i):
            d = self.d
            sid = 1000 + i
            assert unwrap(d.stream_open("agen", {"n": 5, "tag": i}, "", None, None, None, call_id=sid))[0] == OK
            out = []
            while True:
                code, v, _ = unwrap(d.stream_next(sid))
                if code == END:
                    return out
                out.append(v)
        got = run_threads(10, body)
        for i, chunks in enumerate(got):
            self.assertEqual(chunks, [[i, k] for k in range(5)])

    def test_call_id_required(self):
        code, err, _ = unwrap(self.d.call("nap", {}, "", None, None, None))
        self.assertEqual((code, err[0]), (ERROR, _dispatch.K_PROTOCOL))

    def test_bad_concurrency(self):
        for bad in (0, -1, 1.5, "2"):
            with self.assertRaises(ValueError):
                Dispatcher("snakepit.tests.conc_adapter", concurrency=bad)


class TeardownTest(unittest.TestCase):
    def test_teardown_stops_the_loop_thread(self):
        d = Dispatcher("snakepit.tests.conc_adapter", concurrency=4)
        self.assertEqual(unwrap(d.call("nap", {"sleep": 0}, "", None, None, None, call_id=1))[0], OK)
        t = d._mt_thread
        self.assertTrue(t.is_alive())
        unwrap(d.stream_open("agen", {"n": 3}, "", None, None, None, call_id=2))
        d.teardown()
        self.assertFalse(t.is_alive())
        self.assertEqual(d._streams, {})

    def test_concurrency_one_starts_no_thread(self):
        before = threading.active_count()
        d = Dispatcher("snakepit.tests.conc_adapter")
        self.assertEqual(unwrap(d.call("nap", {"sleep": 0}, "", None, None, None))[0], OK)
        self.assertEqual(threading.active_count(), before)
        self.assertIsNone(d._mt_thread)
        d.teardown()


if __name__ == "__main__":
    unittest.main()
