package pymarshal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// listOf encodes a list of n copies of the one-byte value code.
func listOf(n int, code byte) []byte {
	b := make([]byte, 5, 5+n)
	b[0] = typeList
	binary.LittleEndian.PutUint32(b[1:], uint32(n))
	return append(b, bytes.Repeat([]byte{code}, n)...)
}

// TestDecodeBudget: input whose decoded value would cost far more than the
// input (16 bytes per one-byte None, more with FLAG_REF on each) is refused
// with ErrTooLarge before the large allocation happens.
func TestDecodeBudget(t *testing.T) {
	cases := []struct {
		name string
		data []byte
	}{
		{"10M Nones", listOf(10<<20, typeNone)},
		{"4M Nones with FLAG_REF", listOf(4<<20, typeNone|flagRef)},
		{"4M empty tuples", func() []byte {
			b := listOf(4<<20, typeSmallTuple)
			return append(b[:5:5], bytes.Repeat([]byte{typeSmallTuple, 0}, 4<<20)...)
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			v, err := Decode(tc.data)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("got value of %T, error %v; want ErrTooLarge", v, err)
			}
			var pe *Error
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), "exceeds the allocation budget") {
				t.Fatalf("error %q: want a *Error saying it exceeds the budget", err)
			}
			// TotalAlloc also counts the garbage left by the growth of the
			// back-reference table, hence twice the budget.
			if got, limit := int64(after.TotalAlloc-before.TotalAlloc), 2*DecodeBudget(len(tc.data)); got > limit {
				t.Fatalf("allocated %d bytes before refusing, want at most %d", got, limit)
			}
		})
	}
}

// TestDecodeBudgetAllowsOrdinaryData: values of ordinary shapes decode
// whole, and DecodeLimit applies the bound it is given.
func TestDecodeBudgetAllowsOrdinaryData(t *testing.T) {
	bools := listOf(2<<20, typeTrue)
	v, err := Decode(bools)
	if err != nil || len(v.([]any)) != 2<<20 {
		t.Fatalf("2M bools: got error %v; want them decoded", err)
	}
	records := make([]any, 200_000)
	for i := range records {
		records[i] = map[string]any{"id": int64(i), "score": float64(i) / 3, "name": "row", "ok": i%2 == 0}
	}
	data, err := Marshal(records)
	if err != nil {
		t.Fatal(err)
	}
	if v, err = Decode(data); err != nil || len(v.([]any)) != len(records) {
		t.Fatalf("200k records: got error %v; want them decoded", err)
	}
	if _, err := DecodeLimit(data, int64(len(data))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("DecodeLimit(records, len(data)): got %v, want ErrTooLarge", err)
	}
	if _, err := DecodeLimit(bools, 1<<30); err != nil {
		t.Fatalf("DecodeLimit(bools, 1 GiB): got %v, want success", err)
	}
}
