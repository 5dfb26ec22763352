package pymarshal

import (
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic, and
// whatever it accepts must re-encode to bytes that decode to an equal value.
func FuzzDecode(f *testing.F) {
	for _, tc := range pyGolden {
		data, _ := hex.DecodeString(tc.hex)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Decode(data)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *pymarshal.Error", err)
			}
			return
		}
		enc, err := Marshal(v)
		if err != nil {
			t.Fatalf("re-encode of a decoded value failed: %v", err)
		}
		back, err := Decode(enc)
		if err != nil {
			t.Fatalf("decode of re-encoded value failed: %v", err)
		}
		if !equalNaN(v, back) {
			t.Fatalf("round trip changed the value: got %#v, want %#v", back, v)
		}
	})
}

// FuzzEncode builds Go values from fuzz input and checks that encoding and
// decoding returns them unchanged.
func FuzzEncode(f *testing.F) {
	f.Add("key", int64(-1)<<40, 2.5, []byte("raw"), true)
	f.Add("\xff", int64(math.MinInt64), math.NaN(), []byte{}, false)
	f.Fuzz(func(t *testing.T, s string, n int64, fl float64, b []byte, flag bool) {
		v := map[string]any{
			"s": s, "n": n, "f": fl, "b": b, "flag": flag,
			"list": []any{s, n, nil, []any{fl}},
		}
		data, err := Marshal(v)
		if err != nil {
			if errors.Is(err, ErrInvalidUTF8) {
				return
			}
			t.Fatalf("Marshal: %v", err)
		}
		got, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		if b == nil {
			v["b"] = []byte{}
		}
		if !equalNaN(got, v) {
			t.Fatalf("got %#v, want %#v", got, v)
		}
	})
}

// equalNaN is reflect.DeepEqual treating NaN as equal to NaN.
func equalNaN(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalNaN(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !equalNaN(v, w) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}
