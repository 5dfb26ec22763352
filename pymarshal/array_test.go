package pymarshal

import (
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"testing"
)

func TestNewArrayDTypes(t *testing.T) {
	check := func(a Array, err error, dtype string, size int) {
		t.Helper()
		noErr(t, err)
		if a.DType != dtype || len(a.Data) != 2*size || !reflect.DeepEqual(a.Shape, []int{2}) {
			t.Errorf("got %s %v with %d bytes, want %s (2,) with %d", a.DType, a.Shape, len(a.Data), dtype, 2*size)
		}
	}
	a, err := NewArray([]float64{1, 2})
	check(a, err, "<f8", 8)
	a, err = NewArray([]float32{1, 2})
	check(a, err, "<f4", 4)
	a, err = NewArray([]int8{1, 2})
	check(a, err, "|i1", 1)
	a, err = NewArray([]int16{1, 2})
	check(a, err, "<i2", 2)
	a, err = NewArray([]int32{1, 2})
	check(a, err, "<i4", 4)
	a, err = NewArray([]int64{1, 2})
	check(a, err, "<i8", 8)
	a, err = NewArray([]uint8{1, 2})
	check(a, err, "|u1", 1)
	a, err = NewArray([]uint16{1, 2})
	check(a, err, "<u2", 2)
	a, err = NewArray([]uint32{1, 2})
	check(a, err, "<u4", 4)
	a, err = NewArray([]uint64{1, 2})
	check(a, err, "<u8", 8)
	a, err = NewArray([]bool{true, false})
	check(a, err, "|b1", 1)
}

func TestNewArrayIsAView(t *testing.T) {
	data := []float64{1, 2, 3, 4, 5, 6}
	a, err := NewArray(data, 2, 3)
	noErr(t, err)
	data[5] = 42
	if got := math.Float64frombits(binary.LittleEndian.Uint64(a.Data[40:])); got != 42 {
		t.Fatalf("got %v, want 42: NewArray must not copy", got)
	}
	back, err := ArrayData[float64](a)
	noErr(t, err)
	if &back[0] != &data[0] {
		t.Fatalf("ArrayData of an aligned array copied it")
	}
}

func TestNewArrayShapeMismatch(t *testing.T) {
	for _, shape := range [][]int{{4}, {2, 2}, {-1, -3}, {math.MaxInt32, math.MaxInt32, 4}} {
		_, err := NewArray([]float64{1, 2, 3}, shape...)
		if !errors.Is(err, ErrTypeMismatch) {
			t.Errorf("shape %v for 3 elements: got %v, want ErrTypeMismatch", shape, err)
		}
	}
	_, err := NewArray([]float64{}, 0, 5)
	noErr(t, err)
}

func TestArrayRoundTrip(t *testing.T) {
	m := []float32{1, 2, 3, 4, 5, 6}
	a, err := NewArray(m, 3, 2)
	noErr(t, err)
	data, err := Marshal(map[string]any{"m": a})
	noErr(t, err)
	v, err := Decode(data)
	noErr(t, err)
	got := v.(map[string]any)["m"].(Array)
	if got.DType != "<f4" || !reflect.DeepEqual(got.Shape, []int{3, 2}) {
		t.Fatalf("got %s %v, want <f4 (3, 2)", got.DType, got.Shape)
	}
	back, err := ArrayData[float32](got)
	noErr(t, err)
	if !reflect.DeepEqual(back, m) {
		t.Fatalf("got %v, want %v", back, m)
	}
	if _, err := ArrayData[float64](got); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("<f4 as []float64: got %v, want ErrTypeMismatch", err)
	}
	// Through a struct field and a pointer too.
	type rec struct {
		M *Array
		N Array
	}
	data, err = Marshal(rec{M: &a, N: a})
	noErr(t, err)
	var r rec
	noErr(t, Unmarshal(data, &r))
	if !reflect.DeepEqual(*r.M, got) || !reflect.DeepEqual(r.N, got) {
		t.Fatalf("got %+v, want both fields %+v", r, got)
	}
}

