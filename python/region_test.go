package python_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// TestEncodeCallInRegion: the buffers lie from offset 0, each at a
// multiple of RegionAlign with that much room before it, the call tuple
// after them names them by
// (offset, length), and memory smaller than RegionCallSize is refused
// before anything is written.
func TestEncodeCallInRegion(t *testing.T) {
	a, err := pymarshal.NewArray([]float64{1, 2, 3})
	require.NoError(t, err)
	bufs := [][]byte{bytes.Repeat([]byte("a"), 100), {}, bytes.Repeat([]byte("b"), 64), []byte("c")}
	args, err := pymarshal.Marshal(map[string]any{"x": a})
	require.NoError(t, err)
	for _, req := range []*worker.Request{
		{Command: "c", Args: args, CorrelationID: "id", SessionID: "s", Buffers: bufs, Attachments: [][]byte{[]byte("att")}},
		{Command: "none"},
	} {
		mem := make([]byte, python.RegionCallSize(req))
		start, end, err := python.EncodeCallInRegion(mem, req, time.Time{})
		require.NoError(t, err)
		if start%python.RegionAlign != 0 || end > len(mem) || start > end {
			t.Fatalf("tuple at [%d, %d) of %d bytes", start, end, len(mem))
		}
		v, err := pymarshal.Decode(mem[start:end])
		require.NoError(t, err)
		call := v.([]any)
		if len(req.Buffers) == 0 {
			require.Len(t, call, 6, "call without buffers")
			continue
		}
		require.Len(t, call, 7, "call tuple")
		require.Equal(t, []any{req.Command, req.CorrelationID, req.SessionID}, []any{call[0], call[2], call[3]}, "call tuple %v: command, correlation id, session id", call)
		spans := call[6].([]any)
		require.Len(t, spans, 2*len(bufs), "spans: want %d pairs", len(bufs))
		for i, b := range bufs {
			off, n := spans[2*i].(int64), spans[2*i+1].(int64)
			if off%python.RegionAlign != 0 || off < python.RegionAlign || int(n) != len(b) || int(off)+len(b) > start {
				t.Fatalf("buffer %d at %d (%d bytes), tuple at %d", i, off, n, start)
			}
			require.Equal(t, b, mem[off:off+n], "buffer %d", i)
		}
		for _, short := range []int{0, 1, len(mem) - 1} {
			small := bytes.Repeat([]byte{0xee}, short)
			_, _, err := python.EncodeCallInRegion(small, req, time.Time{})
			require.ErrorIs(t, err, python.ErrRegionTooSmall, "%d bytes of memory", short)
			require.Equal(t, bytes.Repeat([]byte{0xee}, short), small, "%d bytes of memory: written to although refused", short)
		}
	}
	// Arguments that are not one dict are refused as EncodeCall refuses them.
	bad := &worker.Request{Command: "c", Args: []byte{'N'}, Buffers: bufs}
	_, _, err = python.EncodeCallInRegion(make([]byte, python.RegionCallSize(bad)), bad, time.Time{})
	require.ErrorAs(t, err, new(*worker.NotSerializableError), "args None")
}
