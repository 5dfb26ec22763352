package pymarshal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
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

// records encodes n one-key dicts {"x": float(i)} as CPython's marshal
// writes them: the interned key once, then back-references to it.
func records(n int) []byte {
	b := make([]byte, 5, 5+16*n)
	b[0] = typeList
	binary.LittleEndian.PutUint32(b[1:], uint32(n))
	for i := range n {
		b = append(b, typeDict)
		if i == 0 {
			b = append(b, typeShortASCIIIntern|flagRef, 1, 'x')
		} else {
			b = append(b, typeRef, 0, 0, 0, 0)
		}
		b = append(b, typeBinaryFloat)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(float64(i)))
		b = append(b, typeNull)
	}
	return b
}

// TestDecodeBudget: input whose decoded value would cost far more per
// byte than ordinary data (back-reference tables for one-byte values,
// empty containers) is refused with ErrTooLarge before the large
// allocation happens, and so is any input over the bound DecodeLimit gets.
func TestDecodeBudget(t *testing.T) {
	cases := []struct {
		name  string
		data  []byte
		limit int64 // 0: Decode's own
	}{
		{"4M Nones with FLAG_REF", listOf(4<<20, typeNone|flagRef), 0},
		{"4M empty dicts", func() []byte {
			b := listOf(4<<20, typeDict)
			return append(b[:5:5], bytes.Repeat([]byte{typeDict, typeNull}, 4<<20)...)
		}(), 0},
		{"10M Nones, limit 8 per byte", listOf(10<<20, typeNone), 8 * (10 << 20)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			limit := tc.limit
			if limit == 0 {
				limit = DecodeBudget(len(tc.data))
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			v, err := DecodeLimit(tc.data, limit)
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
			if got := int64(after.TotalAlloc - before.TotalAlloc); got > 2*limit {
				t.Fatalf("allocated %d bytes before refusing, want at most %d", got, 2*limit)
			}
		})
	}
}

// TestUnmarshalBudget: storing into typed values copies what
// back-references share; the copies are bounded by the input's size too.
func TestUnmarshalBudget(t *testing.T) {
	// [L]*n with L a list of n ints: about 5n bytes, n*n ints once copied.
	n := 6000
	b := make([]byte, 0, 5*n+16)
	b = append(b, typeList)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = append(b, typeList|flagRef)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	for range n {
		b = append(b, typeInt, 1, 0, 0, 0)
	}
	for range n - 1 {
		b = append(b, typeRef, 0, 0, 0, 0)
	}
	var out [][]int64
	if err := Unmarshal(b, &out); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Unmarshal of a list shared %d times into [][]int64: got %v, want ErrTooLarge", n, err)
	}
	var small [][]int64
	if err := Unmarshal(b[:0:0], &small); err == nil {
		t.Fatal("empty input: want an error")
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
	nones := listOf(10<<20, typeNone)
	if v, err = Decode(nones); err != nil || len(v.([]any)) != 10<<20 {
		t.Fatalf("10M Nones: got error %v; want them decoded", err)
	}
	recs := records(300_000)
	if v, err = Decode(recs); err != nil || len(v.([]any)) != 300_000 {
		t.Fatalf("300k records as CPython writes them (%d bytes): got error %v; want them decoded", len(recs), err)
	}
	var typed []struct{ X float64 }
	if err := Unmarshal(recs, &typed); err != nil || len(typed) != 300_000 || typed[7].X != 7 {
		t.Fatalf("300k records into structs: got %d, error %v; want them stored", len(typed), err)
	}
	if _, err := DecodeLimit(recs, int64(len(recs))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("DecodeLimit(records, len(data)): got %v, want ErrTooLarge", err)
	}
	if _, err := DecodeLimit(bools, 1<<30); err != nil {
		t.Fatalf("DecodeLimit(bools, 1 GiB): got %v, want success", err)
	}
}
