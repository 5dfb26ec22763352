package embed_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
	"golang.org/x/sys/unix"
)

// The concurrency torture test: goroutines do at random everything the
// package allows at once (calls on the home thread and on callers' threads,
// pinned goroutines, attached Threads, interrupts, bursts with collections
// between them, creating interpreters, closing them once or several times
// at once, while calls run and while handler threads run) and check the
// package's promises after each step and at the end. Some scenarios have
// flags below to turn them off when chasing another.
//
// Flags (the 3.11 child of TestVersionMatrix does not get them: it reads
// the environment, which it inherits):
//
//	-torture.seed     SNAKEPIT_TORTURE_SEED   seed (0: from the clock)
//	-torture.steps    SNAKEPIT_TORTURE_STEPS  steps over all workers
//	-torture.workers  SNAKEPIT_TORTURE_WORKERS goroutines taking steps
//	-torture.concurrent-close SNAKEPIT_TORTURE_CONCURRENT_CLOSE=1
//	                  close one interpreter from several goroutines at once
//	                  (off: a Close deleting an exited thread's states may
//	                  run into the interpreter another Close has ended)
//	-torture.pinned   SNAKEPIT_TORTURE_PINNED=1
//	                  call from goroutines pinned after ReleaseThread (off:
//	                  a busy interpreter's state they keep can hold up its
//	                  Close until its ctx ends)
//	-torture.dead-threads SNAKEPIT_TORTURE_DEAD_THREADS=1
//	                  let pinned goroutines end with their OS thread
//	                  (off: concurrent Closes then delete a dead thread's
//	                  thread states twice)
//	-torture.joinable-daemon SNAKEPIT_TORTURE_JOINABLE_DAEMON=1
//	                  also expect _thread.start_joinable_thread(daemon=True)
//	                  refused (3.13+; not refused yet)
//
// SNAKEPIT_TORTURE=long multiplies the default number of steps (make chaos).
var (
	tortureSeed    = flag.Int64("torture.seed", envInt("SNAKEPIT_TORTURE_SEED", int64(0)), "seed of TestTorture (0: from the clock)")
	tortureSteps   = flag.Int("torture.steps", envInt("SNAKEPIT_TORTURE_STEPS", defaultTortureSteps()), "steps of TestTorture, over all workers")
	tortureWorkers = flag.Int("torture.workers", envInt("SNAKEPIT_TORTURE_WORKERS", 8), "goroutines taking TestTorture's steps")
	// tortureConcurrentClose closes one interpreter from several
	// goroutines at once (on by default; 0 turns it off).
	tortureConcurrentClose = flag.Bool("torture.concurrent-close", envInt("SNAKEPIT_TORTURE_CONCURRENT_CLOSE", 1) != 0, "TestTorture: close one interpreter from several goroutines at once")
	// torturePinned adds steps that call from goroutines locked to their
	// OS thread after ReleaseThread (on by default).
	torturePinned = flag.Bool("torture.pinned", envInt("SNAKEPIT_TORTURE_PINNED", 1) != 0, "TestTorture: call from goroutines pinned after ReleaseThread")
	// tortureDeadThreads lets pinned goroutines end with their OS thread
	// (still locked; with -torture.pinned): the thread deletes its thread
	// states as it exits (on by default).
	tortureDeadThreads = flag.Bool("torture.dead-threads", envInt("SNAKEPIT_TORTURE_DEAD_THREADS", 1) != 0, "TestTorture: let pinned goroutines end with their OS thread")
	// tortureJoinableDaemon adds daemon threads started with
	// _thread.start_joinable_thread (3.13+) to the daemon threads a step
	// expects refused (on by default).
	tortureJoinableDaemon = flag.Bool("torture.joinable-daemon", envInt("SNAKEPIT_TORTURE_JOINABLE_DAEMON", 1) != 0, "TestTorture: expect _thread.start_joinable_thread(daemon=True) refused")
)

func envInt[T int | int64](name string, def T) T {
	if s := os.Getenv(name); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return T(n)
		}
	}
	return def
}

func defaultTortureSteps() int {
	if os.Getenv("SNAKEPIT_TORTURE") == "long" {
		return 6000
	}
	return 400
}