// TestArrayPythonBytes decodes the marker as Python writes it (FLAG_REF on
// the tuple and its strs, marshal.dumps(v, 4) of
// ("\x00snakepit", "array", "<i2", (2,), b"\x01\x00\xff\xff")).
func TestArrayPythonBytes(t *testing.T) {
	data := []byte("\xa9\x05\xfa\x09\x00snakepit\xda\x05array\xda\x03<i2\xa9\x01\xe9\x02\x00\x00\x00\xf3\x04\x00\x00\x00\x01\x00\xff\xff")
	var v []int16
	noErr(t, Unmarshal(data, &v))
	if !reflect.DeepEqual(v, []int16{1, -1}) {
		t.Fatalf("got %v, want [1 -1]", v)
	}
}

func TestUnmarshalArrayInto(t *testing.T) {
	a, err := NewArray([]float64{1, 2, 3, 4, 5, 6}, 2, 3)
	noErr(t, err)
	data, err := Marshal(a)
	noErr(t, err)

	var m [][]float64
	noErr(t, Unmarshal(data, &m))
	if !reflect.DeepEqual(m, [][]float64{{1, 2, 3}, {4, 5, 6}}) {
		t.Fatalf("[][]float64: got %v", m)
	}
	if cap(m[0]) != 3 {
		t.Fatalf("row capacity: got %d, want 3 (an append must not overwrite the next row)", cap(m[0]))
	}
	m[0] = append(m[0], 99)
	if m[1][0] != 4 {
		t.Fatalf("appending to row 0 changed row 1: got %v", m[1])
	}
	var m32 [][]float32
	noErr(t, Unmarshal(data, &m32))
	if !reflect.DeepEqual(m32, [][]float32{{1, 2, 3}, {4, 5, 6}}) {
		t.Fatalf("[][]float32: got %v", m32)
	}
	var fixed [2][3]float64
	noErr(t, Unmarshal(data, &fixed))
	if fixed != [2][3]float64{{1, 2, 3}, {4, 5, 6}} {
		t.Fatalf("[2][3]float64: got %v", fixed)
	}
	var anyRows [][]any
	noErr(t, Unmarshal(data, &anyRows))
	if !reflect.DeepEqual(anyRows, [][]any{{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}}) {
		t.Fatalf("[][]any: got %v", anyRows)
	}
	var arr Array
	noErr(t, Unmarshal(data, &arr))
	if !reflect.DeepEqual(arr.Shape, []int{2, 3}) {
		t.Fatalf("Array: got shape %v, want [2 3]", arr.Shape)
	}

	// A shape that does not nest like the destination is refused.
	var flat []float64
	if err := Unmarshal(data, &flat); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("2-D into []float64: got %v, want ErrTypeMismatch", err)
	}
	var deep [][][]float64
	if err := Unmarshal(data, &deep); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("2-D into [][][]float64: got %v, want ErrTypeMismatch", err)
	}
	var wrongLen [3][3]float64
	if err := Unmarshal(data, &wrongLen); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("(2, 3) into [3][3]float64: got %v, want ErrTypeMismatch", err)
	}
	var strs [][]string
	if err := Unmarshal(data, &strs); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("into [][]string: got %v, want ErrTypeMismatch", err)
	}
	var ints [][]int
	if err := Unmarshal(data, &ints); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("floats into [][]int: got %v, want ErrTypeMismatch", err)
	}
}

func TestUnmarshalArrayIntRanges(t *testing.T) {
	a, err := NewArray([]int16{-1, 300})
	noErr(t, err)
	data, _ := Marshal(a)
	var i8 []int8
	if err := Unmarshal(data, &i8); !errors.Is(err, ErrIntRange) {
		t.Fatalf("300 into int8: got %v, want ErrIntRange", err)
	}
	var u []uint
	if err := Unmarshal(data, &u); !errors.Is(err, ErrIntRange) {
		t.Fatalf("-1 into uint: got %v, want ErrIntRange", err)
	}
	var wide []int64
	noErr(t, Unmarshal(data, &wide))
	if !reflect.DeepEqual(wide, []int64{-1, 300}) {
		t.Fatalf("got %v, want [-1 300]", wide)
	}
	big, _ := NewArray([]uint64{math.MaxUint64})
	data, _ = Marshal(big)
	var anyv []any
	if err := Unmarshal(data, &anyv); !errors.Is(err, ErrIntRange) {
		t.Fatalf("MaxUint64 into any: got %v, want ErrIntRange", err)
	}
	var uv []uint64
	noErr(t, Unmarshal(data, &uv))
	if uv[0] != math.MaxUint64 {
		t.Fatalf("got %v, want MaxUint64", uv)
	}
}

