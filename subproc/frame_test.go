package subproc

import (
	"bytes"
	"errors"
	"io"
	"testing"
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
			consumed = appendFrame(consumed, fr.typ, fr.id, fr.payload)
			if !bytes.HasPrefix(data, consumed) {
				t.Fatalf("re-encoded frames differ from the input")
			}
		}
	})
}