const (
	// closeSlack bounds how long Close may take beyond its ctx: it returns
	// at its ctx's end but for the cgo calls it is in at that moment (a
	// sweep or a wake-up of the home thread, waiting at most for a GIL
	// that handlers here hold for milliseconds). Generous: a hang guard on
	// a loaded 2-core machine under -race, not a timing claim.
	closeSlack = 20 * time.Second
	// settleTimeout bounds the wait at the end for goroutines, thread
	// states and C buffers to return to their baselines.
	settleTimeout = time.Minute
	// runTimeout bounds the whole run; past it the test fails with the
	// seed and every goroutine's stack.
	runTimeout = 10 * time.Minute
	// finalRounds and finalCloseTimeout bound the closing of what is left
	// at the end: rounds of one Close of each remaining interpreter at
	// once, each with that ctx.
	finalRounds       = 2
	finalCloseTimeout = 20 * time.Second
	// maxOpen is the most interpreters open at once.
	maxOpen = 6
	// burstSize is the number of concurrent calls in a burst.
	burstSize = 100
	// heapSlackBase and heapSlackPerInterp bound how far the C heap in
	// use may stay above its baseline once everything is closed: some
	// memory stays with CPython for the life of the process (interned
	// strings, type caches, freed blocks the allocator keeps; about 3 KiB
	// an interpreter on 3.11, none on 3.14). A call buffer holds 68 KiB,
	// so bursts leaking them pass this quickly. glibc's count covers
	// malloc only: CPython's own arenas (mmap) show in RSS, logged only.
	heapSlackBase      = 8 << 20
	heapSlackPerInterp = 32 << 10
)

// tortureCode is the handlers of every interpreter of the run.
const tortureCode = `
import threading, time
class Stop(BaseException):
    pass
def echo(x):
    return x
def nap(s):
    time.sleep(s)
    return s
def spin(limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        pass
    return "spun"
def linger(s):
    threading.Thread(target=time.sleep, args=(s,)).start()
    return s
def daemon(how):
    import _thread
    if how == 0:
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    elif how == 1:
        _thread.start_new_thread(time.sleep, (5,))
    elif hasattr(_thread, "start_joinable_thread"):
        _thread.start_joinable_thread(lambda: time.sleep(5), daemon=True)
    else:
        raise RuntimeError("no start_joinable_thread before 3.13")
`

// tInterp is an interpreter of the run with its handlers.
type tInterp struct {
	n                                     int // index in the run, for messages
	in                                    *embed.Interpreter
	echo, nap, spin, linger, daemon, stop *embed.Func
	closeMu                               sync.Mutex  // one Close at a time, without -torture.concurrent-close
	closing                               atomic.Bool // a Close has begun
	gone                                  atomic.Bool // a Close returned nil
}

func (ti *tInterp) String() string { return fmt.Sprintf("interpreter #%d (id %d)", ti.n, ti.in.ID()) }

// tWorld is the state the workers share.
type tWorld struct {
	t    *testing.T
	rt   *embed.Runtime
	seed int64
	base int // rt.Interpreters() before the run

	mu   sync.Mutex
	ins  []*tInterp // every interpreter of the run, closed ones too
	next int

	started atomic.Int64 // NewInterpreter calls begun
	gone    atomic.Int64 // interpreters a Close returned nil for
	closes  atomic.Int64
	timeout atomic.Int64 // Closes that returned at their ctx's end
	failed  atomic.Bool

	bg sync.WaitGroup // goroutines the steps start
}

func (w *tWorld) fail(format string, args ...any) {
	w.failed.Store(true)
	w.t.Helper()
	w.t.Errorf(format, args...)
}

func (w *tWorld) add(ti *tInterp) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ti.n = w.next
	w.next++
	w.ins = append(w.ins, ti)
}

// pick returns an interpreter: mostly an open one, sometimes any.
func (w *tWorld) pick(r *rand.Rand) *tInterp {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ins) == 0 {
		return nil
	}
	if r.Intn(8) > 0 {
		var open []*tInterp
		for _, ti := range w.ins {
			if !ti.closing.Load() {
				open = append(open, ti)
			}
		}
		if len(open) > 0 {
			return open[r.Intn(len(open))]
		}
	}
	return w.ins[r.Intn(len(w.ins))]
}