func TestPlainSlicesStayLists(t *testing.T) {
	data, err := Marshal([]float64{1, 2})
	noErr(t, err)
	v, err := Decode(data)
	noErr(t, err)
	if !reflect.DeepEqual(v, []any{1.0, 2.0}) {
		t.Fatalf("got %#v, want a list", v)
	}
	// And lists still fill typed slices.
	var f []float64
	noErr(t, Unmarshal(data, &f))
}

// marker builds an array marker with arbitrary fields, as hostile input.
func marker(fields ...any) []byte {
	b, err := Marshal(Tuple(append([]any{MarkerTag}, fields...)))
	if err != nil {
		panic(err)
	}
	return b
}

func TestArrayHostileMarkers(t *testing.T) {
	cases := map[string][]byte{
		"data too short":      marker("array", "<f8", Tuple{2, 3}, make([]byte, 47)),
		"data too long":       marker("array", "<f8", Tuple{2, 3}, make([]byte, 49)),
		"negative dim":        marker("array", "<f8", Tuple{-2, -3}, make([]byte, 48)),
		"overflowing shape":   marker("array", "<f8", Tuple{1 << 30, 1 << 30, 1 << 30, 1 << 30}, []byte{}),
		"huge dim":            marker("array", "|u1", Tuple{int64(1) << 40}, []byte{}),
		"unknown dtype":       marker("array", "<c16", Tuple{1}, make([]byte, 16)),
		"big-endian dtype":    marker("array", ">f8", Tuple{1}, make([]byte, 8)),
		"dtype not str":       marker("array", 8, Tuple{1}, make([]byte, 8)),
		"shape not tuple":     marker("array", "<f8", 1, make([]byte, 8)),
		"shape item not int":  marker("array", "<f8", Tuple{"1"}, make([]byte, 8)),
		"data not bytes":      marker("array", "<f8", Tuple{1}, "12345678"),
		"data index":          marker("array", "<f8", Tuple{1}, 0),
		"too few fields":      marker("array", "<f8", Tuple{1}),
		"too many fields":     marker("array", "<f8", Tuple{1}, make([]byte, 8), nil),
		"bool not 0 or 1":     marker("array", "|b1", Tuple{2}, []byte{1, 2}),
		"too many dimensions": marker("array", "|u1", Tuple(make([]any, MaxArrayDims+1)), []byte{}),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(data)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
			var a Array
			if err := Unmarshal(data, &a); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Unmarshal: got %v, want ErrMalformed", err)
			}
		})
	}
	// Other marker kinds, and lists that start with the tag, stay as they are.
	v, err := Decode(marker("other", 1))
	noErr(t, err)
	if !reflect.DeepEqual(v, []any{MarkerTag, "other", int64(1)}) {
		t.Fatalf("got %#v", v)
	}
	b, _ := Marshal([]any{MarkerTag, "array"})
	v, err = Decode(b)
	noErr(t, err)
	if !reflect.DeepEqual(v, []any{MarkerTag, "array"}) {
		t.Fatalf("got %#v", v)
	}
}

