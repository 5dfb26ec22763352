package subproc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
def echo_view(data):
    # A view of the argument, not the argument itself: written as a reply.
    return data[:]

@snakepit.command
def size(data):
    return len(data)

@snakepit.command
def chunks(data, n):
    for i in range(n):
        yield bytes([i]) + data

from snakepit import _wire

# The payloads the dispatcher makes the handler's views of.
_payloads = []
_view = _wire._view
def _spy(b, hosts):
    _payloads.append(b)
    return _view(b, hosts)
_wire._view = _spy

@snakepit.command
def given(data):
    # What the handler holds (its type, whether it is read-only, its first
    # bytes) and the object whose memory the payload behind it is.
    v = memoryview(data)
    p = _payloads.pop()
    _payloads.clear()
    return [type(data).__name__, v.readonly, type(p.obj).__name__, bytes(v[:4])]
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

// TestSharedRegionHostileReplies: a child's reference into the shared
// region is checked against the host's mapping, the region's generation
// and its cap; a bad one is a typed error that kills the worker, never a
// read outside the mapping, and the region is unmapped and its descriptor
// closed when the worker is closed.
func TestSharedRegionHostileReplies(t *testing.T) {
	page := uint64(os.Getpagesize())
	// A first worker opens what the process keeps (the registry, the
	// network poller): the baseline is taken after it.
	w0, err := subproc.Start(context.Background(), scriptConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	w0.Close(context.Background())
	fds, maps := openFDs(t), sharedMappings(t)
	value := []byte("through the region")
	cases := []struct {
		name string
		cfg  func(*subproc.Config)
		step step
		want error
	}{
		{"offset at the end", nil, step{ShmGrow: int(page), ShmGen: 1, ShmOff: page, ShmLen: 1}, subproc.ErrBadRegion},
		{"offset far outside", nil, step{ShmGrow: int(page), ShmGen: 1, ShmOff: 1 << 40}, subproc.ErrBadRegion},
		{"length overflows", nil, step{ShmGrow: int(page), ShmGen: 1, ShmOff: 8, ShmLen: math.MaxUint64 - 4}, subproc.ErrBadRegion},
		{"length past the end", nil, step{ShmGrow: int(page), ShmGen: 1, ShmOff: 8, ShmLen: page}, subproc.ErrBadRegion},
		{"empty region", nil, step{ShmGen: 0}, subproc.ErrBadRegion},
		{"generation from the future", nil, step{ShmGrow: int(page), ShmGen: 7}, subproc.ErrBadRegion},
		{"generation bumped without growth", nil, step{ShmGen: 1}, subproc.ErrBadRegion},
		{"grown beyond the cap", func(c *subproc.Config) { c.MaxSharedMemory = 1 << 20 }, step{ShmGrow: 2 << 20, ShmGen: 1}, subproc.ErrBadRegion},
		{"length above the frame cap", func(c *subproc.Config) { c.MaxFrame, c.MaxSharedMemory = 64<<10, 1<<20 },
			step{ShmGrow: 1 << 20, ShmGen: 1, ShmLen: 512 << 10}, subproc.ErrFrameTooLarge},
		{"short reference", nil, step{ShmRaw: make([]byte, 23)}, subproc.ErrBadFrame},
		{"long reference", nil, step{ShmRaw: make([]byte, 25)}, subproc.ErrBadFrame},
		{"no region", func(c *subproc.Config) { c.SharedThreshold = -1 }, step{ShmGen: 0, ShmLen: 1}, subproc.ErrBadRegion},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := scriptConfig(t)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			w, err := subproc.Start(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close(context.Background())
			s := tc.step
			s.Op, s.Value = "shm", value
			_, err = scriptCall(ctx, w, s)
			if !errors.Is(err, tc.want) || !errors.Is(err, worker.ErrWorkerDead) {
				t.Fatalf("got %v, want %v and %v", err, tc.want, worker.ErrWorkerDead)
			}
			if err := w.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
	if got := sharedMappings(t); got != maps {
		t.Errorf("mappings of a region after Close: got %d, want %d", got, maps)
	}
	if got := openFDs(t); got != fds {
		t.Errorf("open descriptors after Close: got %d, want %d", got, fds)
	}
}

// TestSharedRegionShrinkRefused: the region is sealed against shrinking,
// so a child that truncates it cannot make the host fault (SIGBUS) on a
// page it mapped; replies within the region, in a grown one and in a later
// generation are read intact.
func TestSharedRegionShrinkRefused(t *testing.T) {
	page := os.Getpagesize()
	w := startScript(t)
	defer w.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	value := []byte("through the region")
	want := appendMarshalBytes(nil, value)
	for i, s := range []step{
		{ShmGrow: 2 * page, ShmGen: 1},
		{ShmShrink: -1, ShmGen: 1, ShmOff: uint64(page)},
		{ShmGrow: 4 * page, ShmGen: 2, ShmOff: uint64(3 * page)},
		{ShmShrink: page, ShmGen: 2, ShmOff: uint64(4*page - len(want) - 5)}, // the last bytes
	} {
		s.Op, s.Value = "shm", value
		got, err := scriptCall(ctx, w, s)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("reply %d: got %q, want %q", i, got, want)
		}
	}
}

// TestSharedConcurrentCallsAndStreams: callers sharing one worker, each
// with its own large payload, and a stream of large chunks, all through the
// region: every caller gets its own bytes back.
func TestSharedConcurrentCallsAndStreams(t *testing.T) {
	w := startShm(t, subproc.Config{SharedThreshold: 16 << 10})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 5 {
				data := make([]byte, 16<<10+rng.IntN(2<<20))
				for i := range data {
					data[i] = byte(rng.Uint32())
				}
				args, err := pymarshal.Marshal(map[string]any{"data": data})
				if err != nil {
					errs <- err
					return
				}
				resp, err := w.Call(ctx, &worker.Request{Command: "echo", Args: args})
				if err != nil {
					errs <- err
					return
				}
				var got []byte
				if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("caller %d: got %d bytes back (%v), want its own %d", g, len(got), err, len(data))
					return
				}
			}
		})
	}
	wg.Go(func() {
		data := bytes.Repeat([]byte("chunk"), 100<<10)
		args, _ := pymarshal.Marshal(map[string]any{"data": data, "n": 3})
		st, err := w.Stream(ctx, &worker.Request{Command: "chunks", Args: args})
		if err != nil {
			errs <- err
			return
		}
		defer st.Close()
		for i := range 3 {
			raw, err := st.Next(ctx)
			if err != nil {
				errs <- fmt.Errorf("chunk %d: %v", i, err)
				return
			}
			var got []byte
			if err := pymarshal.Unmarshal(raw, &got); err != nil || len(got) != len(data)+1 || got[0] != byte(i) || !bytes.Equal(got[1:], data) {
				errs <- fmt.Errorf("chunk %d: got %d bytes (%v), want %d starting with %d", i, len(got), err, len(data)+1, i)
				return
			}
		}
		if _, err := st.Next(ctx); !errors.Is(err, io.EOF) {
			errs <- fmt.Errorf("after the last chunk: got %v, want io.EOF", err)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSharedBuffersAreViews: a large out-of-band argument reaches the
// handler as a read-only view of the shared region (no copy), and comes
// back intact when returned: itself, in place; a view of it, after the
// request in the region, or, when it does not fit there under the cap,
// from offset 0 (copied first: the view and the reply would overlap). Payloads of
// growing and shrinking sizes make the region grow between calls.
func TestSharedBuffersAreViews(t *testing.T) {
	const threshold = 64 << 10
	w := startShm(t, subproc.Config{SharedThreshold: threshold, MaxFrame: 40 << 20, MaxSharedMemory: 24 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	call := func(command string, data []byte) ([]byte, error) {
		args, oob, err := pymarshal.AppendMarshalOOB(nil, map[string]any{"data": data}, threshold, nil)
		if err != nil {
			return nil, err
		}
		resp, err := w.Call(ctx, &worker.Request{Command: command, Args: args, Buffers: oob})
		if err != nil {
			return nil, err
		}
		return resp.Result, nil
	}
	data := bytes.Repeat([]byte("view"), (1<<20)/4)
	raw, err := call("given", data)
	if err != nil {
		t.Fatal(err)
	}
	var got []any
	if err := pymarshal.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if want := []any{"memoryview", true, "mmap", []byte("view")}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the handler holds %v, want %v (a read-only view of the region)", got, want)
	}

	rng := rand.New(rand.NewPCG(3, 4))
	// echo returns the argument itself: replied in place. echo_view
	// returns a view of it: 300 KiB, 5 MiB and 11 MiB fit after the
	// request (twice the size under the 24 MiB cap); 16 MiB does not: its
	// reply is written from offset 0, over the request it echoes.
	for _, command := range []string{"echo", "echo_view"} {
		for _, n := range []int{300 << 10, 5 << 20, 300 << 10, 16 << 20, threshold, 11 << 20, 16 << 20, 1 << 20} {
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			raw, err := call(command, data)
			if err != nil {
				t.Fatalf("%s of %d bytes: %v", command, n, err)
			}
			var back []byte
			if err := pymarshal.Unmarshal(raw, &back); err != nil {
				t.Fatalf("%s of %d bytes: %v", command, n, err)
			}
			if !bytes.Equal(back, data) {
				t.Fatalf("%s of %d bytes: got %d bytes back, not the same", command, n, len(back))
			}
		}
	}

	// A stream keeps its arguments past the request: copies, which later
	// replies in the region do not overwrite.
	big := bytes.Repeat([]byte("stream"), (2<<20)/6)
	args, oob, err := pymarshal.AppendMarshalOOB(nil, map[string]any{"data": big, "n": 3}, threshold, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := w.Stream(ctx, &worker.Request{Command: "chunks", Args: args, Buffers: oob})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i := range 3 {
		raw, err := st.Next(ctx)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		var got []byte
		if err := pymarshal.Unmarshal(raw, &got); err != nil || len(got) != len(big)+1 || got[0] != byte(i) || !bytes.Equal(got[1:], big) {
			t.Fatalf("chunk %d: got %d bytes (%v), want %d starting with %d", i, len(got), err, len(big)+1, i)
		}
	}
}