func (w *tWorld) open() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ti := range w.ins {
		if !ti.closing.Load() {
			n++
		}
	}
	return n
}

// callErr checks the error of a call on ti: nil unless a Close had
// returned nil before the call began (wasGone), ErrClosed once a Close has
// begun, or a Python error of a type in want.
func (w *tWorld) callErr(ti *tInterp, wasGone bool, what string, err error, want ...string) {
	w.t.Helper()
	switch {
	case err == nil:
		if wasGone {
			w.fail("%s on closed %s: got success, want ErrClosed", what, ti)
		}
	case errors.Is(err, embed.ErrClosed):
		if !ti.closing.Load() {
			w.fail("%s on %s: got %v before any Close", what, ti, err)
		}
	default:
		var pe *worker.PythonError
		if errors.As(err, &pe) {
			for _, typ := range want {
				if pe.Type == typ {
					return
				}
			}
		}
		w.fail("%s on %s: got %v, want success or ErrClosed", what, ti, err)
	}
}

func (w *tWorld) checkEcho(ti *tInterp, wasGone bool, what string, out []byte, err error, want int64) {
	w.t.Helper()
	w.callErr(ti, wasGone, what, err)
	if err != nil {
		return
	}
	v, derr := pymarshal.Decode(out)
	if derr != nil || v != want {
		w.fail("%s on %s: got %v (%v), want %d", what, ti, v, derr, want)
	}
}

func marshalArgs(args ...any) []byte {
	b, err := pymarshal.Marshal(pymarshal.Tuple(args))
	if err != nil {
		panic(err)
	}
	return b
}

// newInterp creates an interpreter with the handlers, if fewer than maxOpen
// are open.
func (w *tWorld) newInterp(r *rand.Rand) {
	if w.open() >= maxOpen {
		return
	}
	w.started.Add(1)
	cfg := embed.InterpreterConfig{SharedGIL: r.Intn(3) == 0}
	in, err := w.rt.NewInterpreter(cfg)
	if err != nil {
		w.fail("NewInterpreter: %v", err)
		w.gone.Add(1) // never was
		return
	}
	ti := &tInterp{in: in}
	ctx := context.Background()
	err = in.Exec(ctx, tortureCode)
	for name, p := range map[string]**embed.Func{"echo": &ti.echo, "nap": &ti.nap, "spin": &ti.spin, "linger": &ti.linger, "daemon": &ti.daemon, "Stop": &ti.stop} {
		if err == nil {
			*p, err = in.Func(ctx, "__main__", name)
		}
	}
	if err != nil {
		w.fail("set up interpreter: %v", err)
		if cerr := in.Close(ctx); cerr == nil {
			w.gone.Add(1)
		}
		return
	}
	w.add(ti)
}

// closeOp closes ti from n goroutines at once, each with its own ctx, and
// checks each Close returns within its ctx plus closeSlack, and what a nil
// return promises.
func (w *tWorld) closeOp(r *rand.Rand, ti *tInterp, n int) {
	timeouts := []time.Duration{0, time.Millisecond, 20 * time.Millisecond, 200 * time.Millisecond, 2 * time.Second}
	if !*tortureConcurrentClose {
		n = 1
	}
	ti.closing.Store(true)
	var wg sync.WaitGroup
	for range n {
		d := timeouts[r.Intn(len(timeouts))]
		wg.Go(func() { w.closeOnce(ti, d) })
	}
	wg.Wait()
}

func (w *tWorld) closeOnce(ti *tInterp, d time.Duration) {
	if !*tortureConcurrentClose {
		ti.closeMu.Lock()
		defer ti.closeMu.Unlock()
	}
	w.closes.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- ti.in.Close(ctx) }()
	var err error
	select {
	case err = <-errc:
	case <-time.After(d + closeSlack):
		w.fail("Close of %s with a ctx of %v: still blocked after %v", ti, d, d+closeSlack)
		err = <-errc
	}
	if took := time.Since(start); took > d+closeSlack {
		w.fail("Close of %s with a ctx of %v took %v, want at most %v", ti, d, took, d+closeSlack)
	}
	switch {
	case err == nil:
		w.checkGone(ti)
	case errors.Is(err, context.DeadlineExceeded):
		w.timeout.Add(1)
	case strings.Contains(err.Error(), "still attached"):
	default:
		w.fail("Close of %s: got %v, want nil, a deadline or attached Threads", ti, err)
	}
}

