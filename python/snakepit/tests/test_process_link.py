"""The process profile's shared connection (_process._Link) against a
socket that plays the host."""

import marshal
import os
import random
import signal
import socket
import struct
import threading
import time
import unittest

from snakepit import Cancelled, HostError, _process

_H = struct.Struct("<IBQ")


def _frame(typ, rid, payload):
    return _H.pack(len(payload), typ, rid) + payload


def _recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("host side: end of stream")
        out += chunk
    return out


def _read_frame(sock):
    size, typ, rid = _H.unpack(_recv_exact(sock, _H.size))
    return typ, rid, _recv_exact(sock, size)


def _until(cond, what):
    """Wait (bounded) until cond() holds: the state another thread reaches
    inside a blocking call, which it cannot signal itself."""
    deadline = time.monotonic() + 10
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting until " + what)
        time.sleep(0.001)


class _LinkCase(unittest.TestCase):

    def setUp(self):
        ours, self.host = socket.socketpair()
        self.host.settimeout(10)
        self.conn = _process._Conn(ours.detach(), 1 << 20)
        self.link = _process._Link(self.conn, 1 << 20)
        self.link.live.add(7)

    def tearDown(self):
        self.host.close()
        self.conn.sock.close()

    def read_host_call(self):
        typ, rid, payload = _read_frame(self.host)
        self.assertEqual(typ, _process.HOST_CALL)
        self.assertTrue(rid & _process.HOST_CALL_ID_BIT, "host call id %#x without the host call bit" % rid)
        token, name, kwargs = marshal.loads(payload)
        return rid, token, name, kwargs


class LinkTest(_LinkCase):

    def test_replies_out_of_order(self):
        results = {}

        def call(i):
            results[i] = self.link.host_call(7, "f%d" % i, marshal.dumps({"i": i}))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        calls = [self.read_host_call() for _ in threads]
        self.assertEqual(len({rid for rid, *_ in calls}), 3, "host call ids are not unique")
        for rid, token, name, kwargs in reversed(calls):
            self.assertEqual(token, 7)
            self.assertEqual(marshal.loads(kwargs), {"i": int(name[1:])})
            self.host.sendall(_frame(_process.HOST_REPLY, rid, b"\x00" + marshal.dumps(name)))
        for t in threads:
            t.join(10)
        self.assertEqual({i: (r[:1], marshal.loads(r[1:])) for i, r in results.items()},
                         {i: (b"\x00", "f%d" % i) for i in range(3)})

    def test_request_read_by_a_waiting_thread_reaches_the_main_loop(self):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", self.link.host_call(7, "f", b"")))
        t.start()
        rid, *_ = self.read_host_call()
        # The thread waiting for its reply reads the request first.
        self.host.sendall(_frame(_process.CALL, 9, b"request") + _frame(_process.HOST_REPLY, rid, b"\x00N"))
        t.join(10)
        self.assertEqual(out, {"r": b"\x00N"})
        self.assertEqual(self.link.next_request(), (_process.CALL, 9, b"request"))

    def test_late_reply_dropped(self):
        self.host.sendall(_frame(_process.HOST_REPLY, _process.HOST_CALL_ID_BIT | 99, b"\x00N") +
                          _frame(_process.CALL, 3, b"next"))
        self.assertEqual(self.link.next_request(), (_process.CALL, 3, b"next"))

    def test_ended_call_refused_without_sending(self):
        with self.assertRaises(HostError) as cm:
            self.link.host_call(8, "f", b"")
        self.assertEqual(cm.exception.kind, "ended")
        self.host.setblocking(False)
        with self.assertRaises(BlockingIOError):
            self.host.recv(1)
        self.assertEqual(self.link.replies, {})

    def test_bad_input(self):
        for token, name, payload in ((7, "f", "str"), (7, 3, b""), (7, "f", bytearray(b""))):
            with self.assertRaises(TypeError):
                self.link.host_call(token, name, payload)
        with self.assertRaises(HostError) as cm:
            self.link.host_call(None, "f", b"")
        self.assertEqual(cm.exception.kind, "ended")

    def test_arguments_over_the_frame_limit(self):
        self.link.max_frame = 100
        with self.assertRaises(TypeError) as cm:
            self.link.host_call(7, "f", b"x" * 200)
        self.assertIsInstance(cm.exception, HostError)

    def test_host_call_frame_is_the_marshalled_tuple(self):
        big = bytes(range(256)) * 300
        for token, name, payload in ((7, "f", b""), (2**63 + 9, "n\u00e9", big), (0, "x" * 300, b"ab")):
            parts = _process._host_call_frame(token, name, payload, 1 << 20)
            self.assertIs(parts[-1], payload)  # sent as it is, not copied
            self.assertEqual(marshal.loads(b"".join(parts)), (token, name, payload))

    def test_connection_closed_while_waiting(self):
        out = {}

        def call():
            try:
                self.link.host_call(7, "f", b"")
            except HostError as e:
                out["error"] = e

        t = threading.Thread(target=call)
        t.start()
        self.read_host_call()
        self.host.close()
        t.join(10)
        self.assertIn("error", out)
        self.assertIsNone(self.link.next_request())  # the main loop sees the end too


