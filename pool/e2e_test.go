package pool_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

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
	require.NoError(t, os.WriteFile(filepath.Join(dir, "e2e_adapter.py"), []byte(e2eAdapter), 0o644))
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
			require.NoError(t, err)
			defer p.Close(ctx)
			var minor int
			require.NoError(t, p.Call(ctx, "minor", nil, &minor))
			require.Equal(t, pymatrix.WantMinor(), minor, "the minor version of Python the workers run")
			var out struct {
				Greeting string `json:"greeting"`
			}
			require.NoError(t, p.Call(ctx, "greet", map[string]any{"name": "gopher"}, &out), "quickstart")
			require.Equal(t, "hello gopher", out.Greeting, "quickstart")
			s := p.Session("user-1", pool.StrictQueue)
			for i := 1; i <= 5; i++ {
				var n int
				require.NoError(t, s.Call(ctx, "count", nil, &n), "session call %d", i)
				require.Equal(t, i, n, "session call %d", i)
			}
			sum := 0
			for c, err := range p.Stream(ctx, "squares", map[string]any{"n": 4}) {
				require.NoError(t, err)
				var v int
				c.Decode(&v)
				sum += v
			}
			require.Equal(t, 14, sum, "stream")
			// Recycling by call count, while calls keep being answered.
			deadline := time.Now().Add(30 * time.Second)
			for i := 0; p.Stats().Recycled < 2; i++ {
				if time.Now().After(deadline) {
					t.Fatalf("no recycling after %d calls: %+v", i, p.Stats())
				}
				require.NoError(t, p.Call(ctx, "greet", map[string]any{"name": "x"}, nil), "call %d", i)
			}
			st := p.Stats()
			require.Equal(t, 2, st.Workers, "capacity after recycling: %+v", st)
		})
	}
}

// TestProcessWorkerKilledUnderLoad: SIGKILL a worker process while calls
// run; the pool replaces it and every call is answered exactly once, with a
// result or an error.
func TestProcessWorkerKilledUnderLoad(t *testing.T) {
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "e2e_adapter", Paths: []string{e2eDir(t)}, Size: 2, RestartBackoff: 10 * time.Millisecond})
	require.NoError(t, err)
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
					assert.NoError(t, err, "a call's error other than ErrWorkerDead")
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	var victim int
	require.NoError(t, p.Call(ctx, "pid", nil, &victim))
	unix.Kill(victim, unix.SIGKILL)
	eventually(t, "the killed worker is replaced", func() bool { s := p.Stats(); return s.Deaths == 1 && s.Workers == 2 })
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("answered: %d ok, %d failed (%d worker dead); %+v", ok.Load(), failed.Load(), dead.Load(), p.Stats())
	st := p.Stats()
	require.Equal(t, ok.Load()+1, st.Calls, "calls the pool counted ok (+1: the test's own call for the victim)")
	require.Equal(t, failed.Load(), st.Failed, "calls the pool counted failed")
	var after int
	require.NoError(t, p.Call(ctx, "pid", nil, &after), "after the kill")
	require.NotEqual(t, victim, after, "the pid answering after the kill")
}

// TestThreadWorkerStuckInC: a thread-profile handler blocked in C past its
// grace period retires its worker; the pool replaces it and goes on.
func TestThreadWorkerStuckInC(t *testing.T) {
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Module: "e2e_adapter", Paths: []string{e2eDir(t)}, Size: 2, InterruptGrace: 200 * time.Millisecond, RestartBackoff: 10 * time.Millisecond})
	require.NoError(t, err)
	defer func() {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		p.Close(cctx)
	}()
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, p.Call(cctx, "block_in_c", map[string]any{"seconds": 2}, nil), context.DeadlineExceeded)
	eventually(t, "the stuck worker is replaced", func() bool { s := p.Stats(); return s.Deaths == 1 && s.Workers == 2 })
	var n int
	require.NoError(t, p.Call(ctx, "with_thread", nil, &n), "a handler starting a thread")
	require.Equal(t, 1, n, "a handler starting a thread")
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
		require.NoError(t, err)
		defer p.Close(ctx)
		var out struct {
			Greeting string `json:"greeting"`
		}
		require.NoError(t, p.Call(ctx, "greet", map[string]any{"name": "gopher"}, &out))
		require.Equal(t, "hello gopher", out.Greeting)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestProcessPoolWithoutLibpython$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child; output:\n%s", out)
	require.Contains(t, string(out), "--- PASS: TestProcessPoolWithoutLibpython", "child's output")
}