// checkGone checks what Close returning nil promises: the interpreter and
// its home thread are gone, its callers' thread states deleted, and calls
// fail with ErrClosed.
func (w *tWorld) checkGone(ti *tInterp) {
	if ti.gone.CompareAndSwap(false, true) {
		w.gone.Add(1)
	}
	// Read gone before and started after the live count: live counts
	// interpreters created and not yet ended; every one counted in gone
	// has ended, and every one created was counted in started before.
	g := w.gone.Load()
	live := w.rt.Interpreters()
	s := w.started.Load()
	if int64(live) > int64(w.base)+s-g {
		w.fail("after Close of %s returned nil: got %d interpreters alive, want at most %d (%d started, %d gone)", ti, live, int64(w.base)+s-g, s, g)
	}
	if n := ti.in.ThreadStates(); n != 0 {
		w.fail("after Close of %s returned nil: got %d thread states, want 0", ti, n)
	}
	if _, err := ti.in.CallOnThread(embed.NewCallID(), ti.echo, marshalArgs(int64(1)), nil, nil); !errors.Is(err, embed.ErrClosed) {
		w.fail("CallOnThread after Close of %s returned nil: got %v, want ErrClosed", ti, err)
	}
	if _, err := ti.in.Eval(context.Background(), "1"); !errors.Is(err, embed.ErrClosed) {
		w.fail("Eval after Close of %s returned nil: got %v, want ErrClosed", ti, err)
	}
	if err := ti.in.Close(context.Background()); err != nil {
		w.fail("Close of closed %s: got %v, want nil", ti, err)
	}
}

// step takes one random step.
func (w *tWorld) step(r *rand.Rand) {
	ti := w.pick(r)
	if ti == nil || r.Intn(12) == 0 {
		w.newInterp(r)
		return
	}
	ctx := context.Background()
	x := r.Int63n(1 << 40)
	wasGone := ti.gone.Load()
	switch op := r.Intn(100); {
	case op < 22: // calls on callers' threads
		for range 1 + r.Intn(20) {
			out, err := ti.in.CallOnThread(embed.NewCallID(), ti.echo, marshalArgs(x), nil, nil)
			w.checkEcho(ti, wasGone, "CallOnThread", out, err, x)
		}
	case op < 30: // calls on the home thread
		out, err := ti.in.CallRaw(ctx, ti.echo, marshalArgs(x), nil, nil)
		w.checkEcho(ti, wasGone, "CallRaw", out, err, x)
		v, err := ti.in.Call(ctx, "__main__", "echo", []any{x}, nil)
		w.callErr(ti, wasGone, "Call", err)
		if err == nil && v != x {
			w.fail("Call on %s: got %v, want %d", ti, v, x)
		}
	case op < 34: // a short sleep in C, without the GIL
		_, err := ti.in.CallOnThread(embed.NewCallID(), ti.nap, marshalArgs(0.001*float64(r.Intn(20))), nil, nil)
		w.callErr(ti, wasGone, "CallOnThread(nap)", err)
	case op < 42: // a goroutine pinned to its thread
		if *torturePinned {
			w.pinned(r.Int63())
		} else {
			w.newInterp(r)
		}
	case op < 50: // an attached Thread
		w.attach(r.Int63())
	case op < 55: // an interrupted call
		w.interrupt(ti, r)
	case op < 59: // a burst of calls, then a collection
		w.burst(ti, x)
	case op < 66: // a handler thread that outlives its call
		_, err := ti.in.CallOnThread(embed.NewCallID(), ti.linger, marshalArgs(0.01*float64(1+r.Intn(20))), nil, nil)
		w.callErr(ti, wasGone, "CallOnThread(linger)", err)
		if r.Intn(2) == 0 {
			w.closeOp(r, ti, 1+r.Intn(2))
		}
	case op < 69: // daemon threads are refused in every sub-interpreter
		how := r.Intn(2)
		if *tortureJoinableDaemon && r.Intn(3) == 0 {
			how = 2
		}
		_, err := ti.in.CallRaw(ctx, ti.daemon, marshalArgs(int64(how)), nil, nil)
		if err == nil && !ti.gone.Load() {
			w.fail("daemon thread in %s: got success, want a RuntimeError", ti)
		}
		w.callErr(ti, wasGone, "CallRaw(daemon)", err, "RuntimeError")
	case op < 75: // calls racing Close
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Go(func() {
				for i := range 10 {
					y := x + int64(g*100+i)
					out, err := ti.in.CallOnThread(embed.NewCallID(), ti.echo, marshalArgs(y), nil, nil)
					w.checkEcho(ti, wasGone, "CallOnThread racing Close", out, err, y)
				}
			})
		}
		w.closeOp(r, ti, 1+r.Intn(2))
		wg.Wait()
	case op < 88: // Close, sometimes from several goroutines at once
		w.closeOp(r, ti, 1+r.Intn(3))
	default:
		w.newInterp(r)
	}
}

