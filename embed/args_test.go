package embed_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// TestKwargsNotDict passes marshalled values other than a dict as keyword
// arguments through every raw call path: each must fail with an argument
// NotSerializableError, never reach PyObject_Call (which would crash).
func TestKwargsNotDict(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, echoCode)
	ctx := context.Background()
	f, err := in.Func(ctx, "__main__", "kw")
	if err != nil {
		t.Fatal(err)
	}
	args, err := pymarshal.Marshal(pymarshal.Tuple([]any{1}))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{[]any{"a", 1}, "a", 3, nil, pymarshal.Tuple([]any{"b"})} {
		kw, err := pymarshal.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		check := func(path string, err error) {
			t.Helper()
			var nse *worker.NotSerializableError
			if !errors.As(err, &nse) || nse.What != "argument" {
				t.Errorf("%s with kwargs %#v: got %v, want an argument NotSerializableError", path, v, err)
			}
		}
		_, err = in.CallRaw(ctx, f, args, kw, nil)
		check("CallRaw", err)
		_, err = in.CallOnThread(0, f, args, kw, nil)
		check("CallOnThread", err)
		func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			th, err := in.Attach()
			if err != nil {
				t.Fatal(err)
			}
			defer th.Close()
			tf, err := th.Func("__main__", "kw")
			if err != nil {
				t.Fatal(err)
			}
			_, err = th.CallRaw(tf, args, kw, nil)
			check("Thread.CallRaw", err)
		}()
	}
	// A dict still works.
	kw, _ := pymarshal.Marshal(map[string]any{"b": 5})
	if _, err := in.CallRaw(ctx, f, args, kw, nil); err != nil {
		t.Fatalf("got %v, want no error", err)
	}
}

// TestUnserializableDeepPathCapped checks that a value marshal cannot
// carry, nested deep inside a result, is named with a bounded path.
func TestUnserializableDeepPathCapped(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, `
deep = object()
for _ in range(1990):
    deep = [deep]
`)
	_, err := in.Eval(context.Background(), "deep")
	var nse *worker.NotSerializableError
	if !errors.As(err, &nse) {
		t.Fatalf("got %v, want a NotSerializableError", err)
	}
	if msg := err.Error(); len(msg) > 400 || !strings.Contains(msg, "object") {
		t.Fatalf("got a message of %d bytes (%.200s), want at most 400 naming object", len(msg), msg)
	}
}

// TestCallBufsFreed runs bursts of concurrent calls with garbage
// collections between them: the pooled C buffers the collector drops must
// be freed, so their number stays bounded by one burst's concurrency.
func TestCallBufsFreed(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	const burst, rounds = 50, 8
	// Every call of a burst holds its buffer at once: they meet at a
	// barrier (the timeout is a hang guard).
	mustExec(t, in, fmt.Sprintf(`
import threading
barrier = threading.Barrier(%d)
def meet():
    barrier.wait(timeout=60)
`, burst))
	f, err := in.Func(context.Background(), "__main__", "meet")
	if err != nil {
		t.Fatal(err)
	}
	for range rounds {
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() {
				if _, err := in.CallOnThread(embed.NewCallID(), f, nil, nil, nil); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		runtime.GC()
		runtime.GC()
	}
	// Cleanups run on their own goroutine after a collection: give them
	// a bounded number of collections to catch up.
	for i := 0; i < 100 && embed.LiveCallBufs() > burst; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if n := embed.LiveCallBufs(); n > burst {
		t.Fatalf("got %d call buffers holding C memory after %d bursts of %d, want at most %d", n, rounds, burst, burst)
	}
}

// TestConcurrentClose closes each interpreter from two goroutines at once,
// after calls from other threads left thread states to reclaim: both Close
// calls must return without error (and without touching freed memory,
// which the AddressSanitizer run checks).
func TestConcurrentClose(t *testing.T) {
	rt := testRuntime(t)
	for range 20 {
		in, err := rt.NewInterpreter(embed.InterpreterConfig{})
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, in, echoCode)
		f, err := in.Func(context.Background(), "__main__", "noop")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if _, err := in.CallOnThread(embed.NewCallID(), f, nil, nil, nil); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- in.Close(ctx) }()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("Close: got %v, want nil", err)
			}
		}
		cancel()
	}
}

// TestNumpySecondInterpreter311 imports Debian's numpy (CPython 3.11) in
// sub-interpreters: the guards refuse it (numpy loaded in one and imported
// by another after that one ended crashes the host), which must match
// worker.ErrNotSubinterpreterSafe. On 3.12+ the refusal comes from CPython
// itself (TestSubinterpreterRefusal).
func TestNumpySecondInterpreter311(t *testing.T) {
	if testRuntime(t).Version().Minor != 11 {
		return // covered by the 3.11 child of TestVersionMatrix
	}
	ctx := context.Background()
	var err error
	for range 2 {
		in := newInterp(t, embed.InterpreterConfig{Paths: []string{"/usr/lib/python3/dist-packages"}})
		if err = in.Exec(ctx, "import numpy"); err != nil {
			break
		}
	}
	if !errors.Is(err, worker.ErrNotSubinterpreterSafe) || !strings.Contains(err.Error(), "process profile") {
		t.Fatalf("got %v, want an error matching worker.ErrNotSubinterpreterSafe", err)
	}
}