class CancelTest(_LinkCase):
    """SIGUSR1 as the worker handles it: Cancelled in the main thread,
    deferred while it is inside a frame."""

    def setUp(self):
        super().setUp()
        self.cancels = 0

        def on_cancel(signum, frame):
            self.cancels += 1
            if self.link.main_busy:
                self.link.cancel_pending = True
                return
            raise Cancelled("cancelled by the host")

        self.old = signal.signal(signal.SIGUSR1, on_cancel)

    def tearDown(self):
        signal.signal(signal.SIGUSR1, self.old)
        super().tearDown()

    def test_cancel_inside_a_frame_waits_for_its_end(self):
        main = threading.get_ident()

        def host():
            rid, *_ = self.read_host_call()
            reply = _frame(_process.HOST_REPLY, rid, b"\x00" + marshal.dumps("x" * 1000))
            self.host.sendall(reply[:20])  # the frame begins
            _until(lambda: self.link.main_busy, "the main thread reads the frame")
            signal.pthread_kill(main, signal.SIGUSR1)
            _until(lambda: self.cancels, "the signal was handled")
            self.host.sendall(reply[20:] + _frame(_process.CALL, 5, b"after"))

        t = threading.Thread(target=host)
        t.start()
        with self.assertRaises(Cancelled):
            self.link.host_call(7, "f", b"")
        t.join(10)
        self.assertFalse(self.link.cancel_pending)
        self.assertEqual(self.link.next_request(), (_process.CALL, 5, b"after"))

    def test_cancel_before_the_reply(self):
        main = threading.get_ident()

        def host():
            rid, *_ = self.read_host_call()
            signal.pthread_kill(main, signal.SIGUSR1)
            _until(lambda: self.cancels, "the signal was handled")
            _until(lambda: not self.link.replies, "the call gave up")
            self.host.sendall(_frame(_process.HOST_REPLY, rid, b"\x00N") + _frame(_process.CALL, 6, b"after"))

        t = threading.Thread(target=host)
        t.start()
        with self.assertRaises(Cancelled):
            self.link.host_call(7, "f", b"")
        t.join(10)
        self.assertIsNone(self.link.reader)
        self.assertEqual(self.link.next_request(), (_process.CALL, 6, b"after"))


    def test_random_cancels_leave_no_lock_held(self):
        """SIGUSR1 at random moments of host calls (once per call, as the
        worker raises it): after each call, Cancelled or not, no lock of
        the link is held and nothing reads."""
        seed = int(os.environ.get("SNAKEPIT_TEST_SEED", "0")) or random.randrange(1 << 30)
        rnd = random.Random(seed)
        main = threading.get_ident()
        n = int(os.environ.get("SNAKEPIT_TEST_CANCELS", "1500"))
        delays = [rnd.choice((0, 0, rnd.random() * 1e-4, rnd.random() * 1e-3)) for _ in range(n)]
        # Where the signal comes: 0 before the reply, 1 after it, 2 inside
        # it (the frame sent in two parts, the signal once the main thread
        # reads the first).
        where = [rnd.choice((0, 1, 2, 2)) for _ in range(n)]
        reply = _frame(_process.HOST_REPLY, 0, b"\x00" + marshal.dumps("x" * 200))
        splits = [rnd.randrange(1, len(reply)) for _ in range(n)]
        armed = [False]

        def on_cancel(signum, frame):
            if not armed[0]:
                return  # once per call
            armed[0] = False
            if self.link.main_busy:
                self.link.cancel_pending = True
                return
            raise Cancelled("cancelled by the host")

        signal.signal(signal.SIGUSR1, on_cancel)
        go = threading.Semaphore(0)

        failed = []

        def host():
            try:
                serve()
            except BaseException as e:  # the frames went out of step
                failed.append(e)
                self.host.shutdown(socket.SHUT_RDWR)  # the main thread's read ends

        def serve():
            for i in range(n):
                rid, *_ = self.read_host_call()
                frame = _frame(_process.HOST_REPLY, rid, reply[_H.size:])
                if where[i] == 0:
                    time.sleep(delays[i])
                    signal.pthread_kill(main, signal.SIGUSR1)
                    self.host.sendall(frame)
                elif where[i] == 1:
                    self.host.sendall(frame)
                    time.sleep(delays[i])
                    signal.pthread_kill(main, signal.SIGUSR1)
                else:
                    self.host.sendall(frame[:splits[i]])
                    deadline = time.monotonic() + 1
                    while not self.link.main_busy and time.monotonic() < deadline:
                        time.sleep(0.00005)
                    signal.pthread_kill(main, signal.SIGUSR1)
                    time.sleep(delays[i])
                    self.host.sendall(frame[splits[i]:])
                go.acquire()

        t = threading.Thread(target=host, daemon=True)
        t.start()
        link = self.link
        self.conn.sock.settimeout(10)  # frames out of step fail, not hang
        try:
            for i in range(n):
                armed[0] = True
                link.cancel_pending = False
                try:
                    link.host_call(7, "f", b"")
                except Cancelled:
                    pass
                except HostError as e:  # the link broke, or timed out
                    self.fail("seed %d, call %d: %r (the host side: %r)" % (seed, i, e, failed))
                # Let the signal in (if it has not come) before checking.
                deadline = time.monotonic() + 5
                while armed[0] and time.monotonic() < deadline:
                    try:
                        time.sleep(0.0001)
                    except Cancelled:
                        pass
                what = "seed %d, call %d" % (seed, i)
                self.assertFalse(link.mutex.locked(), "the link's lock is held: " + what)
                self.assertFalse(link.send_lock.locked(), "the send lock is held: " + what)
                self.assertIsNone(link.reader, "a reader is left: " + what)
                self.assertFalse(link.cancel_pending, "a Cancelled is left pending: " + what)
                go.release()
        finally:
            armed[0] = False
            for _ in range(n):
                go.release()
            t.join(10)


