package pymarshal

import (
	"encoding/hex"
	"testing"
)

var benchReq = map[string]any{"id": 42, "name": "snake", "score": 1.5, "tags": []any{"a", "b"}}

func BenchmarkMarshalDict(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		if _, err := Marshal(Tuple{benchReq}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeDict(b *testing.B) {
	data, _ := Marshal(benchReq)
	b.ReportAllocs()
	for range b.N {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

// benchResult is benchReq as a Go struct.
type benchResult struct {
	ID    int      `json:"id"`
	Name  string   `json:"name"`
	Score float64  `json:"score"`
	Tags  []string `json:"tags"`
}

// BenchmarkEncodeArgs encodes a call's keyword arguments (a map holding a
// record) into a reused buffer, as the pool does.
func BenchmarkEncodeArgs(b *testing.B) {
	args := map[string]any{"d": benchReq}
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		var err error
		if buf, err = AppendMarshal(buf[:0], args); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshalStruct decodes a record into a struct: the reply of
// a handler returning its argument, as CPython 3.14 writes it.
func BenchmarkUnmarshalStruct(b *testing.B) {
	data, _ := hex.DecodeString("fb7a026964e92a0000007a046e616d657a05736e616b657a0573636f726567000000000000f83f7a04746167735b02000000da0161da016230")
	b.ReportAllocs()
	var res benchResult
	for b.Loop() {
		if err := Unmarshal(data, &res); err != nil {
			b.Fatal(err)
		}
	}
}
