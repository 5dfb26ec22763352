package subproc

import (
	"bytes"
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

// TestDecodeHostCall: the HOST_CALL payload is (call id, name, kwargs
// bytes); anything else is refused with errBadHostCall.
func TestDecodeHostCall(t *testing.T) {
	id, name, args, err := decodeHostCall(marshalOrFail(t, pymarshal.Tuple{int64(42), "lookup", []byte{'{', '0'}}))
	if err != nil || id != 42 || name != "lookup" || !bytes.Equal(args, []byte("{0")) {
		t.Fatalf("got (%d, %q, %q, %v), want (42, lookup, {0, nil)", id, name, args, err)
	}
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := decodeHostCall(tc.payload); !errors.Is(err, errBadHostCall) {
				t.Fatalf("got %v, want errBadHostCall", err)
			}
		})
	}
}

// FuzzDecodeHostCall: any payload decodes or fails with errBadHostCall,
// never panics, and what decodes encodes back to the same call; what the
// child's layout parses decodes the same in general.
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
	// The child's own layout (see parseHostCall).
	f.Add([]byte(")\x03i\x07\x00\x00\x00u\x04\x00\x00\x00echos\x02\x00\x00\x00{0"))
	f.Fuzz(func(t *testing.T, p []byte) {
		id, name, args, err := decodeHostCall(p)
		if err != nil {
			if !errors.Is(err, errBadHostCall) {
				t.Fatalf("got %v, want an error matching errBadHostCall", err)
			}
			return
		}
		if id > 1<<63-1 {
			t.Fatalf("got call id %d, beyond int64", id)
		}
		if _, _, _, ok := parseHostCall(p); ok {
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
		id2, name2, args2, err := decodeHostCall(again)
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
