package subproc

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// TestSharedThreshold: a request payload one byte under SharedThreshold
// goes through the socket (the region stays empty), one of exactly the
// threshold through the region.
func TestSharedThreshold(t *testing.T) {
	const threshold = 32 << 10
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bench_adapter.py"), []byte(benchAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, _, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	w, err := Start(context.Background(), Config{Module: "bench_adapter", Paths: []string{dir}, Python: benchPython(t),
		Registry: reg, SharedThreshold: threshold})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	request := func(n int) *worker.Request {
		args, err := pymarshal.Marshal(map[string]any{"data": make([]byte, n)})
		if err != nil {
			t.Fatal(err)
		}
		return &worker.Request{Command: "echo", Args: args}
	}
	base, err := python.EncodeCall(nil, request(0), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		payload int
		shared  bool
	}{{threshold - 1, false}, {threshold, true}} {
		req := request(tc.payload - len(base))
		if p, _ := python.EncodeCall(nil, req, time.Time{}); len(p) != tc.payload {
			t.Fatalf("request payload: got %d bytes, want %d", len(p), tc.payload)
		}
		resp, err := w.Call(context.Background(), req)
		if err != nil {
			t.Fatalf("payload of %d bytes: %v", tc.payload, err)
		}
		var got []byte
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || len(got) != tc.payload-len(base) {
			t.Fatalf("payload of %d bytes: got %d bytes back, %v; want %d", tc.payload, len(got), err, tc.payload-len(base))
		}
		if shared := w.shm.size() > 0; shared != tc.shared {
			t.Fatalf("payload of %d bytes (threshold %d): got through the region %v, want %v", tc.payload, threshold, shared, tc.shared)
		}
	}
}

// TestSharedRegionHostGrowthUnseen: the host grew the region for requests
// that never went out (their callers left first), so the child's idea of
// the region lags; its replies through the region, grown by it or not,
// are still read.
func TestSharedRegionHostGrowthUnseen(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bench_adapter.py"), []byte(benchAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, _, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	w, err := Start(context.Background(), Config{Module: "bench_adapter", Paths: []string{dir}, Python: benchPython(t),
		Registry: reg, SharedThreshold: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	big := func(n int) {
		t.Helper()
		args, err := pymarshal.Marshal(map[string]any{"n": n})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := w.Call(context.Background(), &worker.Request{Command: "big", Args: args})
		if err != nil {
			t.Fatalf("a reply of %d bytes: %v", n, err)
		}
		var got []byte
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || len(got) != n {
			t.Fatalf("a reply of %d bytes: got %d bytes, %v", n, len(got), err)
		}
	}
	unsent := func(n int) {
		t.Helper()
		if _, ok, err := w.shm.put(make([]byte, n)); !ok || err != nil {
			t.Fatalf("put %d bytes: %v, %v", n, ok, err)
		}
	}
	unsent(300 << 10) // the host's generation 1, unseen by the child
	big(1 << 20)      // the child grows the region: its generation 1 is larger
	unsent(3 << 20)   // the host's generation 2
	unsent(6 << 20)   // the host's generation 3
	big(100 << 10)    // fits the child's mapping: a reference to its generation 1
	big(8 << 20)      // the child grows past the host's generation 3 with its 2
}

// TestSharedRegionInMemoryBytes: the region counts in the worker's memory
// (which MaxMemory checks) at its full size, also before the child has
// touched it.
func TestSharedRegionInMemoryBytes(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bench_adapter.py"), []byte(benchAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, _, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	w, err := Start(context.Background(), Config{Module: "bench_adapter", Paths: []string{dir}, Python: benchPython(t), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	before, err := w.MemoryBytes()
	if err != nil {
		t.Fatal(err)
	}
	const n = 32 << 20
	if _, ok, err := w.shm.put(make([]byte, n)); !ok || err != nil {
		t.Fatalf("put: %v, %v", ok, err)
	}
	after, err := w.MemoryBytes()
	if err != nil {
		t.Fatal(err)
	}
	if after-before < n-(1<<20) {
		t.Fatalf("MemoryBytes: got %d more after a region of %d bytes was filled, want about %d more", after-before, n, n)
	}
}
