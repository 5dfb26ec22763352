package embed_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/worker"
)

// TestCallOnThread: calls from many goroutines (so from many OS threads)
// run on their callers' threads, and Close reclaims every thread state the
// callers' threads created, including those of threads that went idle.
func TestCallOnThread(t *testing.T) {
	r := testRuntime(t)
	in, err := r.NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Sleeping calls (which release the GIL) keep their OS threads inside
	// cgo long enough for Go to start more threads for the other goroutines.
	mustExec(t, in, "import threading, time\ndef ident(x):\n    if x % 100 == 0:\n        time.sleep(0.02)\n    return [threading.get_ident(), x]\n")
	f, err := in.Func(ctx, "__main__", "ident")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	idents := map[int64]bool{}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				out, err := in.CallOnThread(embed.NewCallID(), f, mustMarshal(t, []any{g*1000 + i}), nil, nil)
				if err != nil {
					t.Error(err)
					return
				}
				v := decode(t, out).([]any)
				if v[1] != int64(g*1000+i) {
					t.Errorf("got %v, want %d", v[1], g*1000+i)
				}
				mu.Lock()
				idents[v[0].(int64)] = true
				mu.Unlock()
				if i%50 == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("calls ran on %d distinct OS threads", len(idents))
	if len(idents) < 3 {
		t.Errorf("calls ran on %d OS threads: want several, or this test does not exercise reclaiming idle threads", len(idents))
	}
	closeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := in.Close(closeCtx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := in.CallOnThread(embed.NewCallID(), f, nil, nil, nil); !errors.Is(err, embed.ErrClosed) {
		t.Fatalf("call after Close: got %v, want ErrClosed", err)
	}
}

// TestCallOnThreadDeadThread: a thread state whose OS thread exited (a
// locked goroutine that returned) is reclaimed too.
func TestCallOnThreadDeadThread(t *testing.T) {
	r := testRuntime(t)
	in, err := r.NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mustExec(t, in, "def f():\n    return 1\n")
	f, _ := in.Func(ctx, "__main__", "f")
	done := make(chan error)
	for {
		onMain := make(chan bool)
		go func() {
			runtime.LockOSThread()
			// Go keeps the process's main thread when a goroutine locked
			// to it exits (it never ends): this test needs a thread that
			// does, so it tries again from another goroutine.
			if unix.Gettid() == unix.Getpid() {
				runtime.UnlockOSThread()
				onMain <- true
				return
			}
			onMain <- false
			// Never unlocked: this OS thread exits with the goroutine.
			_, err := in.CallOnThread(embed.NewCallID(), f, nil, nil, nil)
			done <- err
		}()
		if !<-onMain {
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	closeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := in.Close(closeCtx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestInterrupt: a pure-Python loop is interrupted by an exception raised in
// its thread; the interpreter stays usable, and a late interrupt does not
// leak into the next call.
func TestInterrupt(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	ctx := context.Background()
	mustExec(t, in, `
class Stop(BaseException):
    pass
def spin():
    while True:
        pass
def quick():
    return "quick"
`)
	spin, _ := in.Func(ctx, "__main__", "spin")
	quick, _ := in.Func(ctx, "__main__", "quick")
	stop, _ := in.Func(ctx, "__main__", "Stop")
	id := embed.NewCallID()
	errc := make(chan error, 1)
	go func() {
		_, err := in.CallOnThread(id, spin, nil, nil, nil)
		errc <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := in.Interrupt(ctx, id, stop)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the spinning call never became interruptible")
		}
		time.Sleep(time.Millisecond)
	}
	err := <-errc
	var pe *worker.PythonError
	if !errors.As(err, &pe) || pe.Type != "__main__.Stop" {
		t.Fatalf("got %v, want __main__.Stop", err)
	}
	// Interrupting a call that is not running does nothing.
	if ok, err := in.Interrupt(ctx, embed.NewCallID(), stop); ok || err != nil {
		t.Fatalf("interrupt of no call: got %v, %v", ok, err)
	}
	for range 100 {
		out, err := in.CallOnThread(embed.NewCallID(), quick, nil, nil, nil)
		if err != nil || decode(t, out) != "quick" {
			t.Fatalf("after interrupt: got %v, %v", out, err)
		}
	}
}

func decode(t testing.TB, b []byte) any {
	t.Helper()
	v, err := pymarshalDecode(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
