package subproc

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFrameRoundTrip(t *testing.T) {
	var b []byte
	b = appendFrame(b, frameCall, 7, []byte("payload"))
	b = appendFrame(b, framePing, 1<<60, nil)
	r := bytes.NewReader(b)
	f, err := readFrame(r, 100, nil)
	if err != nil || f.typ != frameCall || f.id != 7 || string(f.payload) != "payload" {
		t.Fatalf("first frame: got %+v, %v", f, err)
	}
	f, err = readFrame(r, 100, nil)
	if err != nil || f.typ != framePing || f.id != 1<<60 || len(f.payload) != 0 {
		t.Fatalf("second frame: got %+v, %v", f, err)
	}
	if _, err := readFrame(r, 100, nil); err != io.EOF {
		t.Fatalf("at the boundary: got %v, want io.EOF", err)
	}
}

func TestFrameErrors(t *testing.T) {
	full := appendFrame(nil, frameReply, 1, []byte("0123456789"))
	cases := []struct {
		name string
		data []byte
		max  int
		want error
	}{
		{"truncated header", full[:5], 100, ErrTruncated},
		{"truncated payload", full[:len(full)-1], 100, ErrTruncated},
		{"too large", full, 5, ErrFrameTooLarge},
		{"unknown type", appendFrame(nil, 99, 1, nil), 100, ErrBadFrame},
		{"zero type", appendFrame(nil, 0, 1, nil), 100, ErrBadFrame},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readFrame(bytes.NewReader(tc.data), tc.max, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzReadFrame: arbitrary bytes never panic, never allocate beyond the cap,
// and every frame read re-encodes to the bytes it came from.
func FuzzReadFrame(f *testing.F) {
	f.Add(appendFrame(nil, frameHello, 0, []byte("hello")))
	f.Add(appendFrame(appendFrame(nil, frameReply, 3, []byte{1, 2, 3}), framePong, 4, nil))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 5})
	f.Add([]byte{})
	f.Add(appendFrame(nil, frameReply|frameShared, 5, regionRef{1, 0, 10}.append(nil)))
	f.Add(appendFrame(nil, frameReply|frameShared, 5, []byte{1, 2, 3}))
	f.Add(appendFrame(appendFrame(nil, frameNotStarted, 6, nil), frameStarted, 7, nil))
	f.Add(appendFrame(nil, frameCancel, 8, []byte("w")))
	f.Add(appendFrame(nil, frameStarted+1, 9, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var consumed []byte
		for {
			fr, err := readFrame(r, 1<<16, nil)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrBadFrame) {
					t.Fatalf("unexpected error type: %v", err)
				}
				if err == io.EOF && !bytes.Equal(consumed, data) {
					t.Fatalf("EOF before the end of the input")
				}
				return
			}
			if len(fr.payload) > 1<<16 {
				t.Fatalf("payload beyond the cap: %d", len(fr.payload))
			}
			if fr.typ&frameShared != 0 && len(fr.payload) != regionRefSize {
				t.Fatalf("shared frame with a payload of %d bytes, want %d", len(fr.payload), regionRefSize)
			}
			consumed = appendFrame(consumed, fr.typ, fr.id, fr.payload)
			if !bytes.HasPrefix(data, consumed) {
				t.Fatalf("re-encoded frames differ from the input")
			}
		}
	})
}

// stutterReader hands out one byte per Read and fails every other Read with
// a timeout, like a connection whose read deadline keeps passing.
type stutterReader struct {
	data []byte
	fail bool
}

type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }

