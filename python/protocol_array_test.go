package python_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// TestEncodeCallWrapsMarkers: keyword arguments holding an array travel as
// (MarkerTag, "call", kwargs), the only ones the dispatcher looks into;
// others are sent as they are.
func TestEncodeCallWrapsMarkers(t *testing.T) {
	a, err := pymarshal.NewArray([]int32{1, 2})
	require.NoError(t, err)
	for _, tc := range []struct {
		args    map[string]any
		wrapped bool
	}{
		{map[string]any{"x": 1}, false},
		{map[string]any{"x": []any{"y", a}}, true},
	} {
		args, err := pymarshal.Marshal(tc.args)
		require.NoError(t, err)
		enc, err := python.EncodeCall(nil, &worker.Request{Command: "c", Args: args}, time.Time{})
		require.NoError(t, err)
		v, err := pymarshal.Decode(enc)
		require.NoError(t, err)
		kw := v.([]any)[1]
		if tc.wrapped {
			require.IsType(t, []any{}, kw, "kwargs: want (MarkerTag, \"call\", kwargs)")
			w := kw.([]any)
			require.Len(t, w, 3, "kwargs: want (MarkerTag, \"call\", kwargs)")
			require.Equal(t, []any{pymarshal.MarkerTag, "call"}, w[:2], "kwargs %#v: want (MarkerTag, \"call\", kwargs)", kw)
			kw = w[2]
		}
		want, _ := pymarshal.Decode(args)
		require.Equal(t, want, kw, "kwargs")
	}
}
