package subproc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
)

func marshalOrFail(t testing.TB, v any) []byte {
	t.Helper()
	b, err := pymarshal.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// childHostCall lays out a HOST_CALL payload as the child writes it (see
// parseHostCallLayout); in nil: the tuple of 3.
func childHostCall(id int64, name string, args []byte, in [][]byte) []byte {
	n := byte(3)
	if in != nil {
		n = 4
	}
	p := []byte{')', n}
	if id < 1<<31 {
		p = append(p, 'i')
		p = binary.LittleEndian.AppendUint32(p, uint32(id))
	} else { // as marshal writes a long: digits of 15 bits, the lowest first
		var digits []uint16
		for v := id; v > 0; v >>= 15 {
			digits = append(digits, uint16(v&(1<<15-1)))
		}
		p = append(p, 'l')
		p = binary.LittleEndian.AppendUint32(p, uint32(len(digits)))
		for _, d := range digits {
			p = binary.LittleEndian.AppendUint16(p, d)
		}
	}
	p = append(p, 'u')
	p = binary.LittleEndian.AppendUint32(p, uint32(len(name)))
	p = append(p, name...)
	p = append(p, 's')
	p = binary.LittleEndian.AppendUint32(p, uint32(len(args)))
	p = append(p, args...)
	if in == nil {
		return p
	}
	p = append(p, 's')
	p = binary.LittleEndian.AppendUint32(p, uint32(8*len(in)))
	for _, b := range in {
		p = binary.LittleEndian.AppendUint64(p, uint64(len(b)))
	}
	for _, b := range in {
		p = append(p, b...)
	}
	return p
}

// TestDecodeHostCall: the HOST_CALL payload is (call id, name, kwargs
// bytes), or with buffers (call id, name, kwargs, lengths) followed by
// them; anything else is refused with errBadHostCall. In the child's
// layout the kwargs and buffers share the payload's memory.
func TestDecodeHostCall(t *testing.T) {
	id, name, args, in, err := decodeHostCall(marshalOrFail(t, pymarshal.Tuple{int64(42), "lookup", []byte{'{', '0'}}))
	if err != nil || id != 42 || name != "lookup" || !bytes.Equal(args, []byte("{0")) || in != nil {
		t.Fatalf("got (%d, %q, %q, %q, %v), want (42, lookup, {0, nil, nil)", id, name, args, in, err)
	}
	bufs := [][]byte{[]byte("first"), {}, bytes.Repeat([]byte("x"), 1000)}
	p := childHostCall(7, "echo", []byte("{0"), bufs)
	id, name, args, in, err = decodeHostCall(p)
	if err != nil || id != 7 || name != "echo" || !bytes.Equal(args, []byte("{0")) || len(in) != 3 {
		t.Fatalf("with buffers: got (%d, %q, %q, %d buffers, %v), want (7, echo, {0, 3 buffers, nil)", id, name, args, len(in), err)
	}
	for i := range bufs {
		if !bytes.Equal(in[i], bufs[i]) {
			t.Fatalf("buffer %d: got %q, want %q", i, in[i], bufs[i])
		}
	}
	if &in[2][0] != &p[len(p)-1000] || &args[0] != &p[len("\x29\x04i1234u1234echos1234")] {
		t.Fatal("the kwargs and buffers are copies, want them sharing the payload's memory")
	}
	if _, _, _, in, err = decodeHostCall(childHostCall(7, "echo", []byte("{0"), [][]byte{})); err != nil || in == nil || len(in) != 0 {
		t.Fatalf("no buffers in a tuple of 4: got %v, %v", in, err)
	}
	// Call ids past int32, as marshal writes them (a long), with and
	// without buffers; and what marshal writes agrees.
	for _, big := range []int64{1 << 31, 1<<40 + 12345, 1<<63 - 1} {
		for _, b := range [][][]byte{nil, bufs} {
			id, _, _, in, err := decodeHostCall(childHostCall(big, "echo", []byte("{0"), b))
			if err != nil || id != uint64(big) || len(in) != len(b) {
				t.Fatalf("call id %d with %d buffers: got %d, %d buffers, %v", big, len(b), id, len(in), err)
			}
		}
		want := marshalOrFail(t, big)
		if got := childHostCall(big, "echo", []byte("{0"), nil)[2:]; !bytes.HasPrefix(got, want) {
			t.Fatalf("call id %d: the child's layout %q, marshal's %q", big, got, want)
		}
	}
	short := childHostCall(7, "echo", []byte("{0"), bufs)
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"garbage", []byte("garbage")},
		{"two-items", marshalOrFail(t, pymarshal.Tuple{int64(1), "f"})},
		{"four-items", marshalOrFail(t, pymarshal.Tuple{int64(1), "f", []byte{}, nil})},
		{"negative-id", marshalOrFail(t, pymarshal.Tuple{int64(-1), "f", []byte{}})},
		{"str-id", marshalOrFail(t, pymarshal.Tuple{"1", "f", []byte{}})},
		{"bytes-name", marshalOrFail(t, pymarshal.Tuple{int64(1), []byte("f"), []byte{}})},
		{"str-args", marshalOrFail(t, pymarshal.Tuple{int64(1), "f", "{}"})},
		{"dict", marshalOrFail(t, map[string]any{"id": 1})},
		{"trailing", append(marshalOrFail(t, pymarshal.Tuple{int64(1), "f", []byte{}}), 0)},
		{"layout-trailing", append(childHostCall(1, "f", nil, nil), 0)},
		{"buffers-short", short[:len(short)-1]},
		{"buffers-trailing", append(childHostCall(1, "f", nil, bufs), 0)},
		{"lengths-not-uint64s", []byte(")\x04i\x01\x00\x00\x00u\x01\x00\x00\x00fs\x00\x00\x00\x00s\x03\x00\x00\x00abc")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, _, err := decodeHostCall(tc.payload); !errors.Is(err, errBadHostCall) {
				t.Fatalf("got %v, want errBadHostCall", err)
			}
		})
	}
}

