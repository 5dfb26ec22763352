package host

import (
	"reflect"
	"testing"

	"github.com/snakepit-go/snakepit/pymarshal"
)

type recList []recList

type recNode struct {
	Next *recNode
	N    int
}

type recBlob struct {
	Next *recBlob
	Data []byte
}

// TestMayHoldBytes: the result types New encodes with AppendMarshal
// (nothing can go out of band) are exactly those that cannot reach a
// []byte or an Array, recursive types included.
func TestMayHoldBytes(t *testing.T) {
	cases := []struct {
		t    reflect.Type
		want bool
	}{
		{reflect.TypeFor[int](), false},
		{reflect.TypeFor[string](), false},
		{reflect.TypeFor[[]string](), false},
		{reflect.TypeFor[map[string]int](), false},
		{reflect.TypeFor[[16]byte](), false},
		{reflect.TypeFor[struct{ A, B int }](), false},
		{reflect.TypeFor[recList](), false},
		{reflect.TypeFor[recNode](), false},
		{reflect.TypeFor[[]byte](), true},
		{reflect.TypeFor[any](), true},
		{reflect.TypeFor[map[string]any](), true},
		{reflect.TypeFor[pymarshal.Array](), true},
		{reflect.TypeFor[*pymarshal.Array](), true},
		{reflect.TypeFor[[][]byte](), true},
		{reflect.TypeFor[map[string][]byte](), true},
		{reflect.TypeFor[struct{ X struct{ B []byte } }](), true},
		{reflect.TypeFor[recBlob](), true},
	}
	for _, c := range cases {
		if got := mayHoldBytes(c.t, nil); got != c.want {
			t.Errorf("%v: got %v, want %v", c.t, got, c.want)
		}
	}
}
