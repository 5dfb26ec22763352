package pymarshal

import "testing"

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
