package embed_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"golang.org/x/sys/unix"
)

// TestCloseKeepsThreadsBounded: closing interpreters that many goroutines
// called, while other goroutines keep every P busy, reclaims the callers'
// thread states without making Go start threads round after round (the
// probes that reach idle threads stop as soon as nothing is pending).
func TestCloseKeepsThreadsBounded(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	var stop atomic.Bool
	var bg sync.WaitGroup
	for range 2 * runtime.GOMAXPROCS(0) { // Go code that never blocks
		bg.Add(1)
		go func() {
			defer bg.Done()
			x := 0
			for !stop.Load() {
				for i := range 10000 {
					x += i
				}
				runtime.Gosched()
			}
			_ = x
		}()
	}
	defer func() { stop.Store(true); bg.Wait() }()
	threads := func() int { return pprof.Lookup("threadcreate").Count() }
	const rounds, warm = 20, 3
	base, peak := 0, 0
	for round := range rounds {
		in, err := r.NewInterpreter(embed.InterpreterConfig{})
		if err != nil {
			t.Fatal(err)
		}
		// Sleeping now and then (in C, without the GIL) makes Go move the
		// callers across threads, so that several hold thread states.
		mustExec(t, in, "import time\ndef f(x):\n    if x % 20 == 0:\n        time.sleep(0.002)\n    return x\n")
		f, err := in.Func(ctx, "__main__", "f")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 100 {
					if _, err := in.CallOnThread(embed.NewCallID(), f, mustMarshal(t, []any{g*1000 + i}), nil, nil); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		held := in.ThreadStates()
		closeStart := time.Now()
		if err := in.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if n := in.ThreadStates(); n != 0 {
			t.Fatalf("round %d: %d thread states left after Close", round, n)
		}
		n := threads()
		switch {
		case round < warm:
			base = max(base, n)
		default:
			peak = max(peak, n)
		}
		t.Logf("round %d: %d thread states reclaimed in %v; Go's threads: %d", round, held, time.Since(closeStart).Round(time.Millisecond), n)
	}
	// Earlier probing sent one probe per Go thread at once, and grew this
	// to hundreds of threads within 20 rounds.
	if limit := base + 16 + 4*runtime.GOMAXPROCS(0); peak > limit {
		t.Fatalf("Go's threads grew from %d to %d over %d closes (limit %d)", base, peak, rounds-warm, limit)
	}
}

// TestCloseReapsStateOfThreadBusyElsewhere: a thread state held by a thread
// that is inside a long call of another interpreter's handler is deleted by
// Close without waiting for that call (the thread is bound to the other
// interpreter's state by then).
func TestCloseReapsStateOfThreadBusyElsewhere(t *testing.T) {
	ctx := context.Background()
	a, b := newInterp(t, embed.InterpreterConfig{}), newInterp(t, embed.InterpreterConfig{})
	defer b.Close(ctx)
	mustExec(t, a, "def f():\n    return 1\n")
	// slow tells the test (through a pipe) that it runs, then waits in C
	// (without the GIL) until the test writes to another pipe.
	mustExec(t, b, "import os\ndef slow(fd, rfd):\n    os.write(fd, b'x')\n    os.read(rfd, 1)\n    return 2\n")
	rr, rw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	defer rw.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	fa, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	fb, err := b.Func(ctx, "__main__", "slow")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // both calls on one OS thread
		defer runtime.UnlockOSThread()
		if _, err := a.CallOnThread(embed.NewCallID(), fa, nil, nil, nil); err != nil {
			done <- err
			pw.Close() // the test's Read ends
			return
		}
		_, err := b.CallOnThread(embed.NewCallID(), fb, mustMarshal(t, []any{int(pw.Fd()), int(rr.Fd())}), nil, nil)
		done <- err
	}()
	if _, err := pr.Read(make([]byte, 1)); err != nil {
		t.Fatalf("%v (%v)", err, <-done)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.Close(cctx); err != nil {
		t.Fatalf("Close while the thread is busy in another interpreter: %v", err)
	}
	if n := a.ThreadStates(); n != 0 {
		t.Fatalf("thread states after Close: %d", n)
	}
	rw.Write([]byte{1}) // only now may the other call end
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestReleaseThread: a thread that called an interpreter and is then
// locked for long (as home threads and attached Threads are) releases its
// thread state when it says so: the interpreter can close while the thread
// stays locked.
func TestReleaseThread(t *testing.T) {
	ctx := context.Background()
	a := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, a, "def f():\n    return 1\n")
	f, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	released, hold := make(chan error), make(chan struct{})
	defer close(hold)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if _, err := a.CallOnThread(embed.NewCallID(), f, nil, nil, nil); err != nil {
			released <- err
			return
		}
		embed.ReleaseThread()
		released <- nil
		<-hold // locked and parked: no probe can run here
	}()
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.Close(cctx); err != nil {
		t.Fatal(err)
	}
}

