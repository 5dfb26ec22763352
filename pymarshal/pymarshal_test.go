package pymarshal

import (
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// pyGolden holds marshal.dumps(value, 4) as written by CPython 3.11 and 3.14
// (identical for these values), with the Go value Decode must return.
var pyGolden = []struct {
	name string
	hex  string
	want any
}{
	{"None", "4e", nil},
	{"True", "54", true},
	{"False", "46", false},
	{"0", "e900000000", int64(0)},
	{"-5", "e9fbffffff", int64(-5)},
	{"2**31-1", "e9ffffff7f", int64(math.MaxInt32)},
	{"2**40", "ec03000000000000000004", int64(1 << 40)},
	{"-2**63", "ecfbffffff00000000000000000800", int64(math.MinInt64)},
	{"2**63-1", "ec05000000ff7fff7fff7fff7f0700", int64(math.MaxInt64)},
	{"1.5", "e7000000000000f83f", 1.5},
	{"héllo", "f50600000068c3a96c6c6f", "héllo"},
	{"abc", "da03616263", "abc"},
	{"bytes", "f30200000000ff", []byte{0, 0xff}},
	{"list", "db03000000e901000000da01614e", []any{int64(1), "a", nil}},
	{"tuple", "a902e901000000e902000000", []any{int64(1), int64(2)}},
	{"dict", "fbda0161e901000000da01625b0200000054e7000000000000044030", map[string]any{"a": int64(1), "b": []any{true, 2.5}}},
	{"shared ref", "db02000000c12c010000" + strings.Repeat("78", 300) + "7201000000", []any{strings.Repeat("x", 300), strings.Repeat("x", 300)}},
	{"nested", "fbda016b7b72010000005b02000000e9010000005b02000000e9020000005b01000000e9030000003030",
		map[string]any{"k": map[string]any{"k": []any{int64(1), []any{int64(2), []any{int64(3)}}}}}},
}

func TestDecodeGolden(t *testing.T) {
	for _, tc := range pyGolden {
		t.Run(tc.name, func(t *testing.T) {
			data, _ := hex.DecodeString(tc.hex)
			got, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
			// Go's encoding of the decoded value must decode to the same value.
			enc, err := Marshal(got)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			back, err := Decode(enc)
			if err != nil || !reflect.DeepEqual(back, tc.want) {
				t.Fatalf("re-decode: got %#v, %v; want %#v", back, err, tc.want)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name, hex string
		want      error
	}{
		{"2**64", "ec0500000000000000000000001000", ErrIntRange},
		{"set", "3c01000000e901000000", ErrUnsupported},
		{"int key", "7be901000000e90200000030", ErrUnsupported},
		{"lone surrogate", "f503000000eda080", ErrInvalidUTF8},
		{"empty", "", ErrTruncated},
		{"truncated int", "e90000", ErrTruncated},
		{"truncated str", "f50600000068", ErrTruncated},
		{"huge length", "f3ffffff7f", ErrTruncated},
		{"negative length", "f3ffffffff", ErrMalformed},
		{"unterminated dict", "7bda0161e901000000", ErrTruncated},
		{"trailing", "4e4e", ErrMalformed},
		{"unknown code", "01", ErrMalformed},
		{"bad ref", "7201000000", ErrMalformed},
		{"recursive list", "db01000000" + "7200000000", ErrUnsupported},
		{"code", "63", ErrUnsupported},
		{"long digit out of range", "ec01000000ffff", ErrMalformed},
		{"unnormalised long", "ec020000000100" + "0000", ErrMalformed},
		{"huge long", "ec06000000" + strings.Repeat("0100", 6), ErrIntRange},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, _ := hex.DecodeString(tc.hex)
			_, err := Decode(data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDepthLimit(t *testing.T) {
	deep := strings.Repeat("[\x01\x00\x00\x00", MaxDepth+1) + "N"
	if _, err := Decode([]byte(deep)); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("decode: got %v, want ErrTooDeep", err)
	}
	ok := strings.Repeat("[\x01\x00\x00\x00", MaxDepth) + "N"
	if _, err := Decode([]byte(ok)); err != nil {
		t.Fatalf("decode at the limit: %v", err)
	}
	var v any = nil
	for i := 0; i <= MaxDepth; i++ {
		v = []any{v}
	}
	if _, err := Marshal(v); !errors.Is(err, ErrTooDeep) {
		t.Fatalf("marshal: got %v, want ErrTooDeep", err)
	}
}

func TestMarshalErrors(t *testing.T) {
	cases := []struct {
		name     string
		v        any
		want     error
		wantPath string
	}{
		{"chan", make(chan int), ErrUnsupported, ""},
		{"func in list", []any{1, func() {}}, ErrUnsupported, "[1]"},
		{"int map key", map[int]string{1: "a"}, ErrUnsupported, ""},
		{"uint64 max", uint64(math.MaxUint64), ErrIntRange, ""},
		{"invalid utf8 value", map[string]any{"k": "\xff"}, ErrInvalidUTF8, `["k"]`},
		{"invalid utf8 key", map[string]string{"\xff": ""}, ErrInvalidUTF8, `["\xff"]`},
		{"complex", complex(1, 2), ErrUnsupported, ""},
		{"struct field", struct{ C chan int }{}, ErrUnsupported, ".C"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Marshal(tc.v)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Path != tc.wantPath {
				t.Fatalf("got path %q (%v), want %q", pe.Path, err, tc.wantPath)
			}
		})
	}
}

type inner struct {
	Z int `json:"z"`
}

type Embedded struct {
	E string `json:"e"`
}

type record struct {
	Embedded
	Name    string            `json:"name"`
	Age     uint8             `json:"age"`
	Score   float32           `json:"score,omitempty"`
	Skip    string            `json:"-"`
	Tags    []string          `json:"tags"`
	Meta    map[string]int    `json:"meta"`
	Inner   *inner            `json:"inner"`
	Raw     []byte            `json:"raw"`
	Any     any               `json:"any"`
	Plain   bool              // no tag: key "Plain"
	private int               //nolint:unused // unexported fields are ignored
	Nested  map[string][]bool `json:"nested,omitempty"`
}

func TestStructRoundTrip(t *testing.T) {
	in := record{
		Embedded: Embedded{E: "emb"},
		Name:     "n", Age: 200, Skip: "not sent", Tags: []string{"a", "b"},
		Meta: map[string]int{"x": 1}, Inner: &inner{Z: -3}, Raw: []byte{1, 2},
		Any: []any{int64(1), "x"}, Plain: true, private: 7,
	}
	data, err := Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var asMap map[string]any
	if err := Unmarshal(data, &asMap); err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"any", "e", "inner", "meta", "name", "age", "raw", "tags", "Plain"}
	for _, k := range wantKeys {
		if _, ok := asMap[k]; !ok {
			t.Errorf("key %q missing from %v", k, asMap)
		}
	}
	for _, k := range []string{"score", "Skip", "private", "nested", "Embedded"} {
		if _, ok := asMap[k]; ok {
			t.Errorf("key %q present, want absent", k)
		}
	}
	var out record
	if err := Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	in.Skip, in.private = "", 0
	if !reflect.DeepEqual(out, in) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
}

func TestUnmarshalChecks(t *testing.T) {
	big, _ := Marshal(int64(300))
	var u8 uint8
	if err := Unmarshal(big, &u8); !errors.Is(err, ErrIntRange) {
		t.Fatalf("uint8 <- 300: got %v, want ErrIntRange", err)
	}
	neg, _ := Marshal(-1)
	var u uint
	if err := Unmarshal(neg, &u); !errors.Is(err, ErrIntRange) {
		t.Fatalf("uint <- -1: got %v, want ErrIntRange", err)
	}
	s, _ := Marshal("x")
	var n int
	if err := Unmarshal(s, &n); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("int <- str: got %v, want ErrTypeMismatch", err)
	}
	if err := Unmarshal(s, n); !errors.Is(err, ErrTypeMismatch) {
		t.Fatalf("non-pointer: got %v, want ErrTypeMismatch", err)
	}
	lst, _ := Marshal([]any{1, "x"})
	var ints []int
	err := Unmarshal(lst, &ints)
	var pe *Error
	if !errors.As(err, &pe) || pe.Path != "[1]" {
		t.Fatalf("[]int <- [1, 'x']: got %v, want a mismatch at [1]", err)
	}
	none, _ := Marshal(nil)
	p := &n
	if err := Unmarshal(none, &p); err != nil || p != nil {
		t.Fatalf("None into pointer: got %v, %v; want nil pointer", p, err)
	}
}

func TestFloatsAndInts(t *testing.T) {
	for _, f := range []float64{0, -0.0, math.Inf(1), math.Inf(-1), math.SmallestNonzeroFloat64, math.MaxFloat64} {
		data, _ := Marshal(f)
		got, err := Decode(data)
		if err != nil || math.Float64bits(got.(float64)) != math.Float64bits(f) {
			t.Fatalf("float %v: got %v, %v", f, got, err)
		}
	}
	data, _ := Marshal(math.NaN())
	got, _ := Decode(data)
	if !math.IsNaN(got.(float64)) {
		t.Fatalf("NaN: got %v", got)
	}
	for _, n := range []int64{0, 1, -1, math.MaxInt32, math.MinInt32, math.MaxInt32 + 1, math.MinInt32 - 1, 1 << 45, -(1 << 45), math.MaxInt64, math.MinInt64} {
		data, _ := Marshal(n)
		got, err := Decode(data)
		if err != nil || got != n {
			t.Fatalf("int %d: got %v, %v", n, got, err)
		}
	}
}

func TestTupleEncoding(t *testing.T) {
	data, err := Marshal(Tuple{int64(1), int64(2)})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString("2902" + "6901000000" + "6902000000")
	if !reflect.DeepEqual(data, want) {
		t.Fatalf("got %x, want %x", data, want)
	}
}

// TestMapKeysSorted: map keys are written in Go's string order (bytewise),
// whatever their first bytes.
func TestMapKeysSorted(t *testing.T) {
	keys := []string{"", "a", "ab", "b", "B", "é", "\x00", "\xff", "aa", "a\x00", "zz", "z"}
	for _, a := range keys {
		for _, b := range keys {
			if got, want := keyLess(a, b), a < b; got != want {
				t.Fatalf("keyLess(%q, %q): got %v, want %v", a, b, got, want)
			}
		}
	}
	m := map[string]any{"b": 1, "a": 2, "c": 3, "ab": 4, "B": 5}
	got := mustMarshal(t, m)
	want := "{z\x01Bi\x05\x00\x00\x00z\x01ai\x02\x00\x00\x00z\x02abi\x04\x00\x00\x00z\x01bi\x01\x00\x00\x00z\x01ci\x03\x00\x00\x000"
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