// FuzzDecodeHostCall: any payload decodes or fails with errBadHostCall,
// never panics, and what decodes encodes back to the same call; what the
// child's layout parses decodes the same in general (a tuple of 3), or
// lays out again the same (with buffers).
func FuzzDecodeHostCall(f *testing.F) {
	for _, v := range []any{
		pymarshal.Tuple{int64(1), "echo", []byte{}},
		pymarshal.Tuple{int64(1 << 40), "lookup", marshalOrFail(f, map[string]any{"id": 7, "name": "snake"})},
		pymarshal.Tuple{int64(-3), "f", []byte("x")},
		[]any{int64(1), "f", []byte("x")},
		pymarshal.Tuple{int64(1), "f"},
	} {
		f.Add(marshalOrFail(f, v))
	}
	f.Add([]byte("garbage"))
	f.Add([]byte{})
	f.Add(childHostCall(7, "echo", []byte("{0"), nil))
	f.Add(childHostCall(7, "echo", []byte("{0"), [][]byte{[]byte("ab"), {}, []byte("cde")}))
	f.Fuzz(func(t *testing.T, p []byte) {
		id, name, args, in, err := decodeHostCall(p)
		if err != nil {
			if !errors.Is(err, errBadHostCall) {
				t.Fatalf("got %v, want an error matching errBadHostCall", err)
			}
			return
		}
		if id > 1<<63-1 {
			t.Fatalf("got call id %d, beyond int64", id)
		}
		if in != nil {
			if again := childHostCall(int64(id), name, args, in); !bytes.Equal(again, p) {
				t.Fatalf("with %d buffers: laid out again as %q, want %q", len(in), again, p)
			}
			return
		}
		if _, _, _, _, ok := parseHostCallLayout(p); ok {
			v, err := pymarshal.DecodeLimit(p, int64(len(p))+hostCallBudget)
			want := pymarshal.Tuple{int64(id), name, args}
			if tv, _ := v.([]any); err != nil || len(tv) != 3 || tv[0] != want[0] || tv[1] != want[1] || !bytes.Equal(tv[2].([]byte), args) {
				t.Fatalf("the child's layout parsed to (%d, %q, %q), the general decoding to %#v (%v)", id, name, args, v, err)
			}
		}
		again, err := pymarshal.Marshal(pymarshal.Tuple{int64(id), name, args})
		if err != nil {
			return // a name that is not valid UTF-8 does not encode back
		}
		id2, name2, args2, _, err := decodeHostCall(again)
		if err != nil || id2 != id || name2 != name || !bytes.Equal(args2, args) {
			t.Fatalf("round trip: got (%d, %q, %q, %v), want (%d, %q, %q)", id2, name2, args2, err, id, name, args)
		}
	})
}

// TestHostReadingTakeovers: readers relieved one after the other (each
// ran a host function past the budget) all stop reading when their
// functions return; only the last reader goes on.
func TestHostReadingTakeovers(t *testing.T) {
	starts := 0
	hr := &hostReading{res: make(chan replyResult, 1), start: func() { starts++ }}
	hr.armed = true // no timer: watch is called by hand
	longAgo := time.Now().Add(-time.Hour)
	var gens []uint64
	for range 3 {
		g := hr.enter()
		gens = append(gens, g)
		hr.since = longAgo
		hr.watch() // past the budget: the next reader starts
		hr.armed = true
	}
	last := hr.enter()
	if starts != 3 {
		t.Fatalf("readers started: got %d, want 3", starts)
	}
	for _, g := range gens {
		if hr.leave(g) {
			t.Fatalf("reader of gen %d (relieved) still reads after leave, want it stopped", g)
		}
	}
	if !hr.leave(last) {
		t.Fatal("the last reader stopped reading, want it to go on")
	}
	// Not inline: the watch starts nobody.
	hr.watch()
	if starts != 3 {
		t.Fatalf("readers started after the last leave: got %d, want 3", starts)
	}
}
