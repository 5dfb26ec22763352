package pymarshal_test

import (
	"fmt"
	"testing"

	"github.com/snakepit-go/snakepit/pymarshal"
)

// TestRawValueAndArrayAnywhere: a RawValue is copied verbatim and an Array
// (or a pointer to one) written as an array wherever it sits: a struct
// field, a map value, a slice element — not as bytes or as a struct.
func TestRawValueAndArrayAnywhere(t *testing.T) {
	raw, err := pymarshal.Marshal([]any{1, "x"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := pymarshal.NewArray([]float64{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	type S struct {
		R pymarshal.RawValue `json:"r"`
		A pymarshal.Array    `json:"a"`
		P *pymarshal.Array   `json:"p"`
	}
	const arr = "{<f8 [2] [0 0 0 0 0 0 240 63 0 0 0 0 0 0 0 64]}"
	for _, tc := range []struct {
		v    any
		want string
	}{
		{S{R: raw, A: a, P: &a}, "map[a:" + arr + " p:" + arr + " r:[1 x]]"},
		{map[string]pymarshal.RawValue{"r": raw}, "map[r:[1 x]]"},
		{[]pymarshal.RawValue{raw}, "[[1 x]]"},
		{map[string]*pymarshal.Array{"p": &a}, "map[p:" + arr + "]"},
		{[]*pymarshal.Array{&a}, "[" + arr + "]"},
	} {
		b, err := pymarshal.Marshal(tc.v)
		if err != nil {
			t.Fatalf("%T: %v", tc.v, err)
		}
		d, err := pymarshal.Decode(b)
		if err != nil {
			t.Fatalf("%T: %v", tc.v, err)
		}
		if got := fmt.Sprint(d); got != tc.want {
			t.Errorf("%T: got %s, want %s", tc.v, got, tc.want)
		}
	}
	// A RawValue anywhere makes the encoding unchecked.
	_, _, checked, err := pymarshal.AppendMarshalOOBChecked(nil, map[string]any{"s": S{R: raw, A: a}}, 1<<20, nil)
	if err != nil || checked {
		t.Fatalf("a RawValue in a struct field: checked=%v, %v; want unchecked", checked, err)
	}
}