// pinned runs calls from a goroutine locked to its thread after
// ReleaseThread, which then unlocks or ends with its thread.
func (w *tWorld) pinned(seed int64) {
	done := make(chan struct{})
	w.bg.Go(func() {
		defer close(done)
		r := rand.New(rand.NewSource(seed))
		runtime.LockOSThread()
		embed.ReleaseThread()
		for range 1 + r.Intn(6) {
			ti := w.pick(r)
			if ti == nil {
				break
			}
			x := r.Int63n(1 << 40)
			wasGone := ti.gone.Load()
			out, err := ti.in.CallOnThread(embed.NewCallID(), ti.echo, marshalArgs(x), nil, nil)
			w.checkEcho(ti, wasGone, "pinned CallOnThread", out, err, x)
		}
		if *tortureDeadThreads && r.Intn(2) == 0 {
			if unix.Gettid() == os.Getpid() {
				// Go never ends the main thread (it wedges it): like any
				// thread kept locked, it must release its thread states.
				embed.ReleaseThread()
			}
			return // still locked: Go ends the thread
		}
		embed.ReleaseThread()
		runtime.UnlockOSThread()
	})
	<-done
}

// attach attaches a Thread, calls on it, and closes it.
func (w *tWorld) attach(seed int64) {
	r := rand.New(rand.NewSource(seed))
	ti := w.pick(r)
	if ti == nil {
		return
	}
	wasGone := ti.gone.Load()
	th, err := ti.in.Attach()
	if err != nil {
		w.callErr(ti, wasGone, "Attach", err)
		return
	}
	defer th.Close()
	for range 1 + r.Intn(8) {
		x := r.Int63n(1 << 40)
		switch r.Intn(3) {
		case 0:
			out, err := th.CallRaw(ti.echo, marshalArgs(x), nil, nil)
			w.checkEcho(ti, wasGone, "Thread.CallRaw", out, err, x)
		case 1:
			v, err := th.Call(ti.echo, []any{x}, nil)
			if err != nil || v != x {
				w.fail("Thread.Call on %s: got %v, %v, want %d", ti, v, err, x)
			}
		case 2:
			v, err := th.Eval("6 * 7")
			if err != nil || v != int64(42) {
				w.fail("Thread.Eval on %s: got %v, %v, want 42", ti, v, err)
			}
		}
	}
	if r.Intn(4) == 0 { // Close fails while the Thread is attached
		w.closeOp(r, ti, 1)
	}
}

