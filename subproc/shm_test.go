package subproc_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const shmAdapter = `
import snakepit

@snakepit.command
def echo(data):
    return data

@snakepit.command
def size(data):
    return len(data)
`

func startShm(t *testing.T, cfg subproc.Config) *subproc.Worker {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shm_adapter.py"), []byte(shmAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Module, cfg.Paths, cfg.Python, cfg.Registry = "shm_adapter", []string{dir}, pythonExe(t), testRegistry(t)
	w, err := subproc.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// sharedMappings counts this process's mappings of a worker's shared region.
func sharedMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "snakepit-shm")
}

// TestSharedRoundTrips: payloads around the shared-memory threshold and
// large ones (16 and 64 MiB) come back intact, in both directions, and
// Close leaves no descriptor and no mapping of the region behind.
func TestSharedRoundTrips(t *testing.T) {
	const threshold = 64 << 10
	// A first worker opens what the process keeps (the registry, the
	// network poller): the baseline is taken after it.
	startShm(t, subproc.Config{}).Close(context.Background())
	fds, maps := openFDs(t), sharedMappings(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shm_adapter.py"), []byte(shmAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "shm_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t),
		SharedThreshold: threshold, MaxFrame: 80 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, threshold - 1, threshold, threshold + 1, 1 << 20, 16 << 20, 64 << 20, 100} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		args, err := pymarshal.Marshal(map[string]any{"data": data})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		resp, err := w.Call(ctx, &worker.Request{Command: "echo", Args: args})
		cancel()
		if err != nil {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
		var got []byte
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil {
			t.Fatalf("echo of %d bytes: %v", n, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("echo of %d bytes: got %d bytes back, not the same", n, len(got))
		}
	}
	if m, err := w.MemoryBytes(); err != nil || m < 64<<20 {
		t.Fatalf("MemoryBytes after a 64 MiB round trip: got %d, %v, want at least the region's 64 MiB", m, err)
	}
	if got := sharedMappings(t); got != maps+1 {
		t.Fatalf("mappings of the region while the worker runs: got %d, want %d", got, maps+1)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := sharedMappings(t); got != maps {
		t.Fatalf("mappings of the region after Close: got %d, want %d", got, maps)
	}
	if got := openFDs(t); got != fds {
		t.Fatalf("open descriptors after Close: got %d, want %d", got, fds)
	}
}
