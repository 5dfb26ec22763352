package python_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

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
	if err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{bytes.Repeat([]byte("a"), 100), {}, bytes.Repeat([]byte("b"), 64), []byte("c")}
	args, err := pymarshal.Marshal(map[string]any{"x": a})
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []*worker.Request{
		{Command: "c", Args: args, CorrelationID: "id", SessionID: "s", Buffers: bufs, Attachments: [][]byte{[]byte("att")}},
		{Command: "none"},
	} {
		mem := make([]byte, python.RegionCallSize(req))
		start, end, err := python.EncodeCallInRegion(mem, req, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if start%python.RegionAlign != 0 || end > len(mem) || start > end {
			t.Fatalf("tuple at [%d, %d) of %d bytes", start, end, len(mem))
		}
		v, err := pymarshal.Decode(mem[start:end])
		if err != nil {
			t.Fatal(err)
		}
		call := v.([]any)
		if len(req.Buffers) == 0 {
			if len(call) != 6 {
				t.Fatalf("call without buffers: got %d fields, want 6", len(call))
			}
			continue
		}
		if len(call) != 7 || call[0] != req.Command || call[2] != req.CorrelationID || call[3] != req.SessionID {
			t.Fatalf("call tuple %v", call)
		}
		spans := call[6].([]any)
		if len(spans) != 2*len(bufs) {
			t.Fatalf("spans %v, want %d pairs", spans, len(bufs))
		}
		for i, b := range bufs {
			off, n := spans[2*i].(int64), spans[2*i+1].(int64)
			if off%python.RegionAlign != 0 || off < python.RegionAlign || int(n) != len(b) || int(off)+len(b) > start {
				t.Fatalf("buffer %d at %d (%d bytes), tuple at %d", i, off, n, start)
			}
			if got := mem[off : off+n]; !bytes.Equal(got, b) {
				t.Fatalf("buffer %d: got %q, want %q", i, got, b)
			}
		}
		for _, short := range []int{0, 1, len(mem) - 1} {
			small := bytes.Repeat([]byte{0xee}, short)
			if _, _, err := python.EncodeCallInRegion(small, req, time.Time{}); !errors.Is(err, python.ErrRegionTooSmall) {
				t.Fatalf("%d bytes of memory: got %v, want ErrRegionTooSmall", short, err)
			}
			if !bytes.Equal(small, bytes.Repeat([]byte{0xee}, short)) {
				t.Fatalf("%d bytes of memory: written to although refused", short)
			}
		}
	}
	// Arguments that are not one dict are refused as EncodeCall refuses them.
	bad := &worker.Request{Command: "c", Args: []byte{'N'}, Buffers: bufs}
	_, _, err = python.EncodeCallInRegion(make([]byte, python.RegionCallSize(bad)), bad, time.Time{})
	if !errors.As(err, new(*worker.NotSerializableError)) {
		t.Fatalf("args None: got %v, want a NotSerializableError", err)
	}
}