// TestAttachReleasesThread: attaching a Thread (which locks the caller's
// thread) leaves no thread state of other interpreters that only that
// thread could delete, so they can close while the Thread is attached.
func TestAttachReleasesThread(t *testing.T) {
	ctx := context.Background()
	a, b := newInterp(t, embed.InterpreterConfig{}), newInterp(t, embed.InterpreterConfig{})
	mustExec(t, a, "def f():\n    return 1\n")
	f, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	attached, detach, detached := make(chan error), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(detached)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if _, err := a.CallOnThread(embed.NewCallID(), f, nil, nil, nil); err != nil {
			attached <- err
			return
		}
		th, err := b.Attach()
		attached <- err
		if err == nil {
			<-detach
			th.Close()
		}
	}()
	if err := <-attached; err != nil {
		t.Fatal(err)
	}
	defer func() { close(detach); <-detached }() // before b closes
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.Close(cctx); err != nil {
		t.Fatal(err)
	}
}

// TestReleaseSkipsBusyInterpreter: releasing a thread does not wait for an
// interpreter whose GIL another thread holds in C (on 3.12+, where each has
// its own GIL: that thread state stays until the interpreter closes), and
// the interpreter still closes once the thread is unlocked again.
func TestReleaseSkipsBusyInterpreter(t *testing.T) {
	ctx := context.Background()
	a, b := newInterp(t, embed.InterpreterConfig{}), newInterp(t, embed.InterpreterConfig{})
	// hold() sleeps in C with the GIL held (a PyDLL call keeps it).
	mustExec(t, a, "import ctypes, os\nlib = ctypes.PyDLL(None)\ndef f():\n    return 1\ndef hold(fd):\n    os.write(fd, b'x')\n    lib.usleep(1500000)\n    return 2\n")
	f, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	hold, err := a.Func(ctx, "__main__", "hold")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	holding := make(chan error, 1)
	called, attached, detach, detached := make(chan error, 1), make(chan error), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(detached)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_, err := a.CallOnThread(embed.NewCallID(), f, nil, nil, nil)
		called <- err
		if err != nil {
			return
		}
		if _, err := pr.Read(make([]byte, 1)); err != nil { // hold() runs
			attached <- err
			return
		}
		th, err := b.Attach() // releases this thread: on 3.12+ without deleting a's state
		if err == nil && testRuntime(t).OwnGIL() && a.ThreadStates() != 2 {
			// It waited for a's GIL and deleted this thread's state.
			err = fmt.Errorf("a's thread states after Attach: %d, want 2 (this thread's and the holder's)", a.ThreadStates())
			th.Close()
			attached <- err
			return
		}
		attached <- err
		if err == nil {
			<-detach
			th.Close()
		}
	}()
	if err := <-called; err != nil {
		t.Fatal(err)
	}
	go func() { // only now: the call above must not wait for hold()
		_, err := a.CallOnThread(embed.NewCallID(), hold, mustMarshal(t, []any{int(pw.Fd())}), nil, nil)
		holding <- err
	}()
	if err := <-attached; err != nil {
		<-holding
		t.Fatal(err)
	}
	close(detach)
	<-detached
	if err := <-holding; err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.Close(cctx); err != nil {
		t.Fatal(err)
	}
}

