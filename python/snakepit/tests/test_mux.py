"""The process profile's concurrent mode (_process._Mux) against a socket
that plays the host."""

import marshal
import socket
import threading
import time
import unittest

from snakepit import _dispatch, _process
from snakepit.tests import conc_adapter
from snakepit.tests.test_process_link import _frame, _read_frame, _until


def _call(command, kwargs, tag=""):
    return marshal.dumps((command, kwargs, "cid-" + tag, None, None, None), 4)


class MuxTest(unittest.TestCase):

    def start(self, n, depth):
        ours, self.host = socket.socketpair()
        self.host.settimeout(20)
        self.conn = _process._Conn(ours.detach(), 1 << 20)
        self.d = _dispatch.Dispatcher("snakepit.tests.conc_adapter", concurrency=n)
        self.mux = _process._Mux(self.conn, self.d, n, depth, 1 << 20)
        self.d.host_transport = self.mux.host_call
        self.status = []
        self.loop = threading.Thread(target=lambda: self.status.append(self.mux.run(lambda *f: 2)))
        self.loop.start()

    def setUp(self):
        conc_adapter.reset()
        conc_adapter.GATE.clear()
        self.lifeline, _process.LIFELINE_ENABLED = _process.LIFELINE_ENABLED, False

    def tearDown(self):
        conc_adapter.GATE.set()
        self.host.close()
        self.loop.join(20)
        self.d.teardown()
        self.conn.sock.close()
        _process.LIFELINE_ENABLED = self.lifeline

    def send(self, typ, rid, payload=b""):
        self.host.sendall(_frame(typ, rid, payload))

    def wait_running(self, rid):
        # Not on mux.cond: a notify meant for a handler thread could wake
        # this thread instead.
        _until(lambda: rid in self.mux.running, "request %d runs" % rid)

    def test_cancel_of_a_queued_request_never_runs_it(self):
        self.start(1, 1)
        self.send(_process.CALL, 1, _call("gated", {"tag": "first"}))
        self.wait_running(1)
        self.send(_process.CALL, 2, _call("gated", {"tag": "queued"}))
        self.send(_process.CANCEL, 2)
        self.assertEqual(_read_frame(self.host), (_process.NOT_STARTED, 2, b""))
        # A withdraw of the running one: it had started.
        self.send(_process.CANCEL, 1, b"w")
        self.assertEqual(_read_frame(self.host), (_process.STARTED, 1, b""))
        conc_adapter.GATE.set()
        typ, rid, payload = _read_frame(self.host)
        self.assertEqual((typ, rid), (_process.REPLY, 1))
        self.assertEqual(conc_adapter.STATE["runs"], ["first"])

    def test_cancel_interrupts_a_plain_handler_thread(self):
        self.start(2, 0)
        self.send(_process.CALL, 1, _call("spin", {"tag": "s"}))
        self.send(_process.CALL, 2, _call("nap", {"tag": "n", "sleep": 0}))
        typ, rid, payload = _read_frame(self.host)
        self.assertEqual((typ, rid), (_process.REPLY, 2))
        self.wait_running(1)
        self.send(_process.CANCEL, 1)
        typ, rid, payload = _read_frame(self.host)
        self.assertEqual((typ, rid), (_process.REPLY, 1))
        code, err, _ = marshal.loads(payload)
        self.assertEqual((code, err[0]), (_dispatch.ERROR, _dispatch.K_CANCELLED))
        self.assertEqual(conc_adapter.STATE["cancelled"], ["s"])

    def test_cancel_after_the_handler_saw_its_deadline_does_not_interrupt(self):
        # The handler saw ctx.cancelled() true (its deadline) and cleans up:
        # the host's CANCEL that follows raises nothing in it.
        self.start(1, 0)
        payload = marshal.dumps(("poll_then_gated", {"tag": "p"}, "cid-p", None, time.time() + 0.05, None), 4)
        self.send(_process.CALL, 1, payload)
        _until(lambda: "p cleaning" in conc_adapter.STATE["runs"], "the handler cleans up")
        self.send(_process.CANCEL, 1)
        _until(lambda: self.mux.running[1][2], "the cancel is taken in")
        conc_adapter.GATE.set()
        typ, rid, payload = _read_frame(self.host)
        self.assertEqual((typ, rid), (_process.REPLY, 1))
        out = marshal.loads(payload)  # a result, or an error envelope
        self.assertIsInstance(out, bytes, out)
        self.assertEqual(marshal.loads(out), "p")
        self.assertIn("p cleaned", conc_adapter.STATE["runs"])

    def test_more_requests_than_slots_is_refused(self):
        self.start(1, 0)
        self.send(_process.CALL, 1, _call("gated", {"tag": "a"}))
        self.send(_process.CALL, 2, _call("gated", {"tag": "b"}))
        self.loop.join(20)
        self.assertEqual(self.status, [2])
        self.assertNotIn("b", conc_adapter.STATE["runs"])


if __name__ == "__main__":
    unittest.main()
