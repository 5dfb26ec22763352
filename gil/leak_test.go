package gil_test

import (
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

const leakAdapter = `
import sys
import snakepit

@snakepit.command
def echo(value):
    return value

@snakepit.command
def fail(value):
    raise ValueError(value)

@snakepit.command
def chunks(n):
    for i in range(n):
        yield {"i": i}

@snakepit.command
def remember(value, ctx):
    ctx.session["v"] = value
    ctx.log.debug("remembered")
    return len(ctx.session)

@snakepit.command
def blocks():
    return sys.getallocatedblocks()
`

// TestNoLeaks makes 100k calls of every kind and checks that the
// interpreter's allocations, the thread states held for it, and the
// goroutines do not grow, and that Close returns goroutines to baseline.
func TestNoLeaks(t *testing.T) {
	calls := 100_000
	if testing.Short() {
		calls = 10_000
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/leak_adapter.py", []byte(leakAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := runtimeFor(t)
	goroutinesBefore := runtime.NumGoroutine()
	ctx := context.Background()
	w, err := gil.Start(ctx, gil.Config{Module: "leak_adapter", Paths: []string{dir}, Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	call := func(ctx context.Context, cmd string, args map[string]any, sid string) ([]byte, error) {
		b, _ := pymarshal.Marshal(args)
		resp, err := w.Call(ctx, &worker.Request{Command: cmd, Args: b, SessionID: sid, CorrelationID: "leak"})
		if err != nil {
			return nil, err
		}
		return resp.Result, nil
	}
	blocks := func() int64 {
		out, err := call(ctx, "blocks", nil, "")
		if err != nil {
			t.Fatal(err)
		}
		v, _ := pymarshal.Decode(out)
		return v.(int64)
	}
	deadline, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	round := func(i int) {
		if _, err := call(ctx, "echo", map[string]any{"value": map[string]any{"i": i, "s": "x"}}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := call(deadline, "echo", map[string]any{"value": []byte("bytes")}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := call(ctx, "fail", map[string]any{"value": "no"}, ""); !errors.Is(err, worker.ErrPython) {
			t.Fatalf("fail: %v", err)
		}
		if _, err := call(ctx, "missing", nil, ""); !errors.Is(err, worker.ErrCommandNotFound) {
			t.Fatalf("missing: %v", err)
		}
		if i%10 == 0 {
			st, err := w.Stream(ctx, &worker.Request{Command: "chunks", Args: mustArgs(map[string]any{"n": 3})})
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := st.Next(ctx); err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
			}
			st.Close()
			if _, err := call(ctx, "remember", map[string]any{"value": i}, "s"); err != nil {
				t.Fatal(err)
			}
			if err := w.EndSession(ctx, "s"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 2000 { // warm caches and free lists
		round(i)
	}
	before := blocks()
	for i := range calls / 4 {
		round(i)
	}
	after := blocks()
	t.Logf("allocated blocks: %d before, %d after %d calls; thread states held: %d; goroutines: %d",
		before, after, calls, w.Interpreter().ThreadStates(), runtime.NumGoroutine())
	if d := after - before; d > 2000 || d < -2000 {
		t.Fatalf("allocated blocks changed by %d over %d calls", d, calls)
	}
	if n := w.Interpreter().ThreadStates(); n > 64 {
		t.Fatalf("%d thread states held: want one per OS thread that called", n)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := w.Interpreter().ThreadStates(); n != 0 {
		t.Fatalf("%d thread states left after Close", n)
	}
	waitGoroutines(t, goroutinesBefore)
}

func mustArgs(v map[string]any) []byte {
	b, err := pymarshal.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// waitGoroutines waits (boundedly) for the goroutine count to return to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	for i := 0; ; i++ {
		got := runtime.NumGoroutine()
		if got <= n {
			return
		}
		if i == 200 {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d, want %d\n%s", got, n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