// TestClosePinnedThreadBusyAtRelease: a thread released (and locked for
// good) while an interpreter it called was busy in C keeps no thread state
// that blocks that interpreter's Close.
func TestClosePinnedThreadBusyAtRelease(t *testing.T) {
	ctx := context.Background()
	a := testInterpNoCleanup(t)
	f, hold, pr, pw := holdFuncs(t, a)
	called, released, park := make(chan error, 1), make(chan error, 1), make(chan struct{})
	defer close(park)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		_, err := a.CallOnThread(embed.NewCallID(), f, nil, nil, nil)
		called <- err
		if err != nil {
			return
		}
		if _, err := pr.Read(make([]byte, 1)); err != nil { // hold() runs
			released <- err
			return
		}
		embed.ReleaseThread()
		released <- nil
		<-park // locked and parked for the rest of the test
	}()
	if err := <-called; err != nil {
		t.Fatal(err)
	}
	holding := make(chan error, 1)
	go func() {
		_, err := a.CallOnThread(embed.NewCallID(), hold, mustMarshal(t, []any{int(pw.Fd())}), nil, nil)
		holding <- err
	}()
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if err := <-holding; err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.Close(cctx); err != nil {
		t.Fatalf("Close with a released thread parked: %v", err)
	}
}

// TestCloseWithAttachedThreadThatCalledIt: a goroutine with a Thread
// attached to one interpreter that calls another one, then goes on with
// its Thread and parks, does not keep the other from closing.
func TestCloseWithAttachedThreadThatCalledIt(t *testing.T) {
	ctx := context.Background()
	a := testInterpNoCleanup(t)
	b := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, a, "def f():\n    return 1\n")
	f, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	ready, park, parked := make(chan error, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(parked)
		th, err := b.Attach()
		if err != nil {
			ready <- err
			return
		}
		defer th.Close()
		if _, err := a.CallOnThread(embed.NewCallID(), f, nil, nil, nil); err != nil {
			ready <- err
			return
		}
		_, err = th.Eval("1 + 1") // the Thread goes on
		ready <- err
		<-park
	}()
	defer func() { close(park); <-parked }() // before b closes
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := a.Close(cctx); err != nil {
		t.Fatalf("Close with an attached Thread that called it: %v", err)
	}
}

// TestExitedThreadDeletesItsStates: a thread that exits (its goroutine
// ended while locked to it) deletes its thread states as it exits, on
// itself, rather than leaving them for Close to delete from another thread.
func TestExitedThreadDeletesItsStates(t *testing.T) {
	ctx := context.Background()
	a := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, a, "def f():\n    return 1\n")
	f, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		lockNonMainThread() // never unlocked: Go ends the thread with the goroutine
		_, err := a.CallOnThread(embed.NewCallID(), f, nil, nil, nil)
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for a.ThreadStates() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("thread states of an exited thread: %d, want 0", a.ThreadStates())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdFuncs defines f() and hold(fd) in in: hold writes a byte to fd and
// then sleeps 300 ms in C holding the GIL (a PyDLL call keeps it).
func holdFuncs(t *testing.T, in *embed.Interpreter) (f, hold *embed.Func, pr, pw *os.File) {
	t.Helper()
	mustExec(t, in, "import ctypes, os\nlib = ctypes.PyDLL(None)\ndef f():\n    return 1\ndef hold(fd):\n    os.write(fd, b'x')\n    lib.usleep(300000)\n    return 2\n")
	ctx := context.Background()
	var err error
	if f, err = in.Func(ctx, "__main__", "f"); err != nil {
		t.Fatal(err)
	}
	if hold, err = in.Func(ctx, "__main__", "hold"); err != nil {
		t.Fatal(err)
	}
	if pr, pw, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close(); pw.Close() })
	return f, hold, pr, pw
}