class SeqQueueTest(unittest.TestCase):
    """_process._SeqQueue: the requests of the sequential pipelined mode."""

    def setUp(self):
        ours, self.host = socket.socketpair()
        self.host.settimeout(10)
        self.conn = _process._Conn(ours.detach(), 1 << 20)
        self.link = _process._Link(self.conn, 1 << 20)
        self.queue = _process._SeqQueue(self.link)
        # The queue's clock: each reading is a second after the one before,
        # so every read is older than _RECHECK_S, unless a test stops it.
        self.now = 1000.0
        self.step = 1.0
        real = _process._perf_counter

        def clock():
            self.now += self.step
            return self.now

        _process._perf_counter = clock
        self.addCleanup(setattr, _process, "_perf_counter", real)

    def tearDown(self):
        self.host.close()
        self.conn.sock.close()

    def test_recent_read_skips_the_check(self):
        """A queued request starts without a read when the socket was read
        less than _RECHECK_S before; a CANCEL that came meanwhile is read
        before the next request, once the last read is older than that."""
        P = _process
        self.host.sendall(_frame(P.CALL, 1, b"a") + _frame(P.CALL, 2, b"b") + _frame(P.CALL, 3, b"c"))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.step = 0.0  # the clock stands still: every read is recent
        self.assertEqual(self.queue.next(), (P.CALL, 1, b"a"))
        self.host.sendall(_frame(P.CANCEL, 2, b"") + _frame(P.CANCEL, 3, b""))
        _until(lambda: self.link.poll.poll(0), "the cancels arrive")
        self.assertEqual(self.queue.next(), (P.CALL, 2, b"b"), "started without reading the cancel")
        self.now += P._RECHECK_S * 2  # the last read is old now
        self.host.sendall(_frame(P.CALL, 4, b"d"))
        self.assertEqual(self.queue.next(), (P.CALL, 4, b"d"), "3 was cancelled before it started")
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 3, b""))

    def test_partial_read_is_not_fresh(self):
        """A recv that filled the buffer may have left frames in the socket
        that came before it: it does not count as a fresh read, so the
        next request starts only after another read (which finds the
        CANCEL of request 2)."""
        P = _process
        big = b"x" * 25000
        data = _frame(P.CALL, 1, big) + _frame(P.CALL, 2, big) + _frame(P.CALL, 3, big) + _frame(P.CANCEL, 2, b"")
        sender = threading.Thread(target=self.host.sendall, args=(data,))
        sender.start()
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.step = 0.0  # request 1 takes no time
        self.assertEqual(self.queue.next()[:2], (P.CALL, 1))
        self.assertEqual(self.queue.next()[:2], (P.CALL, 3), "2 started although its CANCEL came before the last read")
        sender.join(10)
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 2, b""))

    def test_read_by_another_thread_is_not_fresh(self):
        """While another thread holds the reader's role (one waiting in a
        host call), the main loop reads nothing before a request starts,
        and that does not count as a fresh read."""
        P = _process
        self.host.sendall(_frame(P.CALL, 1, b"a") + _frame(P.CALL, 2, b"b") + _frame(P.CALL, 3, b"c"))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.assertEqual(self.queue.next(), (P.CALL, 1, b"a"))
        self.host.sendall(_frame(P.CANCEL, 3, b""))
        _until(lambda: self.link.poll.poll(0), "the cancel arrives")
        self.now += 1.0  # the CANCEL came long after the last read
        self.link.reader = -1  # another thread reads
        self.step = 0.0
        self.assertEqual(self.queue.next(), (P.CALL, 2, b"b"))
        self.link.reader = None
        self.host.sendall(_frame(P.CALL, 4, b"d"))
        self.assertEqual(self.queue.next(), (P.CALL, 4, b"d"), "3 started")
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 3, b""))

    def test_whole_frames_buffered_are_filed(self):
        """Whole frames already in the buffer (left there by a thread that
        read for a host call's reply) are filed before a request starts,
        however fresh the last read: that costs no system call."""
        P = _process
        self.host.sendall(_frame(P.CALL, 1, b"a") + _frame(P.CALL, 2, b"b"))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.step = 0.0
        self.assertEqual(self.queue.next(), (P.CALL, 1, b"a"))
        self.host.sendall(_frame(P.CANCEL, 2, b""))
        _until(lambda: self.link.poll.poll(0), "the cancel arrives")
        self.conn.fill()
        self.assertTrue(self.conn.whole())
        self.host.sendall(_frame(P.CALL, 4, b"d"))
        self.assertEqual(self.queue.next(), (P.CALL, 4, b"d"), "2 started although its CANCEL was buffered")
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 2, b""))

    def test_cancel_before_start(self):
        """A request cancelled (or withdrawn) while queued never starts:
        NOT_STARTED; a withdraw of one that started answers STARTED."""
        P = _process
        self.host.sendall(_frame(P.CALL, 1, b"a") + _frame(P.CALL, 2, b"b") + _frame(P.CALL, 3, b"c")
                          + _frame(P.CANCEL, 2, b""))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.assertEqual(self.queue.next(), (P.CALL, 1, b"a"))
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 2, b""))
        self.queue.current = 1
        self.host.sendall(_frame(P.CANCEL, 3, b"w") + _frame(P.CANCEL, 1, b"w") + _frame(P.CALL, 4, b"d"))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.assertEqual(self.queue.next(), (P.CALL, 4, b"d"))
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 3, b""))
        self.assertEqual(_read_frame(self.host), (P.STARTED, 1, b""))

    def test_large_request_behind_queued_ones(self):
        """Requests queued ahead of one larger than the read buffer: each
        comes out whole, and a buffer filled by that request's first part
        is not taken for the end of the stream."""
        P = _process
        big = bytes(range(256)) * (2 * P._READ_SIZE // 256)
        data = b"".join(_frame(P.CALL, i, b"small") for i in (1, 2, 3)) + _frame(P.CALL, 4, big)
        sender = threading.Thread(target=self.host.sendall, args=(data,))
        sender.start()
        try:
            _until(lambda: self.link.poll.poll(0), "the frames arrive")
            for rid in (1, 2, 3):
                self.assertEqual(self.queue.next(), (P.CALL, rid, b"small"))
            self.assertEqual(self.queue.next(), (P.CALL, 4, big))
        finally:
            sender.join(10)

    def test_cancelled_sees_the_running_request_only(self):
        """cancelled(rid) holds for a CANCEL of rid in the socket, not for a
        withdraw of it nor a CANCEL of another request."""
        P = _process
        self.host.sendall(_frame(P.CANCEL, 5, b"w") + _frame(P.CANCEL, 6, b""))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.assertFalse(self.queue.cancelled(5))
        self.assertTrue(self.queue.cancelled(6))
        self.assertFalse(self.queue.cancelled(7))

    def test_service_answers_withdraws(self):
        """service (the SIGUSR1 handler's) reads what is there: a withdraw
        of a queued request gets NOT_STARTED at once, a CANCEL of the
        running one is remembered."""
        P = _process
        self.host.sendall(_frame(P.CALL, 1, b"a") + _frame(P.CALL, 2, b"b"))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.assertEqual(self.queue.next(), (P.CALL, 1, b"a"))
        self.queue.current = 1
        self.host.sendall(_frame(P.CANCEL, 2, b"w") + _frame(P.CANCEL, 1, b""))
        _until(lambda: self.link.poll.poll(0), "the frames arrive")
        self.queue.service()
        self.assertEqual(_read_frame(self.host), (P.NOT_STARTED, 2, b""))
        self.assertTrue(self.queue.cancelled(1))
        self.assertFalse(self.link.poll.poll(0))


class ConnTest(unittest.TestCase):
    """_process._Conn reads ahead: one recv takes in every frame that has
    arrived, and the frames come out one at a time, whole."""

    def setUp(self):
        ours, self.host = socket.socketpair()
        self.host.settimeout(10)
        self.conn = _process._Conn(ours.detach(), 1 << 22)

    def tearDown(self):
        self.host.close()
        self.conn.sock.close()

    def test_frames_read_ahead(self):
        P = _process
        self.host.sendall(_frame(P.CALL, 1, b"a") + _frame(P.CANCEL, 1, b"") + _frame(P.CALL, 2, b"bb"))
        self.assertEqual(self.conn.read_now(), (P.CALL, 1, b"a"))
        # The rest came with the first recv: no read of the socket is
        # needed for it.
        self.host.close()
        self.assertTrue(self.conn.whole(), "got no whole frame buffered, want the CANCEL")
        self.assertEqual(self.conn.read_now(), (P.CANCEL, 1, b""))
        self.assertEqual(self.conn.read_now(), (P.CALL, 2, b"bb"))
        self.assertFalse(self.conn.buffered())
        self.assertIsNone(self.conn.read_now())

    def test_frame_in_pieces(self):
        P = _process
        data = _frame(P.CALL, 3, b"payload")
        for cut in range(1, len(data)):
            self.host.sendall(data[:cut])
            _until(lambda: self.conn.fill() and self.conn.buffered(), "the first piece arrives")
            self.assertFalse(self.conn.whole(), "got a whole frame from %d of %d bytes" % (cut, len(data)))
            self.host.sendall(data[cut:])
            self.assertEqual(self.conn.read_now(), (P.CALL, 3, b"payload"))

    def test_frame_larger_than_the_buffer(self):
        P = _process
        big = bytes(range(256)) * ((3 * _process._READ_SIZE) // 256 + 1)
        sender = threading.Thread(target=self.host.sendall,
                                  args=(_frame(P.CALL, 4, big) + _frame(P.CALL, 5, b"after"),))
        sender.start()
        try:
            self.assertEqual(self.conn.read_now(), (P.CALL, 4, big))
            self.assertEqual(self.conn.read_now(), (P.CALL, 5, b"after"))
        finally:
            sender.join(10)

    def test_fill_with_a_full_buffer(self):
        """fill() with the buffer full of a large frame's first part takes
        nothing in and reports no end of stream."""
        P = _process
        big = b"x" * (2 * P._READ_SIZE)
        sender = threading.Thread(target=self.host.sendall, args=(_frame(P.CALL, 8, big),))
        sender.start()
        try:
            _until(lambda: self.conn.fill() and self.conn.end == len(self.conn.buf), "the buffer fills")
            self.assertTrue(self.conn.fill(), "fill with a full buffer: got end of stream, want none")
            self.assertEqual(self.conn.read_now(), (P.CALL, 8, big))
        finally:
            sender.join(10)

    def test_truncated(self):
        P = _process
        for data, want in ((_frame(P.CALL, 6, b"abc")[:-1], "truncated frame"),
                           (_frame(P.CALL, 6, b"abc")[:5], "truncated frame header")):
            with self.subTest(want=want):
                ours, host = socket.socketpair()
                conn = _process._Conn(ours.detach(), 1 << 20)
                try:
                    host.sendall(data)
                    host.close()
                    with self.assertRaisesRegex(EOFError, "^%s$" % want):
                        conn.read_now()
                finally:
                    conn.sock.close()

    def test_over_the_limit(self):
        self.host.sendall(_H.pack((1 << 22) + 1, _process.CALL, 7))
        with self.assertRaisesRegex(ValueError, "exceeds the limit"):
            self.conn.read_now()


class NotNestedTest(unittest.TestCase):
    """The cancel handler ignores a signal that arrives while it runs."""

    def test_a_real_signal_inside_the_handler_is_dropped(self):
        # SIGUSR1 raised inside the handler (as the host's repeated signal
        # lands while the handler holds the queue's locks): the nested run
        # is dropped, so it cannot raise inside the outer one.
        runs = []
        lock = threading.Lock()

        @_process._not_nested
        def handler(signum, frame):
            runs.append(signum)
            acquired = lock.acquire(timeout=1)  # a nested run would wait on the outer's lock
            try:
                if len(runs) == 1:
                    signal.raise_signal(signal.SIGUSR1)
                    for _ in range(100):  # bytecode boundaries for the nested run
                        pass
            finally:
                if acquired:
                    lock.release()
            raise Cancelled("cancelled by the host")

        old = signal.signal(signal.SIGUSR1, handler)
        try:
            with self.assertRaises(Cancelled):
                signal.raise_signal(signal.SIGUSR1)
                for _ in range(100):
                    pass
        finally:
            signal.signal(signal.SIGUSR1, old)
        self.assertEqual(runs, [signal.SIGUSR1], "the nested signal ran the handler again")
        self.assertFalse(lock.locked(), "the handler's lock stayed held")

    def test_runs_again_after_it_ended(self):
        calls = []

        @_process._not_nested
        def handler(signum, frame):
            calls.append(signum)
            raise Cancelled("x")

        for _ in range(2):
            with self.assertRaises(Cancelled):
                handler(signal.SIGUSR1, None)
        self.assertEqual(len(calls), 2)


if __name__ == "__main__":
    unittest.main()
