package python_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// TestEncodeCallWrapsMarkers: keyword arguments holding an array travel as
// (MarkerTag, "call", kwargs), the only ones the dispatcher looks into;
// others are sent as they are.
func TestEncodeCallWrapsMarkers(t *testing.T) {
	a, err := pymarshal.NewArray([]int32{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    map[string]any
		wrapped bool
	}{
		{map[string]any{"x": 1}, false},
		{map[string]any{"x": []any{"y", a}}, true},
	} {
		args, err := pymarshal.Marshal(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := python.EncodeCall(nil, &worker.Request{Command: "c", Args: args}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		v, err := pymarshal.Decode(enc)
		if err != nil {
			t.Fatal(err)
		}
		kw := v.([]any)[1]
		if tc.wrapped {
			w, ok := kw.([]any)
			if !ok || len(w) != 3 || w[0] != pymarshal.MarkerTag || w[1] != "call" {
				t.Fatalf("got kwargs %#v, want (MarkerTag, \"call\", kwargs)", kw)
			}
			kw = w[2]
		}
		want, _ := pymarshal.Decode(args)
		if !reflect.DeepEqual(kw, want) {
			t.Fatalf("got kwargs %#v, want %#v", kw, want)
		}
	}
}