// testInterpNoCleanup is an interpreter the test closes itself (a failed
// Close is the failure the test looks for); a cleanup ends it if the test
// stops early.
func testInterpNoCleanup(t *testing.T) *embed.Interpreter {
	t.Helper()
	in, err := testRuntime(t).NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = in.Close(ctx) // a no-op when the test closed it
	})
	return in
}

// holdGIL runs code in in on its home thread that, holding in's GIL (a
// PyDLL call keeps it), blocks in read(2) until release is called. It
// returns once the GIL is held.
func holdGIL(t *testing.T, in *embed.Interpreter) (release func()) {
	t.Helper()
	sig, err := newPipe(t)
	if err != nil {
		t.Fatal(err)
	}
	gate, err := newPipe(t)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- in.Exec(context.Background(), fmt.Sprintf(
			"import os, ctypes\nlib = ctypes.PyDLL(None)\nbuf = ctypes.create_string_buffer(1)\nos.write(%d, b'x')\nlib.read(%d, buf, 1)\n",
			sig[1].Fd(), gate[0].Fd()))
	}()
	if _, err := sig[0].Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			gate[1].Write([]byte{1})
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

func newPipe(t *testing.T) ([2]*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return [2]*os.File{}, err
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return [2]*os.File{r, w}, nil
}

