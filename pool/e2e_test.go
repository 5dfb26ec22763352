package pool_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const e2eAdapter = `
import os
import sys
import snakepit

@snakepit.command
def minor():
    return sys.version_info[1]

@snakepit.command
def greet(name):
    return {"greeting": "hello " + name, "pid": os.getpid()}

@snakepit.command
def count(ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]

@snakepit.command
def pid():
    return os.getpid()

@snakepit.command
def sleep(seconds):
    import time
    time.sleep(seconds)

@snakepit.command
def block_in_c(seconds):
    # A timed wait on a held lock: C code no interrupt reaches (unlike
    # time.sleep, which thread-profile workers wake on cancellation).
    import threading
    held = threading.Lock()
    held.acquire()
    held.acquire(timeout=seconds)

@snakepit.command
def with_thread():
    import threading
    done = []
    t = threading.Thread(target=lambda: done.append(1))
    t.start()
    t.join()
    return len(done)

@snakepit.command
def squares(n):
    for i in range(n):
        yield i * i
`

func e2eDir(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "e2e_adapter.py"), []byte(e2eAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestVersions runs this package's tests again on CPython 3.11 (both
// profiles), in a re-executed child: see internal/pymatrix.
func TestVersions(t *testing.T) { pymatrix.RunOn311(t) }

// TestEndToEnd runs the quickstart, sessions, streaming and recycling with
// real Python in both profiles.
func TestEndToEnd(t *testing.T) {
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		t.Run(profile.String(), func(t *testing.T) {
			ctx := context.Background()
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "e2e_adapter", Paths: []string{e2eDir(t)}, Size: 2, MaxCalls: 20})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(ctx)
			var minor int
			if err := p.Call(ctx, "minor", nil, &minor); err != nil || minor != pymatrix.WantMinor() {
				t.Fatalf("runs on 3.%d, %v; want 3.%d", minor, err, pymatrix.WantMinor())
			}
			var out struct {
				Greeting string `json:"greeting"`
			}
			if err := p.Call(ctx, "greet", map[string]any{"name": "gopher"}, &out); err != nil || out.Greeting != "hello gopher" {
				t.Fatalf("quickstart: got %+v, %v", out, err)
			}
			s := p.Session("user-1", pool.StrictQueue)
			for i := 1; i <= 5; i++ {
				var n int
				if err := s.Call(ctx, "count", nil, &n); err != nil || n != i {
					t.Fatalf("session call %d: got %d, %v", i, n, err)
				}
			}
			sum := 0
			for c, err := range p.Stream(ctx, "squares", map[string]any{"n": 4}) {
				if err != nil {
					t.Fatal(err)
				}
				var v int
				c.Decode(&v)
				sum += v
			}
			if sum != 14 {
				t.Fatalf("stream: got %d", sum)
			}
			// Recycling by call count, while calls keep being answered.
			deadline := time.Now().Add(30 * time.Second)
			for i := 0; p.Stats().Recycled < 2; i++ {
				if time.Now().After(deadline) {
					t.Fatalf("no recycling after %d calls: %+v", i, p.Stats())
				}
				if err := p.Call(ctx, "greet", map[string]any{"name": "x"}, nil); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			if s := p.Stats(); s.Workers != 2 {
				t.Fatalf("capacity after recycling: %+v", s)
			}
		})
	}
}

// TestProcessWorkerKilledUnderLoad: SIGKILL a worker process while calls
// run; the pool replaces it and every call is answered exactly once, with a
// result or an error.
func TestProcessWorkerKilledUnderLoad(t *testing.T) {
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "e2e_adapter", Paths: []string{e2eDir(t)}, Size: 2, RestartBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	var ok, failed, dead atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var pid int
				err := p.Call(ctx, "pid", nil, &pid)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, worker.ErrWorkerDead):
					dead.Add(1)
					failed.Add(1)
				default:
					failed.Add(1)
					t.Errorf("unexpected error: %v", err)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	var victim int
	if err := p.Call(ctx, "pid", nil, &victim); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(victim, syscall.SIGKILL)
	eventually(t, "the killed worker is replaced", func() bool { s := p.Stats(); return s.Deaths == 1 && s.Workers == 2 })
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("answered: %d ok, %d failed (%d worker dead); %+v", ok.Load(), failed.Load(), dead.Load(), p.Stats())
	st := p.Stats()
	if st.Calls != ok.Load()+1 || st.Failed != failed.Load() { // +1: the test's own call for the victim
		t.Fatalf("pool counted %d ok / %d failed, callers saw %d / %d", st.Calls, st.Failed, ok.Load(), failed.Load())
	}
	var after int
	if err := p.Call(ctx, "pid", nil, &after); err != nil || after == victim {
		t.Fatalf("after the kill: pid %d, %v", after, err)
	}
}

// TestThreadWorkerStuckInC: a thread-profile handler blocked in C past its
// grace period retires its worker; the pool replaces it and goes on.
func TestThreadWorkerStuckInC(t *testing.T) {
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Module: "e2e_adapter", Paths: []string{e2eDir(t)}, Size: 2, InterruptGrace: 200 * time.Millisecond, RestartBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		p.Close(cctx)
	}()
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := p.Call(cctx, "block_in_c", map[string]any{"seconds": 2}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	eventually(t, "the stuck worker is replaced", func() bool { s := p.Stats(); return s.Deaths == 1 && s.Workers == 2 })
	var n int
	if err := p.Call(ctx, "with_thread", nil, &n); err != nil || n != 1 {
		t.Fatalf("a handler starting a thread: got %d, %v", n, err)
	}
}

var _ = subproc.ErrBadFrame

// TestProcessPoolWithoutLibpython: a program that links the thread profile
// but only runs process pools (libpython never loaded) starts and uses
// them: the process profile's spawner thread releases its thread states
// through a hook of the thread profile, which must do nothing then. Run in
// a re-executed child, as this process may have loaded libpython already.
func TestProcessPoolWithoutLibpython(t *testing.T) {
	const env = "SNAKEPIT_TEST_PROCESS_ONLY"
	if os.Getenv(env) != "" {
		ctx := context.Background()
		p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "e2e_adapter", Paths: []string{e2eDir(t)}, Size: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close(ctx)
		var out struct {
			Greeting string `json:"greeting"`
		}
		if err := p.Call(ctx, "greet", map[string]any{"name": "gopher"}, &out); err != nil || out.Greeting != "hello gopher" {
			t.Fatalf("got %+v, %v", out, err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestProcessPoolWithoutLibpython$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestProcessPoolWithoutLibpython") {
		t.Fatalf("child: got %v, want success; output:\n%s", err, out)
	}
}