func TestMarshalInvalidArray(t *testing.T) {
	for name, a := range map[string]Array{
		"short data":    {DType: "<f8", Shape: []int{2}, Data: make([]byte, 8)},
		"unknown dtype": {DType: "float64", Shape: []int{1}, Data: make([]byte, 8)},
		"negative dim":  {DType: "|u1", Shape: []int{-1}},
	} {
		if _, err := Marshal(a); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestArrayDataUnaligned(t *testing.T) {
	buf := make([]byte, 17)
	binary.LittleEndian.PutUint64(buf[1:], math.Float64bits(1.5))
	binary.LittleEndian.PutUint64(buf[9:], math.Float64bits(-2))
	got, err := ArrayData[float64](Array{DType: "<f8", Shape: []int{2}, Data: buf[1:]})
	noErr(t, err)
	if !reflect.DeepEqual(got, []float64{1.5, -2}) {
		t.Fatalf("got %v, want [1.5 -2]", got)
	}
}

func TestZeroDArrayAndEmpty(t *testing.T) {
	a := Array{DType: "<i4", Shape: []int{}, Data: []byte{7, 0, 0, 0}}
	data, err := Marshal(a)
	noErr(t, err)
	var n int
	noErr(t, Unmarshal(data, &n))
	if n != 7 {
		t.Fatalf("0-d array: got %d, want 7", n)
	}
	e, err := NewArray([]float64{}, 0, 3)
	noErr(t, err)
	data, err = Marshal(e)
	noErr(t, err)
	var m [][]float64
	noErr(t, Unmarshal(data, &m))
	if m == nil || len(m) != 0 {
		t.Fatalf("(0, 3): got %#v, want an empty slice", m)
	}
}

func TestHasMarkers(t *testing.T) {
	a, _ := NewArray([]uint8{1})
	with, _ := Marshal(map[string]any{"x": []any{a}})
	without, _ := Marshal(map[string]any{"x": []any{1.0}})
	if !HasMarkers(with) || HasMarkers(without) {
		t.Fatalf("got %v, %v, want true, false", HasMarkers(with), HasMarkers(without))
	}
}

func BenchmarkArrayUnmarshal10kx8(b *testing.B) {
	data := make([]float64, 10000*8)
	a, _ := NewArray(data, 10000, 8)
	enc, _ := Marshal(a)
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		var m [][]float64
		if err := Unmarshal(enc, &m); err != nil {
			b.Fatal(err)
		}
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeArray mutates array markers: decoding must never panic, an
// accepted array must be consistent and survive a round trip, and storing
// it into typed destinations must fail cleanly or succeed.
func FuzzDecodeArray(f *testing.F) {
	a, _ := NewArray([]float64{1, 2, 3, 4, 5, 6}, 2, 3)
	good, _ := Marshal(map[string]any{"a": a, "b": []any{a, a}})
	f.Add(good)
	b, _ := NewArray([]bool{true, false})
	enc, _ := Marshal(b)
	f.Add(enc)
	f.Add([]byte("\xa9\x05\xfa\x09\x00snakepit\xda\x05array\xda\x03<i2\xa9\x01\xe9\x02\x00\x00\x00\xf3\x04\x00\x00\x00\x01\x00\xff\xff"))
	f.Add(marker("array", "<f8", Tuple{-2, -3}, make([]byte, 48)))
	f.Add(marker("array", "|u1", Tuple{1 << 30, 1 << 30, 1 << 30, 1 << 30}, []byte{}))
	f.Add(marker("array", "<f8", Tuple{1}, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Decode(data)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *pymarshal.Error", err)
			}
			return
		}
		if arr, ok := v.(Array); ok {
			if _, _, err := arr.check("unmarshal", ErrMalformed); err != nil {
				t.Fatalf("decoded an inconsistent array: %v", err)
			}
		}
		re, err := Marshal(v)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := Decode(re)
		if err != nil {
			t.Fatalf("decode of re-encoded value: %v", err)
		}
		if !reflect.DeepEqual(fixNaN(v), fixNaN(back)) {
			t.Fatalf("round trip changed the value: got %#v, want %#v", back, v)
		}
		var m [][]float64
		_ = Unmarshal(data, &m)
		var s []int32
		_ = Unmarshal(data, &s)
		var x struct{ A Array }
		_ = Unmarshal(data, &x)
	})
}

// fixNaN replaces NaN floats so that reflect.DeepEqual compares them.
func fixNaN(v any) any {
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) {
			return "NaN"
		}
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = fixNaN(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = fixNaN(e)
		}
		return out
	}
	return v
}
