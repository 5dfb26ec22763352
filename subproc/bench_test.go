package subproc

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/worker"
)

const benchAdapter = `
import asyncio
import snakepit

@snakepit.command
async def asleep(s):
    await asyncio.sleep(s)

@snakepit.command
def noop(req):
    return req

@snakepit.command
def echo(data):
    return data

@snakepit.command
def big(n):
    return b"x" * n

@snakepit.command
def host_loop(ctx, n):
    call = ctx.host.call
    for _ in range(n):
        call("noop", id=7, name="snake")
    return n

_payloads = {}

@snakepit.command
def host_bytes(ctx, name, n, rounds):
    p = _payloads.get(n)
    if p is None:
        p = _payloads[n] = b"x" * n
    call = ctx.host.call
    for _ in range(rounds):
        r = call(name, data=p)
    return r if type(r) is int else len(r)
`

func benchPython(b testing.TB) string {
	b.Helper()
	if exe := os.Getenv("SNAKEPIT_PYTHON"); exe != "" {
		return exe
	}
	py, err := dist.Default()
	if err != nil {
		b.Fatal(err)
	}
	return py.Executable
}

var benchRegistry *Registry

func benchWorker(b *testing.B) *Worker {
	b.Helper()
	return benchWorkerConfig(b, Config{})
}

func benchWorkerConfig(b *testing.B, cfg Config) *Worker {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bench_adapter.py"), []byte(benchAdapter), 0o644); err != nil {
		b.Fatal(err)
	}
	if benchRegistry == nil {
		var err error
		if benchRegistry, _, err = OpenRegistry(filepath.Join(os.TempDir(), "snakepit-bench-registry")); err != nil {
			b.Fatal(err)
		}
	}
	cfg.Module, cfg.Paths, cfg.Python, cfg.Registry = "bench_adapter", []string{dir}, benchPython(b), benchRegistry
	w, err := Start(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.Close(context.Background()) })
	return w
}

func noopRequest(b *testing.B) *worker.Request {
	args, err := pymarshal.Marshal(map[string]any{"req": map[string]any{"id": 7, "name": "snake"}})
	if err != nil {
		b.Fatal(err)
	}
	return &worker.Request{Command: "noop", Args: args, CorrelationID: "bench"}
}

