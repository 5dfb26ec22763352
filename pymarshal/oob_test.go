package pymarshal

import (
	"errors"
	"testing"
	"unsafe"

	"github.com/snakepit-go/snakepit/internal/valuetest"
)

// TestAppendMarshalOOB: []byte values of at least minOOB bytes become
// ("\x00snakepit", "buf", i) markers, their slices (not copies) appended to
// oob in order; smaller ones, byte arrays and RawValues stay inline.
func TestAppendMarshalOOB(t *testing.T) {
	big1, big2, small := make([]byte, 100), make([]byte, 64), []byte("tiny")
	big1[0], big2[0] = 1, 2
	type rec struct {
		Blob  []byte   `json:"blob"`
		Fixed [64]byte `json:"fixed"`
	}
	prior := [][]byte{[]byte("already there")}
	v := map[string]any{
		"a":   big1,
		"b":   []any{small, big2},
		"c":   rec{Blob: big1},
		"raw": RawValue(mustMarshal(t, []byte("r"))),
	}
	data, oob, err := AppendMarshalOOB([]byte("prefix"), v, 64, prior)
	if err != nil {
		t.Fatal(err)
	}
	if string(data[:6]) != "prefix" {
		t.Fatalf("got %q at the start, want the dst prefix kept", data[:6])
	}
	got, err := Decode(data[6:])
	if err != nil {
		t.Fatal(err)
	}
	marker := func(i int64) []any { return []any{MarkerTag, "buf", i} }
	want := map[string]any{
		"a":   marker(1),
		"b":   []any{small, marker(2)},
		"c":   map[string]any{"blob": marker(3), "fixed": make([]byte, 64)},
		"raw": []byte("r"),
	}
	if !valuetest.Equal(got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
	if len(oob) != 4 {
		t.Fatalf("got %d out-of-band buffers, want 4 (1 given, 3 added)", len(oob))
	}
	for i, w := range [][]byte{prior[0], big1, big2, big1} {
		if unsafe.SliceData(oob[i]) != unsafe.SliceData(w) || len(oob[i]) != len(w) {
			t.Fatalf("oob[%d] does not alias the value's slice", i)
		}
	}
	// Everything else encodes as AppendMarshal does.
	plain, _, err := AppendMarshalOOB(nil, map[string]any{"x": small, "n": 1}, 64, nil)
	if err != nil || string(plain) != string(mustMarshal(t, map[string]any{"x": small, "n": 1})) {
		t.Fatalf("got %q, %v; want Marshal's bytes", plain, err)
	}
}

// TestAppendMarshalOOBThreshold: minOOB <= 0 takes every []byte, empty
// ones included; errors come back as from Marshal.
func TestAppendMarshalOOBThreshold(t *testing.T) {
	data, oob, err := AppendMarshalOOB(nil, []any{[]byte{}, []byte("x")}, 0, nil)
	if err != nil || len(oob) != 2 {
		t.Fatalf("got %d buffers, %v; want 2", len(oob), err)
	}
	got, _ := Decode(data)
	want := []any{[]any{MarkerTag, "buf", int64(0)}, []any{MarkerTag, "buf", int64(1)}}
	if !valuetest.Equal(got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
	if _, _, err := AppendMarshalOOB(nil, map[string]any{"c": make(chan int)}, 0, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("channel: got %v, want ErrUnsupported", err)
	}
}

// TestAppendMarshalOOBChecked: the encoding is reported checked unless a
// RawValue was copied in, wherever it is; a checked map encodes to one
// dict CheckDict accepts.
func TestAppendMarshalOOBChecked(t *testing.T) {
	type withAny struct{ A any }
	cases := []struct {
		v    any
		want bool
	}{
		{map[string]any{"a": 1, "b": []any{"x", 2.5, nil}, "c": map[string]any{"d": []byte("y")}}, true},
		{withAny{A: []string{"s"}}, true},
		{map[string]any{"big": make([]byte, 100)}, true}, // out of band
		{map[string]any{"a": RawValue("N")}, false},
		{map[string]any{"a": []any{Tuple{RawValue("i\x01\x00\x00\x00")}}}, false},
		{withAny{A: RawValue("T")}, false},
	}
	for _, tc := range cases {
		b, _, checked, err := AppendMarshalOOBChecked(nil, tc.v, 64, nil)
		if err != nil {
			t.Fatal(err)
		}
		if checked != tc.want {
			t.Errorf("%#v: got checked %v, want %v", tc.v, checked, tc.want)
		}
		if err := CheckDict(b); err != nil {
			t.Errorf("%#v: CheckDict: got %v, want nil", tc.v, err)
		}
	}
}