// TestExitingThreadDoesNotWaitForReaper: a thread that exits while a reaper
// holds one of its thread states (waiting for that interpreter's GIL, held
// in C) leaves it to the reaper and exits.
func TestExitingThreadDoesNotWaitForReaper(t *testing.T) {
	ctx := context.Background()
	a := testInterpNoCleanup(t)
	b := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, a, "def f():\n    return 1\n")
	mustExec(t, b, "def g():\n    return 2\n")
	fa, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	fb, err := b.Func(ctx, "__main__", "g")
	if err != nil {
		t.Fatal(err)
	}
	tidc, exit := make(chan int, 1), make(chan struct{})
	go func() {
		lockNonMainThread() // never unlocked: Go ends the thread with the goroutine
		if _, err := a.CallOnThread(embed.NewCallID(), fa, nil, nil, nil); err != nil {
			t.Error(err)
		}
		// Calling b last leaves a's state reapable by another thread.
		if _, err := b.CallOnThread(embed.NewCallID(), fb, nil, nil, nil); err != nil {
			t.Error(err)
		}
		tidc <- unix.Gettid()
		<-exit
	}()
	tid := <-tidc
	if !testRuntime(t).OwnGIL() {
		// 3.11: a thread keeps one interpreter's thread state at a time
		// (calling b deleted a's), so there is nothing left to reap.
		if n := a.ThreadStates(); n != 0 {
			t.Fatalf("3.11: a's thread states after the thread called b: %d, want 0", n)
		}
		close(exit)
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := a.Close(ctx); err != nil {
			t.Fatal(err)
		}
		return
	}
	release := holdGIL(t, a)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := a.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close while a's GIL is held: got %v, want DeadlineExceeded", err) // the reaper waits
	}
	close(exit)                                  // Go ends the thread
	deadline := time.Now().Add(10 * time.Second) // hang guard
	for threadExists(tid) {
		if time.Now().After(deadline) {
			t.Fatalf("thread %d has not exited while the reaper waits for the GIL", tid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	long, cancel2 := context.WithTimeout(ctx, 20*time.Second)
	defer cancel2()
	if err := a.Close(long); err != nil {
		t.Fatal(err)
	}
	if n := a.ThreadStates(); n != 0 {
		t.Fatalf("thread states after Close: %d", n)
	}
}

func threadExists(tid int) bool {
	_, err := os.Stat("/proc/self/task/" + strconv.Itoa(tid))
	return err == nil
}

// TestReleaseDoesNotWaitForOtherGILs: releasing a thread (Attach does) does
// not wait for the GIL of another interpreter, even the main interpreter's,
// which shared-GIL sub-interpreters hold while they run.
func TestReleaseDoesNotWaitForOtherGILs(t *testing.T) {
	ctx := context.Background()
	a, b := newInterp(t, embed.InterpreterConfig{}), newInterp(t, embed.InterpreterConfig{})
	s := newInterp(t, embed.InterpreterConfig{SharedGIL: true})
	mustExec(t, a, "def f():\n    return 1\n")
	fa, err := a.Func(ctx, "__main__", "f")
	if err != nil {
		t.Fatal(err)
	}
	called, attach, attached := make(chan error, 1), make(chan struct{}), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_, err := a.CallOnThread(embed.NewCallID(), fa, nil, nil, nil) // a's state is bound
		called <- err
		if err != nil {
			return
		}
		<-attach
		th, err := b.Attach()
		if err == nil {
			th.Close()
		}
		attached <- err
	}()
	if err := <-called; err != nil {
		t.Fatal(err)
	}
	if !testRuntime(t).OwnGIL() {
		// 3.11: every interpreter shares one GIL, so releasing waits for
		// it; it deletes the bound state (a's) instead of moving the
		// binding.
		close(attach)
		if err := <-attached; err != nil {
			t.Fatal(err)
		}
		if n := a.ThreadStates(); n != 0 {
			t.Fatalf("3.11: a's thread states after Attach: %d, want 0", n)
		}
		return
	}
	// a's first (its ctypes import, an extension's first load in an
	// interpreter, takes the main interpreter's GIL for a moment on 3.13+).
	holdA := holdGIL(t, a)
	release := holdGIL(t, s) // the main interpreter's GIL
	close(attach)
	select {
	case err := <-attached:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // hang guard
		t.Fatal("Attach waited for another interpreter's GIL")
	}
	holdA()
	release()
}

// TestConcurrentCloseAfterThreadExit: two Closes of one interpreter at
// once, after a thread that called it exited while its thread-local data
// still held an object with a slow finalizer: both return, and nothing is
// deleted twice.
func TestConcurrentCloseAfterThreadExit(t *testing.T) {
	for round := range 3 {
		in := testInterpNoCleanup(t)
		mustExec(t, in, "import threading, time\nloc = threading.local()\nclass Slow:\n    def __del__(self):\n        time.sleep(0.1)\ndef keep():\n    loc.x = Slow()\n")
		f, err := in.Func(context.Background(), "__main__", "keep")
		if err != nil {
			t.Fatal(err)
		}
		tidc := make(chan int, 1)
		go func() {
			lockNonMainThread() // never unlocked: Go ends the thread with the goroutine
			if _, err := in.CallOnThread(embed.NewCallID(), f, nil, nil, nil); err != nil {
				t.Error(err)
			}
			tidc <- unix.Gettid()
		}()
		tid := <-tidc
		deadline := time.Now().Add(20 * time.Second) // hang guard
		for threadExists(tid) {
			if time.Now().After(deadline) {
				t.Fatalf("thread %d did not exit", tid)
			}
			time.Sleep(time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // hang guard
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- in.Close(ctx) }()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("round %d: Close: %v", round, err)
			}
		}
		cancel()
	}
}

// lockNonMainThread locks the goroutine to an OS thread other than the
// process's main thread: Go never ends the main thread (a goroutine that
// exits locked to it wedges it instead), and tests of thread exit need one
// that ends.
func lockNonMainThread() {
	for {
		runtime.LockOSThread()
		if unix.Gettid() != os.Getpid() {
			return
		}
		runtime.UnlockOSThread()
		time.Sleep(time.Millisecond) // let another thread take this goroutine
	}
}