func (r *stutterReader) Read(p []byte) (int, error) {
	r.fail = !r.fail
	if r.fail {
		return 0, timeoutError{}
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	p[0] = r.data[0]
	r.data = r.data[1:]
	return 1, nil
}

// TestFrameReaderResumes: a frame read across many timeouts, at every byte
// boundary of header and payload, comes out whole; so does the next one.
func TestFrameReaderResumes(t *testing.T) {
	inner := appendFrame(nil, frameReply, 2, []byte("looks like a frame"))
	var data []byte
	data = appendFrame(data, frameReply, 1, inner) // a payload holding a frame
	data = appendFrame(data, frameReply, 2, []byte("second"))
	fr := frameReader{r: &stutterReader{data: data}, max: 1 << 10}
	var got []frame
	timeouts := 0
	for len(got) < 2 {
		f, err := fr.next()
		if err != nil {
			if _, ok := err.(timeoutError); !ok {
				t.Fatalf("got %v, want only timeouts", err)
			}
			timeouts++
			continue
		}
		got = append(got, f)
	}
	if got[0].id != 1 || !bytes.Equal(got[0].payload, inner) {
		t.Fatalf("first frame: got id %d payload %q, want id 1 payload %q", got[0].id, got[0].payload, inner)
	}
	if got[1].id != 2 || string(got[1].payload) != "second" {
		t.Fatalf("second frame: got id %d payload %q, want id 2 payload %q", got[1].id, got[1].payload, "second")
	}
	if timeouts < len(data) {
		t.Fatalf("got %d timeouts, want at least %d", timeouts, len(data))
	}
	if _, err := fr.next(); err != io.EOF && !isTimeout(err) {
		t.Fatalf("at the end: got %v, want io.EOF", err)
	}
}

func isTimeout(err error) bool {
	_, ok := err.(timeoutError)
	return ok
}

// FuzzRegionRef: any reference a child sends is either refused with a
// typed error or names bytes inside the mapping, which come back as a copy
// of exactly the length it gave; the region never faults.
func FuzzRegionRef(f *testing.F) {
	f.Add(regionRef{1, 0, 10}.append(nil), uint16(0))
	f.Add(regionRef{1, 4090, 10}.append(nil), uint16(0))
	f.Add(regionRef{2, 0, 10}.append(nil), uint16(3))
	f.Add(regionRef{1, 8, ^uint64(0) - 6}.append(nil), uint16(0))
	f.Add([]byte{1, 2, 3}, uint16(0))
	r, err := newRegion("snakepit-shm", 1<<20)
	if err != nil {
		f.Fatal(err)
	}
	defer r.close()
	fill := bytes.Repeat([]byte("0123456789abcdef"), 256)
	if _, ok, err := r.put(fill); !ok || err != nil {
		f.Fatalf("put: %v, %v", ok, err)
	}
	f.Fuzz(func(t *testing.T, p []byte, grow uint16) {
		// grow: the child grew the region by that many pages first.
		if grow > 0 {
			var st unix.Stat_t
			if err := unix.Fstat(int(r.file.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			if err := unix.Ftruncate(int(r.file.Fd()), st.Size+int64(grow)*int64(pageSize)); err != nil {
				t.Fatal(err)
			}
		}
		ref, err := parseRegionRef(p)
		if err != nil {
			if !errors.Is(err, ErrBadRegion) {
				t.Fatalf("got %v, want ErrBadRegion", err)
			}
			return
		}
		gen := r.gen
		out, err := r.get(ref, 1<<19)
		if err != nil {
			if !errors.Is(err, ErrBadRegion) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("got %v, want ErrBadRegion or ErrFrameTooLarge", err)
			}
			return
		}
		// An older generation is accepted (the child may not have seen the
		// host grow the region); one more than a step ahead is not.
		if uint64(len(out)) != ref.n || ref.off+ref.n > uint64(r.size()) || ref.gen > gen+1 {
			t.Fatalf("reference %+v: got %d bytes from a region of %d (generation %d)", ref, len(out), r.size(), gen)
		}
	})
}

// countingReader counts the reads that reach it.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// TestFrameReaderReadsAhead: the frames a peer sent together cost one read
// of the connection; ready tells a whole frame read ahead from a partial
// one; a payload larger than the read-ahead buffer comes out whole.
func TestFrameReaderReadsAhead(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), readAhead/5)
	var data []byte
	data = appendFrame(data, frameReply, 1, []byte("one"))
	data = appendFrame(data, frameNotStarted, 2, nil)
	data = appendFrame(data, frameReply, 3, big)
	data = appendFrame(data, frameReply, 4, []byte("four"))
	cr := &countingReader{r: bytes.NewReader(data)}
	fr := newFrameReader(cr, 1<<20)
	if fr.ready() {
		t.Fatal("ready before any read: got true, want false")
	}
	want := []struct {
		id      uint64
		payload []byte
		ready   bool // after this frame: the next one is whole in the buffer
	}{{1, []byte("one"), true}, {2, []byte{}, false}, {3, big, false}, {4, []byte("four"), false}}
	for i, w := range want {
		f, err := fr.next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.id != w.id || !bytes.Equal(f.payload, w.payload) {
			t.Fatalf("frame %d: got id %d and %d bytes, want id %d and %d bytes", i, f.id, len(f.payload), w.id, len(w.payload))
		}
		if i == 0 && cr.reads != 1 {
			t.Fatalf("reads for the first frame: got %d, want 1", cr.reads)
		}
		if got := fr.ready(); got != w.ready {
			t.Fatalf("ready after frame %d: got %v, want %v", i, got, w.ready)
		}
	}
	if _, err := fr.next(); err != io.EOF {
		t.Fatalf("at the end: got %v, want io.EOF", err)
	}
}

// TestFrameReaderReadyRefusal: a header above the limit, read ahead, is
// ready (next refuses it without reading further).
func TestFrameReaderReadyRefusal(t *testing.T) {
	data := appendFrame(nil, frameReply, 1, []byte("ok"))
	data = appendFrame(data, frameReply, 2, make([]byte, 100))
	fr := newFrameReader(bytes.NewReader(data), 50)
	if _, err := fr.next(); err != nil {
		t.Fatal(err)
	}
	if !fr.ready() {
		t.Fatal("ready with an oversized header buffered: got false, want true")
	}
	if _, err := fr.next(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
	if fr.ready() {
		t.Fatal("ready after a frame-level error: got true, want false")
	}
}
