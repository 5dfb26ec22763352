import marshal
import mmap
import os
import tempfile
import unittest

from snakepit import _process


class RegionTest(unittest.TestCase):
    """The child's side of the shared region, against requests a host could
    write: buffers are views inside the request, anything else is refused."""

    def setUp(self):
        f = tempfile.TemporaryFile()  # a file as the host's memfd
        self.addCleanup(f.close)
        self.fd = f.fileno()
        self.shm = _process._Shm(self.fd, 1, 1 << 20)

    def request(self, buffers, tail=b""):
        """Lay out a call as the host does: buffers from offset 0 at
        multiples of 64, the marshalled tuple after them. Returns its
        reference and the spans."""
        spans, off, blob = [], 0, bytearray()
        for b in buffers:
            blob += bytes(64) + b + bytes((-len(b)) % 64)
            spans += [off + 64, len(b)]
            off += 64 + len(b) + (-len(b)) % 64
        return self.write(blob, ("noop", {}, "cid", None, None, None, tuple(spans)), tail)

    def write(self, blob, call, tail=b""):
        data = marshal.dumps(call, 4) + tail
        os.ftruncate(self.fd, 1 << 16)
        with mmap.mmap(self.fd, 1 << 16) as m:
            m[:len(blob)] = bytes(blob)
            m[len(blob):len(blob) + len(data)] = data
        return _process._REF.pack(1, len(blob), len(data))

    def test_buffers_are_read_only_views(self):
        ref = self.request([b"first", b"x" * 100])
        args = _process._loads(self.shm.view(ref), self.shm)
        views = args[6]
        self.assertEqual([bytes(v) for v in views], [b"first", b"x" * 100])
        for v in views:
            self.assertTrue(v.readonly)
            self.assertIs(type(v.obj), mmap.mmap)
            v.release()

    def test_traced_call_keeps_its_tail(self):
        # A traced call's tuple has a call_id place and a traceparent after
        # the spans: they survive the spans' resolution.
        blob = bytes(64) + b"data" + bytes(60)
        ref = self.write(blob, ("noop", {}, "cid", None, None, None, (64, 4), None, "00-tp"))
        args = _process._loads(self.shm.view(ref), self.shm)
        self.assertEqual(len(args), 9)
        self.assertEqual(bytes(args[6][0]), b"data")
        self.assertEqual(args[7:], (None, "00-tp"))
        args[6][0].release()

    def test_with_id_names_the_call(self):
        self.assertEqual(_process._with_id(("c", {}, "cid", None, None, None), 5),
                         ("c", {}, "cid", None, None, None, None, 5))
        self.assertEqual(_process._with_id(("c", {}, "cid", None, None, None, None, None, "00-tp"), 5),
                         ("c", {}, "cid", None, None, None, None, 5, "00-tp"))

    def test_stream_keeps_copies(self):
        ref = self.request([b"kept"])
        args = _process._loads(self.shm.view(ref), self.shm, keep=True)
        self.assertEqual(args[6], [b"kept"])

    def test_hostile_spans_refused(self):
        for spans in [
            (0, 1 << 17),        # past the mapping
            (1 << 40, 1),        # offset far outside
            (-1, 4),             # negative offset
            (0, -4),             # negative length
            (60000, 100),        # inside the mapping, past the request
            (0,),                # not pairs
            (0, "4"),            # not ints
            (0, 4.0),
        ]:
            with self.subTest(spans=spans):
                ref = self.write(b"\0" * 64, ("noop", {}, "cid", None, None, None, spans))
                with self.assertRaises(_process._BadRegion):
                    _process._loads(self.shm.view(ref), self.shm)

    def test_no_region(self):
        data = marshal.dumps(("noop", {}, "cid", None, None, None, (0, 4)), 4)
        with self.assertRaises(_process._BadRegion):
            _process._loads(data, None)

    def test_reply_after_request(self):
        ref = self.request([b"y" * 1000])
        args = _process._loads(self.shm.view(ref), self.shm)
        view = args[6][0]
        end = _process._REF.unpack(ref)[1] + _process._REF.unpack(ref)[2]
        out = self.shm.put((b"head", view))
        gen, off, n = _process._REF.unpack(out)
        self.assertGreaterEqual(off, end)
        self.assertEqual(off % 64, 0)
        self.assertEqual(self.shm.mm[off:off + n], b"head" + b"y" * 1000)
        self.assertEqual(bytes(view), b"y" * 1000)  # the request is intact
        view.release()

    def test_reply_at_zero_when_it_does_not_fit_after(self):
        shm = _process._Shm(self.fd, 1, 1 << 16)
        ref = self.request([b"z" * 40000])
        args = _process._loads(shm.view(ref), shm)
        view = args[6][0]
        out = shm.put((b"head", view))  # 40 KB after 40 KB: past the 64 KiB cap
        gen, off, n = _process._REF.unpack(out)
        self.assertEqual(off, 0)
        self.assertEqual(shm.mm[:n], b"head" + b"z" * 40000)
        view.release()

    def test_echo_in_place(self):
        ref = self.request([b"a" * 100, b"b" * 300])
        args = _process._loads(self.shm.view(ref), self.shm)
        out = self.shm.echo(1)
        gen, off, n = _process._REF.unpack(out)
        self.assertEqual(off, 256 - 10)  # buffer 1 lies at 256 (64 + 128 + 64): its headers before it
        got = marshal.loads(marshal.loads(self.shm.mm[off:off + n]))
        self.assertEqual(got, b"b" * 300)
        self.assertEqual(bytes(args[6][0]), b"a" * 100)  # the other buffer is intact
        self.assertIsNone(self.shm.echo(1))  # once per request
        self.assertIsNone(self.shm.echo(5))
        for v in args[6]:
            v.release()

    def test_dispatcher_reports_echoed_buffers(self):
        from snakepit._dispatch import Dispatcher
        from snakepit._wire import EchoedBuffer, MARKER
        d = Dispatcher("snakepit.tests.fixture_adapter", worker_id="w1")
        d.raw_results = d.echo_buffers = True
        big = memoryview(b"e" * (64 << 10)).toreadonly()
        kw = (MARKER, "call", {"b": (MARKER, "buf", 0)})
        r = d.call("echo_bytes", kw, "cid", None, None, None, [big])
        self.assertIs(type(r), EchoedBuffer)
        self.assertEqual((r.index, bytes(r.raw)), (0, b"e" * (64 << 10)))
        r = d.call("echo_bytes", dict(kw[2], cut=True), "cid", None, None, None, [big])
        self.assertIs(type(r), memoryview)  # a slice: not the buffer itself
        d.echo_buffers = False
        r = d.call("echo_bytes", kw, "cid", None, None, None, [big])
        self.assertIs(type(r), memoryview)

    def test_view_kept_across_growth(self):
        ref = self.request([b"k" * 100])
        args = _process._loads(self.shm.view(ref), self.shm)
        kept = args[6][0]
        self.shm.put((b"r" * (200 << 10),))  # grows: a new mapping
        self.assertEqual(len(kept), 100)  # still mapped, still readable
        kept.release()