// BenchmarkNoop: one worker process, one caller, a no-op command with a
// small dict in and out, through the full dispatcher.
func BenchmarkNoop(b *testing.B) {
	w := benchWorker(b)
	req := noopRequest(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Call(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNoopDeadline is BenchmarkNoop with a deadline on every call.
func BenchmarkNoopDeadline(b *testing.B) {
	w := benchWorker(b)
	req := noopRequest(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Call(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// echoLoop is the floor: a minimal Python loop that reads a frame from fd 3
// and sends its payload straight back, with no dispatcher.
const echoLoop = `
import socket, struct
s = socket.socket(fileno=3)
H = struct.Struct("<IBQ")
h = bytearray(13)
while True:
    if s.recv_into(h, 13, socket.MSG_WAITALL) < 13:
        break
    n, t, rid = H.unpack(h)
    p = bytearray(n)
    if n:
        s.recv_into(p, n, socket.MSG_WAITALL)
    s.sendall(H.pack(n, 11, rid) + p)
`

// BenchmarkEchoFloor measures the same socketpair and framing against
// echoLoop, with the same request bytes as BenchmarkNoop: the cost of the
// transport and two OS thread wake-ups, which no process-profile call can
// go below.
func BenchmarkEchoFloor(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	host := os.NewFile(uintptr(fds[0]), "host")
	child := os.NewFile(uintptr(fds[1]), "child")
	cmd := exec.Command(benchPython(b), "-c", echoLoop)
	cmd.ExtraFiles = []*os.File{child}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	child.Close()
	c, err := net.FileConn(host)
	host.Close()
	if err != nil {
		b.Fatal(err)
	}
	conn := c.(*net.UnixConn)
	defer func() { conn.Close(); cmd.Wait() }()
	payload, err := python.EncodeCall(nil, noopRequest(b), time.Time{})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 256)
	rbuf := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		buf = appendFrame(buf[:0], frameCall, uint64(i), payload)
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
		f, err := readFrame(conn, DefaultMaxFrame, rbuf)
		if err != nil || f.id != uint64(i) {
			b.Fatal(err)
		}
	}
}

// BenchmarkHostCall: a handler makes b.N host calls (Python -> Go ->
// Python) of a no-op Go function, a small dict each way, in one Call: the
// cost of one host call, next to BenchmarkEchoFloor's round trip.
func BenchmarkHostCall(b *testing.B) {
	set, err := host.NewSet(host.New("noop", func(ctx context.Context, a map[string]any) (map[string]any, error) {
		return a, nil
	}))
	if err != nil {
		b.Fatal(err)
	}
	w := benchWorkerConfig(b, Config{Host: set})
	ctx := context.Background()
	call := func(n int) {
		args, err := pymarshal.Marshal(map[string]any{"n": n})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := w.Call(ctx, &worker.Request{Command: "host_loop", Args: args, CorrelationID: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		var got int
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || got != n {
			b.Fatalf("got %d (%v), want %d", got, err, n)
		}
	}
	call(10) // warm up
	b.ReportAllocs()
	b.ResetTimer()
	call(b.N)
}

// BenchmarkHostCall16MiB: a handler calls a host function with 16 MiB of
// bytes: "arg" returns its length, "echo" returns them; "copy-floor" is a
// Go allocate-and-copy of 16 MiB. The payloads go through the host-call
// region ("region") or, with SharedThreshold -1, the socket ("socket").
// ns/op is one host call.
func BenchmarkHostCall16MiB(b *testing.B) {
	const n = 16 << 20
	type dataArgs struct {
		Data []byte `json:"data"`
	}
	set, err := host.NewSet(
		host.New("size", func(ctx context.Context, a dataArgs) (int, error) { return len(a.Data), nil }),
		host.New("echo", func(ctx context.Context, a dataArgs) ([]byte, error) { return a.Data, nil }),
	)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	call := func(b *testing.B, w *Worker, name string, rounds int) {
		args, err := pymarshal.Marshal(map[string]any{"name": name, "n": n, "rounds": rounds})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := w.Call(ctx, &worker.Request{Command: "host_bytes", Args: args, CorrelationID: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		var got int
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || got != n {
			b.Fatalf("got %d (%v), want %d", got, err, n)
		}
	}
	for _, via := range []string{"region", "socket"} {
		cfg := Config{Host: set}
		if via == "socket" {
			cfg.SharedThreshold = -1
		}
		w := benchWorkerConfig(b, cfg)
		for _, name := range []string{"size", "echo"} {
			sub := map[string]string{"size": "arg", "echo": "echo"}[name]
			b.Run(sub+"/"+via, func(b *testing.B) {
				call(b, w, name, 1) // warm up
				b.SetBytes(n)
				b.ResetTimer()
				call(b, w, name, b.N)
			})
		}
	}
	b.Run("copy-floor", func(b *testing.B) {
		data := make([]byte, n)
		b.SetBytes(n)
		for range b.N {
			out := make([]byte, n)
			copy(out, data)
			if out[n-1] != data[n-1] {
				b.Fatal("copy")
			}
		}
	})
}

// BenchmarkStartup starts a worker (process, imports, setup, HELLO,
// PING/PONG) and closes it; it reports the ready worker's resident memory.
func BenchmarkStartup(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bench_adapter.py"), []byte(benchAdapter), 0o644); err != nil {
		b.Fatal(err)
	}
	reg, _, err := OpenRegistry(filepath.Join(os.TempDir(), "snakepit-bench-registry"))
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	exe := benchPython(b)
	var rss int64
	b.ResetTimer()
	for range b.N {
		w, err := Start(context.Background(), Config{Module: "bench_adapter", Paths: []string{dir}, Python: exe, Registry: reg})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if m, err := w.MemoryBytes(); err == nil {
			rss += m
		}
		w.Close(context.Background())
		b.StartTimer()
	}
	b.ReportMetric(float64(rss)/float64(b.N)/(1<<20), "MiB-rss")
}

// BenchmarkEcho16MiB: a handler echoing 16 MiB of bytes (request and
// result pre-encoded, as CallRaw sends them), with the payloads through
// the socket ("socket", SharedThreshold -1) and through the shared region
// ("shared", the default), beside the copy floor: a fresh 16 MiB
// allocation and copy in Go.
func BenchmarkEcho16MiB(b *testing.B) {
	const n = 16 << 20
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	args, err := pymarshal.Marshal(map[string]any{"data": data})
	if err != nil {
		b.Fatal(err)
	}
	req := &worker.Request{Command: "echo", Args: args, CorrelationID: "bench"}
	for _, mode := range []struct {
		name      string
		threshold int
	}{{"socket", -1}, {"shared", 0}} {
		b.Run(mode.name, func(b *testing.B) {
			w := benchWorkerConfig(b, Config{SharedThreshold: mode.threshold})
			ctx := context.Background()
			b.SetBytes(n)
			b.ResetTimer()
			for range b.N {
				resp, err := w.Call(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				if len(resp.Result) < n {
					b.Fatalf("result of %d bytes, want at least %d", len(resp.Result), n)
				}
			}
		})
	}
	b.Run("copy-floor", func(b *testing.B) {
		b.SetBytes(n)
		for range b.N {
			out := make([]byte, n)
			copy(out, data)
			benchSink = out
		}
	})
}

var benchSink []byte

// BenchmarkAsyncSleep100: one worker with concurrency 100 answers 100
// concurrent calls of ` + "`await asyncio.sleep(0.1)`" + `; one op is the whole batch
// (its wall time).
func BenchmarkAsyncSleep100(b *testing.B) {
	w := benchWorkerConfig(b, Config{Concurrency: 100})
	args, err := pymarshal.Marshal(map[string]any{"s": 0.1})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		errs := make(chan error, 100)
		for range 100 {
			go func() {
				_, err := w.Call(ctx, &worker.Request{Command: "asleep", Args: args})
				errs <- err
			}()
		}
		for range 100 {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkPipeline: 64 goroutines calling a no-op (a plain handler, so
// one at a time) on one worker with concurrency 1, without pipelining (D0:
// the one-call mode) and with a depth of 1, 2 and 4 requests queued in the
// child, and with concurrency 2 and 4 (N2, N4: the plain handlers still
// run one at a time, but requests are read while one runs); ns/op is per
// call.
func BenchmarkPipeline(b *testing.B) {
	for _, c := range []struct {
		name     string
		n, depth int
	}{{"D0", 1, 0}, {"D1", 1, 1}, {"D2", 1, 2}, {"D4", 1, 4}, {"N2", 2, 0}, {"N4", 4, 0}} {
		b.Run(c.name, func(b *testing.B) {
			w := benchWorkerConfig(b, Config{Concurrency: c.n, PipelineDepth: c.depth})
			req := noopRequest(b)
			ctx := context.Background()
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := w.Call(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkNoopConcurrent is BenchmarkNoop (one caller) on a worker in
// the concurrent mode (concurrency 4): the cost of the mode itself.
func BenchmarkNoopConcurrent(b *testing.B) {
	w := benchWorkerConfig(b, Config{Concurrency: 4})
	req := noopRequest(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Call(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