// interrupt runs a spinning call and interrupts it.
func (w *tWorld) interrupt(ti *tInterp, r *rand.Rand) {
	id := embed.NewCallID()
	wasGone := ti.gone.Load()
	errc := make(chan error, 1)
	w.bg.Go(func() {
		_, err := ti.in.CallOnThread(id, ti.spin, marshalArgs(2.0), nil, nil)
		errc <- err
	})
	ctx := context.Background()
	interrupted := false
	var err error
	for !interrupted {
		ok, ierr := ti.in.Interrupt(ctx, id, ti.stop)
		if ierr != nil {
			w.callErr(ti, wasGone, "Interrupt", ierr)
			err = <-errc
			break
		}
		if ok {
			interrupted = true
			err = <-errc
			break
		}
		select {
		case err = <-errc: // ended first (closed, or spun out)
			w.callErr(ti, wasGone, "CallOnThread(spin)", err)
			return
		case <-time.After(time.Millisecond):
		}
	}
	if interrupted {
		var pe *worker.PythonError
		if !errors.As(err, &pe) || pe.Type != "__main__.Stop" {
			w.fail("interrupted call on %s: got %v, want __main__.Stop", ti, err)
		}
		return
	}
	w.callErr(ti, wasGone, "CallOnThread(spin)", err)
	if r.Intn(2) == 0 {
		w.closeOp(r, ti, 1)
	}
}

// burst makes burstSize calls at once on ti, then collects garbage.
func (w *tWorld) burst(ti *tInterp, x int64) {
	wasGone := ti.gone.Load()
	var wg sync.WaitGroup
	for i := range burstSize {
		wg.Go(func() {
			y := x + int64(i)
			out, err := ti.in.CallOnThread(embed.NewCallID(), ti.echo, marshalArgs(y), nil, nil)
			w.checkEcho(ti, wasGone, "burst CallOnThread", out, err, y)
		})
	}
	wg.Wait()
	runtime.GC()
}

// cHeapInUse returns the bytes the C allocator has handed out and not got
// back (glibc's mallinfo2, called through ctypes in the main interpreter:
// the test files here use no cgo), or ok false where it is not available
// (another libc, or a sanitizer's allocator, which glibc does not see).
func cHeapInUse(t *testing.T, rt *embed.Runtime) (n int64, ok bool) {
	ctx := context.Background()
	if err := rt.Main().Exec(ctx, heapProbeCode); err != nil {
		t.Logf("C heap: mallinfo2 through ctypes: %v", err)
		return 0, false
	}
	v, err := rt.Main().Eval(ctx, "_snakepit_torture_heap()")
	if err != nil {
		t.Logf("C heap: mallinfo2 through ctypes: %v", err)
		return 0, false
	}
	n, _ = v.(int64)
	return n, n > 0
}

// heapProbeCode defines, in the main interpreter, a function returning
// glibc's count of bytes in use (small blocks and mmapped ones), or -1.
const heapProbeCode = `
def _snakepit_torture_heap():
    import ctypes
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return -1
    class mallinfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = mallinfo2
    mi = libc.mallinfo2()
    return mi.uordblks + mi.hblkhd
`

// rss returns the resident set size, for the log.
func rss() int {
	p, err := procfs.Self()
	if err != nil {
		return -1
	}
	st, err := p.Stat()
	if err != nil {
		return -1
	}
	return st.ResidentMemory()
}

