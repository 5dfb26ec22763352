package pymarshal

import (
	"encoding/hex"
	"errors"
	"math"
	"testing"

	"github.com/snakepit-go/snakepit/internal/valuetest"
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
		if !valuetest.Equal(v, back) {
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
		if !valuetest.Equal(got, v) {
			t.Fatalf("got %#v, want %#v", got, v)
		}
	})
}
