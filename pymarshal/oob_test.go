package pymarshal

import (
	"bytes"
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

// oobCall is what a host call's arguments look like with out-of-band
// buffers: markers for a []byte field, an any field, nested ones, and an
// array with out-of-band data.
type oobCall struct {
	Blob   []byte         `json:"blob"`
	Any    any            `json:"any"`
	Nested map[string]any `json:"nested"`
	Arr    Array          `json:"arr"`
	Vec    []float64      `json:"vec"`
	Small  []byte         `json:"small"`
}

func oobInput(t *testing.T) (data []byte, oob [][]byte, want oobCall) {
	t.Helper()
	b0 := bytes.Repeat([]byte("x"), 100)
	b1 := bytes.Repeat([]byte("y"), 70)
	floats := make([]float64, 100)
	for i := range floats {
		floats[i] = float64(i) - 0.5
	}
	arr, err := NewArray(floats, 100)
	if err != nil {
		t.Fatal(err)
	}
	v := map[string]any{
		"blob":   b0,
		"any":    b1,
		"nested": map[string]any{"l": []any{1, b0}},
		"arr":    arr,
		"vec":    arr,
		"small":  []byte("s"),
	}
	data, oob, err = AppendMarshalOOB(nil, v, 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(oob) != 5 {
		t.Fatalf("got %d out-of-band buffers, want 5", len(oob))
	}
	// The receiver's own copies of the buffers: what it resolves to.
	for i := range oob {
		oob[i] = bytes.Clone(oob[i])
	}
	want = oobCall{Blob: b0, Any: b1, Nested: map[string]any{"l": []any{int64(1), b0}},
		Arr: arr, Vec: floats, Small: []byte("s")}
	return data, oob, want
}

// TestUnmarshalOOB: markers resolve to the out-of-band buffers themselves
// (no copy) in []byte fields, interfaces, nested values and array data;
// what is not out of band is decoded as by Unmarshal.
func TestUnmarshalOOB(t *testing.T) {
	data, oob, want := oobInput(t)
	var got oobCall
	if err := UnmarshalOOB(data, &got, oob); err != nil {
		t.Fatal(err)
	}
	// Keys are encoded sorted: any, arr, blob, nested, small, vec.
	want.Arr.Data = oob[1]
	if !valuetest.Equal(got.Any, want.Any) || !bytes.Equal(got.Blob, want.Blob) ||
		!valuetest.Equal(got.Nested, want.Nested) || !valuetest.Equal(got.Vec, want.Vec) ||
		!bytes.Equal(got.Small, want.Small) || got.Arr.DType != "<f8" || !valuetest.Equal(got.Arr.Shape, []int{100}) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
	same := func(what string, b, buf []byte) {
		t.Helper()
		if unsafe.SliceData(b) != unsafe.SliceData(buf) || len(b) != len(buf) || cap(b) != len(b) {
			t.Errorf("%s: got a slice that is not the out-of-band buffer itself (capacity cut to its length)", what)
		}
	}
	same("any", got.Any.([]byte), oob[0])
	same("array data", got.Arr.Data, oob[1])
	same("blob", got.Blob, oob[2])
	same("nested", got.Nested["l"].([]any)[1].([]byte), oob[3])
	if unsafe.SliceData(got.Small) == unsafe.SliceData(data[bytes.Index(data, []byte("s")):]) {
		t.Errorf("small: got a slice of the input, want a copy")
	}
	// Into any: DecodeOOB.
	var v any
	if err := UnmarshalOOB(data, &v, oob); err != nil {
		t.Fatal(err)
	}
	same("decoded blob", v.(map[string]any)["blob"].([]byte), oob[2])
	// Without buffers, buffer markers stay tuples (Unmarshal as before).
	var plain map[string]any
	if err := Unmarshal(mustMarshal(t, map[string]any{"blob": Tuple{MarkerTag, "buf", 0}}), &plain); err != nil {
		t.Fatal(err)
	}
	if _, ok := plain["blob"].([]any); !ok {
		t.Errorf("Unmarshal: blob is %T, want the marker tuple", plain["blob"])
	}
}

// TestUnmarshalOOBBadReferences: a reference outside the buffers given,
// one that is not an int, or a marker of the wrong shape is an error
// wrapping ErrMalformed, into any destination.
func TestUnmarshalOOBBadReferences(t *testing.T) {
	mk := func(v any) []byte {
		b, err := Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	bufs := [][]byte{[]byte("only")}
	cases := map[string][]byte{
		"index past the end": mk(map[string]any{"blob": Tuple{MarkerTag, "buf", 1}}),
		"negative index":     mk(map[string]any{"blob": Tuple{MarkerTag, "buf", -1}}),
		"huge index":         mk(map[string]any{"blob": Tuple{MarkerTag, "buf", int64(1) << 40}}),
		"str index":          mk(map[string]any{"blob": Tuple{MarkerTag, "buf", "0"}}),
		"four fields":        mk(map[string]any{"blob": Tuple{MarkerTag, "buf", 0, 0}}),
		"two fields":         mk(map[string]any{"blob": Tuple{MarkerTag, "buf"}}),
		"array past the end": mk(map[string]any{"arr": Tuple{MarkerTag, "array", "|u1", Tuple{4}, 3}}),
		"array data size":    mk(map[string]any{"arr": Tuple{MarkerTag, "array", "<f8", Tuple{4}, 0}}),
	}
	for name, data := range cases {
		for _, dst := range []any{new(oobCall), new(any), new(map[string]any)} {
			err := UnmarshalOOB(data, dst, bufs)
			var pe *Error
			if !errors.Is(err, ErrMalformed) || !errors.As(err, &pe) {
				t.Errorf("%s into %T: got %v, want a *pymarshal.Error wrapping ErrMalformed", name, dst, err)
			}
		}
	}
	// No buffers at all: any reference is outside.
	if err := UnmarshalOOB(mk(map[string]any{"blob": Tuple{MarkerTag, "buf", 0}}), new(oobCall), nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("no buffers: got %v, want ErrMalformed", err)
	}
}

// TestAppendInline: the out-of-band buffers go back inline; tuples stay
// tuples; the result decodes to what DecodeOOB gives.
func TestAppendInline(t *testing.T) {
	data, oob, _ := oobInput(t)
	withTuple, oob2, err := AppendMarshalOOB(nil, map[string]any{"t": Tuple{1, make([]byte, 100)}}, 64, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		data []byte
		oob  [][]byte
	}{{data, oob}, {withTuple, oob2}} {
		inline, err := AppendInline([]byte("pre"), c.data, c.oob)
		if err != nil {
			t.Fatal(err)
		}
		if string(inline[:3]) != "pre" {
			t.Fatalf("got %q first, want the dst prefix", inline[:3])
		}
		want, err := DecodeOOB(c.data, c.oob)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(inline[3:])
		if err != nil {
			t.Fatal(err)
		}
		if !valuetest.Equal(got, want) {
			t.Fatalf("got %#v, want %#v", got, want)
		}
	}
	if !bytes.Contains(mustInline(t, withTuple, oob2), []byte{typeSmallTuple, 2}) {
		t.Errorf("the tuple was not written as a tuple")
	}
	if _, err := AppendInline(nil, withTuple, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("missing buffer: got %v, want ErrMalformed", err)
	}
}

func mustInline(t *testing.T, data []byte, oob [][]byte) []byte {
	t.Helper()
	b, err := AppendInline(nil, data, oob)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzUnmarshalOOB feeds arbitrary bytes and buffers to the out-of-band
// decoders: no panic; errors are *pymarshal.Error; every []byte decoded
// into any is a copy or one of the buffers, within it.
func FuzzUnmarshalOOB(f *testing.F) {
	seed, _, err := AppendMarshalOOB(nil, map[string]any{"a": make([]byte, 8), "b": []any{make([]byte, 9)},
		"arr": Array{DType: "<u2", Shape: []int{4}, Data: make([]byte, 8)}}, 8, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, uint8(3), uint8(8))
	f.Add([]byte(")\x03z\x09\x00snakepitz\x03bufi\x05\x00\x00\x00"), uint8(2), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, nbufs, size uint8) {
		bufs := make([][]byte, nbufs%8)
		for i := range bufs {
			bufs[i] = make([]byte, int(size)+i)
		}
		check := func(err error) {
			t.Helper()
			var pe *Error
			if err != nil && !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *pymarshal.Error", err)
			}
		}
		v, err := DecodeOOB(data, bufs)
		check(err)
		var c oobCall
		check(UnmarshalOOB(data, &c, bufs))
		_, err = AppendInline(nil, data, bufs)
		check(err)
		if err == nil {
			walkBytes(v, func(b []byte) {
				p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
				for _, buf := range bufs {
					start := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
					if len(buf) > 0 && p >= start && p < start+uintptr(len(buf)) && (p != start || len(b) > len(buf)) {
						t.Fatalf("a decoded []byte overlaps a buffer without being it")
					}
				}
			})
		}
	})
}

func walkBytes(v any, fn func([]byte)) {
	switch x := v.(type) {
	case []byte:
		fn(x)
	case Array:
		fn(x.Data)
	case []any:
		for _, e := range x {
			walkBytes(e, fn)
		}
	case map[string]any:
		for _, e := range x {
			walkBytes(e, fn)
		}
	}
}