if __name__ == "__main__":
    unittest.main()


class HostRegionTest(unittest.TestCase):
    """The child's side of the host-call region: spans never overlap while
    they are held, are reused once freed, stay under the cap, and a result
    is taken only from the span granted for it."""

    def setUp(self):
        f = tempfile.TemporaryFile()  # a file as the host's memfd
        self.addCleanup(f.close)
        self.fd = f.fileno()
        self.shm = _process._HostShm(self.fd, 1, 1 << 20)

    def spans(self):
        return sorted(list(self.shm.args.values()) + list(self.shm.grants.values()))

    def assert_disjoint(self):
        spans = self.spans()
        for (a, n), (b, _) in zip(spans, spans[1:]):
            self.assertLessEqual(a + n, b, "spans %r overlap" % (spans,))

    def test_args_written_where_the_reference_says(self):
        ref = self.shm.put_args(1, (b"head", b"x" * 1000))
        gen, off, n = _process._REF.unpack(ref)
        self.assertEqual((gen, n), (0, 1004))
        with open("/proc/self/fd/%d" % self.fd, "rb") as f:
            f.seek(off)
            self.assertEqual(f.read(n), b"head" + b"x" * 1000)
        self.assertGreaterEqual(os.fstat(self.fd).st_size, off + n)

    def test_spans_disjoint_and_reused(self):
        refs = {}
        for hid, n in enumerate([100, 5000, 64, 70000, 1]):
            refs[hid] = self.shm.put_args(hid, (b"a" * n,))
            self.assert_disjoint()
        g = self.shm.grant(99, 3000)
        self.assertTrue(g)
        self.assert_disjoint()
        _, off1, _ = _process._REF.unpack(refs[1])
        self.shm.release(1)
        self.assertNotIn(1, self.shm.args)
        # The freed room is taken again by what fits in it.
        ref = self.shm.put_args(7, (b"b" * 4000,))
        self.assertEqual(_process._REF.unpack(ref)[1], off1)
        self.assert_disjoint()
        self.shm.release(12345)  # unknown: nothing happens

    def test_cap(self):
        self.assertIsNone(self.shm.put_args(1, (b"x" * ((1 << 20) + 1),)))
        self.assertTrue(self.shm.put_args(2, (b"x" * (700 << 10),)))
        self.assertIsNone(self.shm.put_args(3, (b"x" * (400 << 10),)))
        self.assertEqual(self.shm.grant(4, 400 << 10), b"")
        self.assertLessEqual(os.fstat(self.fd).st_size, 1 << 20)
        self.shm.release(2)
        self.assertTrue(self.shm.put_args(3, (b"x" * (400 << 10),)))

    def test_take_only_the_granted_span(self):
        ref = self.shm.grant(5, 10)
        gen, off, n = _process._REF.unpack(ref)
        with open("/proc/self/fd/%d" % self.fd, "r+b") as f:
            f.seek(off)
            f.write(b"0123456789")
        with self.assertRaises(ValueError):
            self.shm.take(5, _process._REF.pack(0, off + 64, n))
        with self.assertRaises(ValueError):
            self.shm.take(6, ref)  # granted for another call
        self.assertEqual(self.shm.take(5, ref), b"0123456789")
        self.assertEqual(self.shm.grants, {})
        with self.assertRaises(ValueError):
            self.shm.take(5, ref)  # taken already

    def test_grown_mapping_keeps_earlier_spans(self):
        small = self.shm.put_args(1, (b"s" * 100,))
        big = self.shm.put_args(2, (b"B" * (600 << 10),))  # grows the region
        _, off, n = _process._REF.unpack(small)
        self.assertEqual(self.shm.mm[off:off + n], b"s" * 100)
        _, off, n = _process._REF.unpack(big)
        self.assertEqual(self.shm.mm[off:off + 3], b"BBB")