// settle polls cond, collecting garbage, until it holds or settleTimeout
// passes.
func settle(cond func() bool) bool {
	deadline := time.After(settleTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		runtime.GC()
		select {
		case <-deadline:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// TestTorture: see the comment at the top of this file. On failure it
// prints the seed and the command that replays it; the order in which the
// workers' steps meet still varies from run to run.
func TestTorture(t *testing.T) {
	rt := testRuntime(t)
	seed := *tortureSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	steps, workers := *tortureSteps, max(*tortureWorkers, 1)
	t.Logf("Python %s, seed %d, %d steps over %d workers", rt.Version().Full, seed, steps, workers)
	defer func() {
		if t.Failed() {
			t.Logf("replay: go test -race -run '^TestTorture$' ./embed/ -torture.seed=%d -torture.steps=%d -torture.workers=%d (3.11: SNAKEPIT_TORTURE_SEED=%d with -run '^(TestTorture|TestVersionMatrix)$')", seed, steps, workers, seed)
		}
	}()

	// Baselines, after a warm-up that makes the one-time allocations
	// (the first interpreter, the call-buffer pool, ctypes).
	warm := &tWorld{t: t, rt: rt, base: rt.Interpreters()}
	warm.newInterp(rand.New(rand.NewSource(seed)))
	if len(warm.ins) != 1 {
		t.Fatal("warm-up: no interpreter")
	}
	warm.burst(warm.ins[0], 1)
	if err := warm.ins[0].in.Close(context.Background()); err != nil {
		t.Fatalf("warm-up Close: %v", err)
	}
	heapOK := false
	var heap0 int64
	settled := settle(func() bool { return embed.LiveCallBufs() == 0 })
	if _, heapOK = cHeapInUse(t, rt); heapOK {
		runtime.GC()
		heap0, _ = cHeapInUse(t, rt)
	}
	bufs0 := embed.LiveCallBufs()
	goroutines0 := runtime.NumGoroutine()
	rss0 := rss()
	t.Logf("baseline: %d interpreters, %d goroutines, %d call buffers (settled: %v), C heap %d B (mallinfo2: %v), RSS %d B", rt.Interpreters(), goroutines0, bufs0, settled, heap0, heapOK, rss0)

	w := &tWorld{t: t, rt: rt, seed: seed, base: rt.Interpreters()}
	watchdog := time.AfterFunc(runTimeout, func() {
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "TestTorture: seed %d still running after %v; goroutines:\n%s\n", seed, runTimeout, buf)
		panic(fmt.Sprintf("TestTorture: seed %d: hung", seed))
	})
	defer watchdog.Stop()

	start := time.Now()
	var wg sync.WaitGroup
	var taken atomic.Int64
	for i := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewSource(seed + int64(i)*7919))
			for taken.Add(1) <= int64(steps) && !w.failed.Load() {
				w.step(r)
			}
		})
	}
	wg.Wait()
	w.bg.Wait()

	// Everything closed: the remaining interpreters all at once, each
	// from one goroutine. A Close may return at its ctx's end while
	// another interpreter's home thread holds a thread state of its
	// interpreter (see -torture.pinned): as documented, a later Close
	// finishes the job, so a second round is allowed, and counted.
	w.mu.Lock()
	ins := append([]*tInterp(nil), w.ins...)
	w.mu.Unlock()
	var again []*tInterp
	for round := range finalRounds {
		var cw sync.WaitGroup
		for _, ti := range ins {
			if ti.gone.Load() {
				continue
			}
			if round > 0 {
				again = append(again, ti)
			}
			ti.closing.Store(true)
			cw.Go(func() { w.closeOnce(ti, finalCloseTimeout) })
		}
		cw.Wait()
	}
	for _, ti := range ins {
		if !ti.gone.Load() {
			t.Errorf("final Close of %s: did not end it in %d rounds", ti, finalRounds)
		}
	}
	if len(again) > 0 {
		t.Logf("final Close: %d interpreter(s) ended only in a later round: %v", len(again), again)
	}
	t.Logf("%d steps in %v: %d interpreters, %d Close calls (%d at their ctx's end)", steps, time.Since(start).Round(time.Millisecond), len(ins), w.closes.Load(), w.timeout.Load())

	if got := rt.Interpreters(); got != w.base {
		t.Errorf("got %d interpreters alive, want %d", got, w.base)
	}
	for _, ti := range ins {
		if n := ti.in.ThreadStates(); n != 0 {
			t.Errorf("%s: got %d thread states, want 0", ti, n)
		}
	}
	if !settle(func() bool { return embed.LiveCallBufs() <= bufs0 }) {
		t.Errorf("got %d call buffers holding C memory, want at most %d", embed.LiveCallBufs(), bufs0)
	}
	if !settle(func() bool { return runtime.NumGoroutine() <= goroutines0 }) {
		buf := make([]byte, 1<<20)
		t.Errorf("got %d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), goroutines0, buf[:runtime.Stack(buf, true)])
	}
	if heapOK {
		limit := heap0 + heapSlackBase + heapSlackPerInterp*int64(len(ins))
		var heap int64
		settle(func() bool { heap, _ = cHeapInUse(t, rt); return heap <= limit })
		t.Logf("C heap: %d B, baseline %d B (limit %d B); RSS %d B, baseline %d B", heap, heap0, limit, rss(), rss0)
		if heap > limit {
			t.Errorf("C heap in use: got %d B, want at most %d B (baseline %d B, %d interpreters)", heap, limit, heap0, len(ins))
		}
	} else {
		t.Logf("C heap not measurable here (no mallinfo2 for this allocator); RSS %d B, baseline %d B", rss(), rss0)
	}
}
