package embed

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/snakepit-go/snakepit/internal/pin"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
	"golang.org/x/sys/unix"
)

// outBufSize is the per-thread buffer results are marshalled into; larger
// results take one malloc and copy.
const outBufSize = 64 << 10

// lifecycleMu serialises the creation of interpreters: CPython 3.12 needs
// creation serialised, and doing the same everywhere costs nothing at the
// rate interpreters come and go. Ending is not serialised: it may wait for
// the interpreter's threads for any time.
var lifecycleMu sync.Mutex

// InterpreterConfig configures a sub-interpreter.
type InterpreterConfig struct {
	// Paths are prepended to the interpreter's sys.path, in order, after the
	// runtime's own paths (see [Load]).
	Paths []string
	// SharedGIL makes the sub-interpreter share the main interpreter's GIL
	// even where it could have its own (Python ≥ 3.12). Zero value: own GIL
	// where supported. On 3.11 the GIL is always shared.
	SharedGIL bool
}

// Interpreter is the main interpreter or a sub-interpreter, with its home OS
// thread. Its methods are safe for concurrent use; they run on the home
// thread one at a time. A Python call cannot be interrupted yet: a context
// bounds the wait for the home thread, not the Python code once it started.
type Interpreter struct {
	rt     *Runtime
	isMain bool
	ownGIL bool
	id     int64
	home   *C.PyThreadState // the home thread's thread state; used only there
	hbuf   *C.char          // home thread's result buffer
	hres   *C.spk_result    // home thread's result slot
	ci     *C.spk_interp    // thread states callers' threads hold (CallOnThread); nil, under mu, once ended

	hostID    uintptr                           // names in to its host_call builtin (see hostTargets)
	host      atomic.Pointer[HostHandler]       // what host_call runs (SetHostHandler)
	hostNames atomic.Pointer[map[string]string] // names host_call was called with (see hostName)

	inflight atomic.Int64 // CallOnThread calls running
	closing  atomic.Bool  // closed, readable without mu
	reaping  atomic.Bool  // a reap (see reap) runs
	ending   atomic.Bool  // the home thread was asked to end the interpreter

	reqs chan func()   // work for the home thread
	done chan struct{} // closed when the home thread has ended the interpreter

	mu      sync.Mutex        // guards the fields below
	closed  bool              // Close has begun: no new work, no new Threads
	threads int               // attached Threads
	funcs   []*C.PyObject     // references held by Funcs, released at Close
	ciRefs  int               // Close calls using ci (see acquireCI)
	ciEnded bool              // the interpreter has ended: ci is freed once ciRefs is 0
	pinned  []*runtime.Pinner // memory of call payloads a view outlived, until the end
}

// acquireCI reports whether in.ci is still usable and, if so, keeps it from
// being freed until [Interpreter.releaseCI]. Concurrent Close calls use ci
// while the home thread may end the interpreter: the last of them frees it.
func (in *Interpreter) acquireCI() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.ci == nil || in.ciEnded {
		return false
	}
	in.ciRefs++
	return true
}

// releaseCI ends a use of ci begun by a successful [Interpreter.acquireCI].
func (in *Interpreter) releaseCI() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.ciRefs--
	if in.ciRefs == 0 && in.ciEnded {
		in.freeCILocked()
	}
}

// endCI marks ci ended, on the home thread after the interpreter ended, and
// frees it unless a Close still uses it.
func (in *Interpreter) endCI() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.ciEnded = true
	if in.ciRefs == 0 {
		in.freeCILocked()
	}
}

func (in *Interpreter) freeCILocked() {
	if in.ci != nil {
		C.spk_interp_free(in.ci)
		in.ci = nil
	}
}

// NewInterpreter creates a sub-interpreter on a new home OS thread: own GIL
// on Python ≥ 3.12 (unless cfg.SharedGIL), shared on 3.11. Extension modules
// that do not support sub-interpreters refuse to import in it (see
// [worker.ErrNotSubinterpreterSafe]). Close it when done: each one holds a few
// megabytes and an OS thread.
func (rt *Runtime) NewInterpreter(cfg InterpreterConfig) (*Interpreter, error) {
	return startInterpreter(rt, false, cfg)
}

// Interpreters returns how many sub-interpreters are alive, each with its
// home OS thread.
func (rt *Runtime) Interpreters() int { return int(rt.live.Load()) }

func startInterpreter(rt *Runtime, isMain bool, cfg InterpreterConfig) (*Interpreter, error) {
	in := &Interpreter{
		rt:     rt,
		isMain: isMain,
		ownGIL: !isMain && rt.OwnGIL() && !cfg.SharedGIL,
		reqs:   make(chan func()),
		done:   make(chan struct{}),
	}
	in.hostID = registerHostTarget(in)
	ready := make(chan error)
	go in.homeLoop(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	if err := in.Exec(context.Background(), bootstrapCode(append(append([]string(nil), rt.paths...), cfg.Paths...), isMain)); err != nil {
		if !isMain {
			_ = in.Close(context.Background())
		}
		return nil, fmt.Errorf("embed: bootstrap interpreter: %w", err)
	}
	if err := in.installHost(context.Background()); err != nil {
		if !isMain {
			_ = in.Close(context.Background())
		}
		return nil, fmt.Errorf("embed: bootstrap interpreter: install host_call: %w", err)
	}
	return in, nil
}

// homeLoop owns the home OS thread: it creates the interpreter there, runs
// requests, and ends the interpreter there. The goroutine stays locked to the
// thread until it returns, so Go discards the thread with it.
func (in *Interpreter) homeLoop(ready chan<- error) {
	runtime.LockOSThread()
	// This thread may have run callers of other interpreters: their thread
	// states must go now, as no probe can reach a locked thread.
	C.spk_release_thread()
	defer close(in.done)
	// Last: no Python code of the interpreter can call host_call now.
	defer unregisterHostTarget(in.hostID)
	if in.isMain {
		in.home = C.spk_new_main_tstate()
		if in.home == nil {
			ready <- errors.New("embed: cannot create a thread state for the main interpreter")
			return
		}
	} else {
		lifecycleMu.Lock()
		var cerr *C.char
		own := C.int(0)
		if in.ownGIL {
			own = 1
		}
		in.home = C.spk_new_interp(C.int(in.rt.version.Minor), own, &cerr)
		lifecycleMu.Unlock()
		if in.home == nil {
			ready <- fmt.Errorf("embed: create sub-interpreter: %s", takeCString(cerr))
			return
		}
	}
	in.id = int64(C.spk_interp_id(in.home))
	if !in.isMain {
		in.rt.live.Add(1)
		defer in.rt.live.Add(-1) // the thread ends with this goroutine
	}
	tid := unix.Gettid()
	in.rt.homes.Store(tid, in)
	defer in.rt.homes.Delete(tid)
	in.hbuf = (*C.char)(C.malloc(outBufSize))
	in.hres = (*C.spk_result)(C.calloc(1, C.sizeof_spk_result))
	in.ci = C.spk_interp_new(in.home)
	ready <- nil
	for fn := range in.reqs {
		if fn == nil { // the end request, sent by Close
			break
		}
		fn()
	}
	if n := len(in.funcs); n > 0 {
		C.spk_decref(in.home, &in.funcs[0], C.int(n))
		in.funcs = nil
	}
	// Not under lifecycleMu: ending joins the interpreter's threads and
	// runs its atexit hooks, which must not hold up other interpreters.
	C.spk_end_interp(C.int(in.rt.version.Minor), in.home)
	in.endCI()
	in.mu.Lock()
	for _, p := range in.pinned {
		p.Unpin() // no Python object is left to read it
	}
	in.pinned = nil
	in.mu.Unlock()
	C.free(unsafe.Pointer(in.hbuf))
	C.free(unsafe.Pointer(in.hres))
}

// onHome runs fn on the home thread and waits for it. If ctx ends before
// the home thread took fn, fn never runs and ctx.Err() is returned.
func (in *Interpreter) onHome(ctx context.Context, fn func(s *scope)) error {
	in.mu.Lock()
	closed := in.closed
	in.mu.Unlock()
	if closed {
		return ErrClosed
	}
	finished := make(chan struct{})
	req := func() {
		fn(&scope{in: in, ts: in.home, buf: in.hbuf, res: in.hres})
		close(finished)
	}
	select {
	case in.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-in.done:
		return ErrClosed
	}
	<-finished
	return nil
}

// ID returns CPython's interpreter id (0 for the main interpreter).
func (in *Interpreter) ID() int64 { return in.id }

// OwnGIL reports whether the interpreter has its own GIL.
func (in *Interpreter) OwnGIL() bool { return in.ownGIL }

// Runtime returns the runtime the interpreter belongs to.
func (in *Interpreter) Runtime() *Runtime { return in.rt }

// Exec runs code (statements) in the interpreter's __main__ module.
func (in *Interpreter) Exec(ctx context.Context, code string) error {
	var err error
	if herr := in.onHome(ctx, func(s *scope) { err = s.exec(code) }); herr != nil {
		return herr
	}
	return err
}

// Eval evaluates a Python expression in the interpreter's __main__ module
// and returns its value.
func (in *Interpreter) Eval(ctx context.Context, expr string) (any, error) {
	var v any
	var err error
	if herr := in.onHome(ctx, func(s *scope) { v, err = s.eval(expr) }); herr != nil {
		return nil, herr
	}
	return v, err
}

// Import imports a module in the interpreter.
func (in *Interpreter) Import(ctx context.Context, module string) error {
	var err error
	if herr := in.onHome(ctx, func(s *scope) { err = s.importModule(module) }); herr != nil {
		return herr
	}
	return err
}

// Call imports module, looks up the callable name in it and calls it with
// args and kwargs (either may be nil), returning its result.
func (in *Interpreter) Call(ctx context.Context, module, name string, args []any, kwargs map[string]any) (any, error) {
	a, kw, err := encodeArgs(args, kwargs)
	if err != nil {
		return nil, err
	}
	var out []byte
	herr := in.onHome(ctx, func(s *scope) {
		var fn *C.PyObject
		if fn, err = s.lookup(module, name); err != nil {
			return
		}
		out, err = s.call(fn, a, kw, nil)
		C.spk_decref(s.ts, &fn, 1)
	})
	if herr != nil {
		return nil, herr
	}
	if err != nil {
		return nil, err
	}
	return decodeResult(out)
}

// Func looks up module.name once and returns a handle for calling it without
// the lookup. The handle holds a reference that the interpreter releases when
// it closes.
func (in *Interpreter) Func(ctx context.Context, module, name string) (*Func, error) {
	var f *Func
	var err error
	if herr := in.onHome(ctx, func(s *scope) { f, err = s.fn(module, name) }); herr != nil {
		return nil, herr
	}
	return f, err
}

// CallFunc calls f with args and kwargs on the home thread.
func (in *Interpreter) CallFunc(ctx context.Context, f *Func, args []any, kwargs map[string]any) (any, error) {
	a, kw, err := encodeArgs(args, kwargs)
	if err != nil {
		return nil, err
	}
	out, err := in.CallRaw(ctx, f, a, kw, nil)
	if err != nil {
		return nil, err
	}
	return decodeResult(out)
}

// CallRaw calls f with marshalled arguments: args a marshalled tuple or list
// (empty for none), kwargs a marshalled dict (empty for none). The marshalled
// result is appended to dst.
func (in *Interpreter) CallRaw(ctx context.Context, f *Func, args, kwargs, dst []byte) ([]byte, error) {
	f.check(in)
	var out []byte
	var err error
	if herr := in.onHome(ctx, func(s *scope) { out, err = s.call(f.obj, args, kwargs, dst) }); herr != nil {
		return nil, herr
	}
	return out, err
}

// Close ends the sub-interpreter on its home thread and ends the thread.
// Python code running at the time finishes first: ctx bounds the wait for
// it, and for the threads that called [Interpreter.CallOnThread] to give up
// their thread states (see there). If ctx ends first, Close returns its
// error and the interpreter stays closed to new work; Close may be called
// again to finish. Once Python code has finished, ending the interpreter
// joins its non-daemon threads and runs its atexit hooks: ctx bounds that
// wait too, and if it ends first the interpreter ends in the background
// when they finish (a later Close waits for that). Ending does not hold up
// the creation of other interpreters. Close fails while Threads are attached, and for the main
// interpreter. Closing a closed interpreter is a no-op.
func (in *Interpreter) Close(ctx context.Context) error {
	if in.isMain {
		return errors.New("embed: the main interpreter cannot be closed")
	}
	in.mu.Lock()
	if in.threads > 0 {
		n := in.threads
		in.mu.Unlock()
		return fmt.Errorf("embed: close interpreter %d: %d Thread(s) still attached", in.id, n)
	}
	in.closed = true
	in.closing.Store(true)
	in.mu.Unlock()
	select {
	case <-in.done:
		return nil
	default:
	}
	if in.ending.Load() {
		return in.waitEnded(ctx)
	}
	for in.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("embed: close interpreter %d: a call is still running: %w", in.id, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
	if !in.acquireCI() { // the home thread has ended the interpreter
		select {
		case <-in.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	C.spk_interp_close(in.ci)
	err := in.reclaimThreadStates(ctx)
	in.releaseCI()
	if err != nil {
		return err
	}
	select {
	case in.reqs <- nil:
		in.ending.Store(true)
	case <-in.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	return in.waitEnded(ctx)
}

// waitEnded waits, bounded by ctx, for the home thread to end the
// interpreter once asked to. Ending joins the interpreter's non-daemon
// threads and runs its atexit hooks and finalizers, which may take any
// time: if ctx ends first, the interpreter goes on ending in the
// background, and a later Close waits for it again.
func (in *Interpreter) waitEnded(ctx context.Context) error {
	select {
	case <-in.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embed: close interpreter %d: still ending (waiting for its threads, atexit hooks or finalizers): %w", in.id, ctx.Err())
	}
}

// reclaimThreadStates waits until every thread state that callers' threads
// created for this interpreter is deleted. Most are deleted at once by a
// reaper (see reap). The one each thread is bound to (the last it used, on
// 3.12+) must be deleted by that thread: a thread sweeps at its next call
// into the shim and when a call returns; threads that exit delete theirs as
// they exit. Threads that never call again are reached with probes.
//
// Threads that run Go code take drifting probes from the global run queue:
// each locks onto its thread for a moment, sweeps it and leaves. Idle
// threads (parked, with no goroutine) are reached by a walk: a probe locks
// onto its thread, sweeps it and holds it, so the next probe goes to
// another thread; Go hands out idle threads last-in first-out, so the walk
// goes down them one by one and stops as soon as nothing is pending. Only
// when every idle thread is held does Go start a new thread for a probe:
// the walk stops there, and later walks of this Close stop short of that
// depth (threads that went idle since are on top), so waiting for a thread
// that is busy does not keep adding threads.
func (in *Interpreter) reclaimThreadStates(ctx context.Context) error {
	tids := make([]C.pid_t, 64)
	pending := func() int { return int(C.spk_interp_pending(in.ci, &tids[0], C.int(len(tids)))) }
	fixedDepth, explored := 0, 0
	for wave := 0; ; wave++ {
		n := pending()
		if n == 0 {
			return nil
		}
		sleeping := false
		var dead []C.pid_t
		// Only where /proc shows this process's threads (it may be another
		// pid namespace's, or hide them) does a missing thread mean a dead one.
		procOK := threadState(unix.Gettid()) != 0
		for _, tid := range tids[:min(n, len(tids))] {
			switch threadState(int(tid)) {
			case 0: // gone
				if procOK {
					dead = append(dead, tid)
				}
			case 'R':
			default:
				sleeping = true
			}
		}
		in.reap(ctx, dead)
		if pending() == 0 {
			return nil
		}
		driftProbes(ctx)
		in.sweepHomes(ctx, tids[:min(pending(), len(tids))])
		if pending() == 0 {
			return nil
		}
		// Walk when a thread that holds a thread state sleeps (it may be
		// idle), after the first waves, which leave threads inside a call
		// a moment to return (they sweep then). After a walk that made Go
		// start a thread, walks stop short of that depth, but for a few
		// exploring ones when waiting drags on.
		if wave >= 2 && sleeping {
			depth := fixedDepth
			if explore := wave%8 == 7 && explored < 3; explore || depth == 0 {
				if explore {
					explored++
				}
				depth = pprof.Lookup("threadcreate").Count() + 4
			}
			done, newAt := walkIdleThreads(ctx, pending, depth)
			if done {
				return nil
			}
			if newAt > 0 {
				fixedDepth = max(newAt-1, 1)
			}
		}
		select {
		case <-ctx.Done():
			if n := pending(); n == 0 {
				return nil
			}
			return fmt.Errorf("embed: close interpreter %d: %d thread state(s) still held by busy threads: %w", in.id, n, ctx.Err())
		case <-time.After(waveDelay(wave)):
		}
	}
}

// sweepHomes asks the home threads of other interpreters among tids to
// sweep: a home thread is locked, so no probe runs there, and it may hold a
// thread state it cached before it became one (see spk_release_thread).
func (in *Interpreter) sweepHomes(ctx context.Context, tids []C.pid_t) {
	for _, tid := range tids {
		v, ok := in.rt.homes.Load(int(tid))
		if !ok || v.(*Interpreter) == in {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond) // it may be busy
		_ = v.(*Interpreter).onHome(hctx, func(*scope) { C.spk_sweep_thread() })
		cancel()
	}
}

// threadState returns the state letter of thread tid of this process from
// /proc ('R' running, 'S' sleeping, ...), or 0 if it no longer exists.
// Only a thread that is surely gone gets 0: its thread states are then
// deleted from another thread.
func threadState(tid int) byte {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		return '?' // unknown (out of file descriptors?): not gone
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2]
	}
	return '?'
}

// waveDelay is the pause after reclaim wave n: short at first, then 250 ms,
// and after a minute 5 s (a thread busy in C for that long may stay so).
func waveDelay(n int) time.Duration {
	switch {
	case n < 8:
		return time.Millisecond << n
	case n < 250:
		return 250 * time.Millisecond
	}
	return 5 * time.Second
}

// driftProbes has threads that run Go code sweep their thread states. It
// waits for them until ctx ends (a sweep waits for a closing interpreter's
// GIL, which on a shared GIL another interpreter's C code may hold).
func driftProbes(ctx context.Context) {
	var wg sync.WaitGroup
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.Gosched() // into the global run queue
			runtime.LockOSThread()
			C.spk_sweep_thread()
			runtime.UnlockOSThread()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// walkSem makes walks take turns: walks at once would hold more threads
// between them than there are idle ones.
var walkSem = make(chan struct{}, 1)

// walkIdleThreads walks down the idle threads, holding at most depth, and
// reports whether nothing is pending afterwards, and if a probe landed on
// a thread that did not exist when the walk began (Go had no idle thread
// left), how many threads the walk held then.
func walkIdleThreads(ctx context.Context, pending func() int, depth int) (done bool, newAt int) {
	select {
	case walkSem <- struct{}{}:
	case <-ctx.Done():
		return pending() == 0, 0
	}
	defer func() { <-walkSem }()
	existing := map[int]bool{}
	if tasks, err := os.ReadDir("/proc/self/task"); err == nil {
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				existing[tid] = true
			}
		}
	}
	release := make(chan struct{})
	swept := make(chan int, 1) // a probe that comes late does not block
	var wg sync.WaitGroup
	defer func() {
		close(release)
		if ctx.Err() == nil {
			wg.Wait()
		}
	}()
	for held := 0; held < depth; {
		if pending() == 0 {
			return true, 0
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			C.spk_sweep_thread()
			swept <- unix.Gettid()
			<-release // hold this thread: the next probe runs on another
		}()
		var tid int
		select {
		case tid = <-swept:
		case <-ctx.Done():
			return pending() == 0, 0
		}
		held++
		if !existing[tid] {
			return pending() == 0, held
		}
	}
	return pending() == 0, 0
}

// reap deletes the thread states of in that their threads neither use nor
// are bound to, and those of the dead threads, from a thread of its own
// (spk_reap). It waits for that until ctx ends: reaping waits for the
// interpreter's GIL, which a thread of it stuck in C may hold; the reaper
// then goes on in the background, keeping ci alive, and later waves skip
// reaping while it runs.
func (in *Interpreter) reap(ctx context.Context, dead []C.pid_t) {
	if !in.reaping.CompareAndSwap(false, true) {
		return
	}
	if !in.acquireCI() {
		in.reaping.Store(false)
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer in.reaping.Store(false)
		defer in.releaseCI()
		var p *C.pid_t
		if len(dead) > 0 {
			p = &dead[0]
		}
		C.spk_reap(in.ci, p, C.int(len(dead)))
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// ThreadStates returns how many thread states callers' threads hold for
// this interpreter (one per OS thread that called CallOnThread).
func (in *Interpreter) ThreadStates() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.ci == nil { // ended
		return 0
	}
	var tid C.pid_t
	return int(C.spk_interp_pending(in.ci, &tid, 0))
}

// ReleaseThread leaves the calling OS thread with no thread state that only
// it could delete among those it keeps for calls to sub-interpreters
// ([Interpreter.CallOnThread]). Call it right after runtime.LockOSThread in
// a goroutine that keeps its thread for long, and again after calls it makes
// there: an interpreter that closes waits for the thread state each thread
// is bound to (the one it used last) to be deleted by that thread, and
// nothing else can run on a locked thread to do it. The others Close deletes
// itself. On 3.12+ it takes, for a moment, the GIL of an interpreter kept
// for that, which runs no code; on 3.11 it may wait for the shared GIL. The
// library does so for its own long-locked threads.
func ReleaseThread() { C.spk_release_thread() }

func init() { pin.SetHooks(ReleaseThread, func() { C.spk_sweep_thread() }) }

// NewCallID returns an id for [Interpreter.CallOnThread], unique in the process.
func NewCallID() uint64 { return callIDs.Add(1) }

var callIDs atomic.Uint64

// callBuf is C memory for one call's arguments and result; pooled so the
// fast path neither allocates nor passes Go pointers to C (which cgo checks).
type callBuf struct {
	buf *C.char // result
	arg *C.char // arguments, when they fit
	res *C.spk_result
}

const argBufSize = 4 << 10

// callBufs holds callBufs between calls. A sync.Pool drops entries at
// garbage collections; each callBuf carries a cleanup that frees its C
// memory when the collector reclaims it.
var callBufs = sync.Pool{New: func() any { return newCallBuf() }}

// callBufMem is the C memory of one callBuf, freed by its cleanup.
type callBufMem struct {
	buf, arg *C.char
	res      *C.spk_result
}

func newCallBuf() *callBuf {
	m := callBufMem{
		buf: (*C.char)(C.malloc(outBufSize)),
		arg: (*C.char)(C.malloc(argBufSize)),
		res: (*C.spk_result)(C.calloc(1, C.sizeof_spk_result)),
	}
	cb := &callBuf{buf: m.buf, arg: m.arg, res: m.res}
	liveCallBufs.Add(1)
	runtime.AddCleanup(cb, freeCallBufMem, m)
	return cb
}

// liveCallBufs counts callBufs whose C memory is not freed yet.
var liveCallBufs atomic.Int64

func freeCallBufMem(m callBufMem) {
	liveCallBufs.Add(-1)
	C.free(unsafe.Pointer(m.buf))
	C.free(unsafe.Pointer(m.arg))
	C.free(unsafe.Pointer(m.res))
}

// CallOnThread calls f on the calling goroutine's OS thread, without a
// handoff: the goroutine is locked to its thread for the call, and the
// thread keeps a thread state of this interpreter for later calls (created
// on its first call, deleted by the thread itself when the interpreter
// closes). id tags the call for [Interpreter.Interrupt]; use [NewCallID].
// Arguments and result are marshalled as for [Interpreter.CallRaw]. Many
// goroutines may call at once; on Python ≥ 3.12 each interpreter still runs
// one at a time (its GIL), different interpreters in parallel.
func (in *Interpreter) CallOnThread(id uint64, f *Func, args, kwargs, dst []byte) ([]byte, error) {
	return in.callOnThread(id, f, args, kwargs, nil, dst)
}

// CallOnThreadBuffers is [Interpreter.CallOnThread] with out-of-band
// payloads: args must be a marshalled tuple whose last item is a
// placeholder, which f receives as a tuple of read-only memoryviews of bufs
// (on 3.11, bytes copies of them). The views are valid during the call
// only: views the function keeps (or exports, e.g. through
// numpy.frombuffer) stay readable, and the memory of bufs then stays pinned
// until the interpreter ends; new views of them cannot be made after the
// call. bufs must not be written to until the call returns (nor, where a
// view outlived the call, afterwards if the function's later reads of them
// matter).
func (in *Interpreter) CallOnThreadBuffers(id uint64, f *Func, args []byte, bufs [][]byte, dst []byte) ([]byte, error) {
	if len(args) == 0 {
		return nil, errors.New("embed: CallOnThreadBuffers needs a marshalled tuple of arguments")
	}
	return in.callOnThread(id, f, args, nil, bufs, dst)
}

func (in *Interpreter) callOnThread(id uint64, f *Func, args, kwargs []byte, bufs [][]byte, dst []byte) ([]byte, error) {
	f.check(in)
	in.inflight.Add(1)
	defer in.inflight.Add(-1)
	if in.closing.Load() {
		return nil, ErrClosed
	}
	cb := callBufs.Get().(*callBuf)
	defer callBufs.Put(cb)
	var ap, kp *C.char
	if len(args)+len(kwargs) <= argBufSize {
		staged := unsafe.Slice((*byte)(unsafe.Pointer(cb.arg)), argBufSize)
		copy(staged, args)
		copy(staged[len(args):], kwargs)
		ap = cb.arg
		kp = (*C.char)(unsafe.Add(unsafe.Pointer(cb.arg), len(args)))
	} else {
		if len(args) > 0 {
			ap = (*C.char)(unsafe.Pointer(&args[0]))
		}
		if len(kwargs) > 0 {
			kp = (*C.char)(unsafe.Pointer(&kwargs[0]))
		}
	}
	var (
		cbufs    *C.spk_buf
		retained *C.uchar
		pins     []runtime.Pinner
	)
	if len(bufs) > 0 {
		n := len(bufs)
		cbufs = (*C.spk_buf)(C.calloc(C.size_t(n), C.sizeof_spk_buf))
		retained = (*C.uchar)(C.calloc(C.size_t(n), 1))
		defer C.free(unsafe.Pointer(cbufs))
		defer C.free(unsafe.Pointer(retained))
		pins = make([]runtime.Pinner, n)
		cs := unsafe.Slice(cbufs, n)
		for i, b := range bufs {
			if len(b) == 0 {
				continue
			}
			pins[i].Pin(&b[0])
			cs[i].ptr = (*C.char)(unsafe.Pointer(&b[0]))
			cs[i].len = C.Py_ssize_t(len(b))
		}
	}
	runtime.LockOSThread()
	C.spk_fcall(in.ci, C.uint64_t(id), f.obj, ap, C.Py_ssize_t(len(args)), kp, C.Py_ssize_t(len(kwargs)),
		cbufs, C.int(len(bufs)), retained, cb.buf, outBufSize, cb.res)
	var held []byte
	if cb.res.held != nil {
		held = takeHeld(cb.res, dst) // on this thread, which holds the result
	}
	runtime.UnlockOSThread()
	if len(bufs) > 0 {
		kept := unsafe.Slice(retained, len(bufs))
		for i := range pins {
			if kept[i] != 0 {
				in.keepPinned(&pins[i])
			} else {
				pins[i].Unpin()
			}
		}
	}
	if held != nil {
		return held, nil
	}
	s := scope{in: in, buf: cb.buf, res: cb.res}
	return s.take(dst)
}

// takeHeld appends to dst the reply for a large bytes-like result that r
// holds in Python's memory: a bytes object (the reply) whose content is the
// marshalled result, copied once from Python's memory; then it releases
// the buffer.
func takeHeld(r *C.spk_result, dst []byte) []byte {
	n := int(r.out_len)
	out := slices.Grow(dst, n+10)
	out = append(out, 's', 0, 0, 0, 0, 's', 0, 0, 0, 0)
	h := out[len(out)-10:]
	binary.LittleEndian.PutUint32(h[1:], uint32(n+5))
	binary.LittleEndian.PutUint32(h[6:], uint32(n))
	out = append(out, unsafe.Slice((*byte)(unsafe.Pointer(r.out)), n)...)
	C.spk_release_held(r)
	return out
}

// keepPinned keeps the memory p pins until the interpreter has ended: a
// view of it outlived its call.
func (in *Interpreter) keepPinned(p *runtime.Pinner) {
	in.mu.Lock()
	in.pinned = append(in.pinned, p)
	in.mu.Unlock()
}

// Interrupt raises the exception exc (an exception class, looked up as a
// Func) in the thread running call id, if that call is still running in
// Python. It runs on the home thread and needs the interpreter's GIL: it
// waits up to one switch interval (5 ms) for pure-Python code, and blocks
// as long as C code holds the GIL. ctx bounds only the wait for the home
// thread to start. It reports whether the exception was set, or the call
// holds its interrupts (see _snakepit_embed.hold_interrupt in the package
// doc): either way no further try is needed.
func (in *Interpreter) Interrupt(ctx context.Context, id uint64, exc *Func) (bool, error) {
	exc.check(in)
	var ok bool
	if err := in.onHome(ctx, func(s *scope) { ok = C.spk_interrupt(in.ci, C.uint64_t(id), exc.obj) != 0 }); err != nil {
		return false, err
	}
	return ok, nil
}

// Func is a callable of one interpreter, looked up once.
type Func struct {
	in   *Interpreter
	obj  *C.PyObject
	name string
}

// Name returns "module.name" as looked up.
func (f *Func) Name() string { return f.name }

func (f *Func) check(in *Interpreter) {
	if f.in != in {
		panic(fmt.Sprintf("embed: Func %s of interpreter %d used in interpreter %d", f.name, f.in.id, in.id))
	}
}

// Thread is a thread state of an interpreter on the OS thread of the
// goroutine that called [Interpreter.Attach]. Its calls run right there, with
// no handoff to another thread. It must be used only by that goroutine,
// which stays locked to its OS thread until [Thread.Close].
type Thread struct {
	in     *Interpreter
	ts     *C.PyThreadState
	buf    *C.char
	res    *C.spk_result
	tid    int
	closed bool
}

// Attach locks the calling goroutine to its OS thread and creates a thread
// state of the interpreter on it. The goroutine must call [Thread.Close]
// before it exits or unlocks its thread, and must not attach a second
// Thread of the same interpreter while this one is open.
func (in *Interpreter) Attach() (*Thread, error) {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil, ErrClosed
	}
	in.threads++
	in.mu.Unlock()
	runtime.LockOSThread()
	C.spk_release_thread() // see homeLoop
	ts := C.spk_new_tstate(in.home)
	if ts == nil {
		runtime.UnlockOSThread()
		in.mu.Lock()
		in.threads--
		in.mu.Unlock()
		return nil, errors.New("embed: cannot create a thread state")
	}
	return &Thread{
		in:  in,
		ts:  ts,
		buf: (*C.char)(C.malloc(outBufSize)),
		res: (*C.spk_result)(C.calloc(1, C.sizeof_spk_result)),
		tid: unix.Gettid(),
	}, nil
}

func (t *Thread) scope() *scope {
	if t.closed {
		panic("embed: use of a closed Thread")
	}
	return &scope{in: t.in, ts: t.ts, buf: t.buf, res: t.res}
}

// Interpreter returns the interpreter the thread belongs to.
func (t *Thread) Interpreter() *Interpreter { return t.in }

// Exec runs code in the interpreter's __main__ module on this thread.
func (t *Thread) Exec(code string) error { return t.scope().exec(code) }

// Eval evaluates expr in the interpreter's __main__ module on this thread.
func (t *Thread) Eval(expr string) (any, error) { return t.scope().eval(expr) }

// Func looks up module.name, as [Interpreter.Func] does.
func (t *Thread) Func(module, name string) (*Func, error) { return t.scope().fn(module, name) }

// Call calls f with args and kwargs on this thread.
func (t *Thread) Call(f *Func, args []any, kwargs map[string]any) (any, error) {
	a, kw, err := encodeArgs(args, kwargs)
	if err != nil {
		return nil, err
	}
	out, err := t.CallRaw(f, a, kw, nil)
	if err != nil {
		return nil, err
	}
	return decodeResult(out)
}

// CallRaw is the fast path: marshalled arguments in, the marshalled result
// appended to dst (see [Interpreter.CallRaw]), in one cgo call that takes and
// releases the interpreter's GIL on this thread.
func (t *Thread) CallRaw(f *Func, args, kwargs, dst []byte) ([]byte, error) {
	f.check(t.in)
	return t.scope().call(f.obj, args, kwargs, dst)
}

// Close deletes the thread state (on this OS thread, as CPython requires) and
// unlocks the goroutine from its thread. Calling it from another OS thread
// panics; calling it twice is a no-op.
func (t *Thread) Close() {
	if t.closed {
		return
	}
	if tid := unix.Gettid(); tid != t.tid {
		panic(fmt.Sprintf("embed: Thread attached on OS thread %d closed from OS thread %d", t.tid, tid))
	}
	t.closed = true
	C.spk_delete_tstate(t.ts)
	C.free(unsafe.Pointer(t.buf))
	C.free(unsafe.Pointer(t.res))
	runtime.UnlockOSThread()
	t.in.mu.Lock()
	t.in.threads--
	t.in.mu.Unlock()
}

// scope is a thread state on the current OS thread with its result buffer.
// Every method is one cgo call that holds the GIL only inside C.
type scope struct {
	in  *Interpreter
	ts  *C.PyThreadState
	buf *C.char
	res *C.spk_result
}

func (s *scope) exec(code string) error {
	cs := C.CString(code)
	defer C.free(unsafe.Pointer(cs))
	C.spk_exec(s.ts, cs, 0, s.buf, outBufSize, s.res)
	_, err := s.take(nil)
	return err
}

func (s *scope) eval(expr string) (any, error) {
	cs := C.CString(expr)
	defer C.free(unsafe.Pointer(cs))
	C.spk_exec(s.ts, cs, 1, s.buf, outBufSize, s.res)
	out, err := s.take(nil)
	if err != nil {
		return nil, err
	}
	return decodeResult(out)
}

func (s *scope) lookup(module, attr string) (*C.PyObject, error) {
	cm := C.CString(module)
	ca := C.CString(attr)
	defer C.free(unsafe.Pointer(cm))
	defer C.free(unsafe.Pointer(ca))
	obj := C.spk_lookup(s.ts, cm, ca, s.res)
	if _, err := s.take(nil); err != nil {
		return nil, err
	}
	return obj, nil
}

func (s *scope) importModule(module string) error {
	obj, err := s.lookup(module, "")
	if err != nil {
		return err
	}
	C.spk_decref(s.ts, &obj, 1)
	return nil
}

func (s *scope) fn(module, name string) (*Func, error) {
	obj, err := s.lookup(module, name)
	if err != nil {
		return nil, err
	}
	s.in.mu.Lock()
	s.in.funcs = append(s.in.funcs, obj)
	s.in.mu.Unlock()
	return &Func{in: s.in, obj: obj, name: module + "." + name}, nil
}

func (s *scope) call(fn *C.PyObject, args, kwargs, dst []byte) ([]byte, error) {
	var ap, kp *C.char
	if len(args) > 0 {
		ap = (*C.char)(unsafe.Pointer(&args[0]))
	}
	if len(kwargs) > 0 {
		kp = (*C.char)(unsafe.Pointer(&kwargs[0]))
	}
	C.spk_call(s.ts, fn, ap, C.Py_ssize_t(len(args)), kp, C.Py_ssize_t(len(kwargs)), s.buf, outBufSize, s.res)
	return s.take(dst)
}

// take turns the result slot into Go values and frees what C allocated.
func (s *scope) take(dst []byte) ([]byte, error) {
	r := s.res
	// Free what C allocated; most results allocate nothing (no cgo call).
	if r.out_heap != 0 || r.etype != nil || r.emsg != nil || r.etb != nil {
		defer C.spk_result_free(r)
	}
	switch r.status {
	case C.SPK_OK:
		n := int(r.out_len)
		src := s.buf
		if r.out_heap != 0 {
			src = r.out
		}
		if r.out_raw != 0 {
			if cap(dst)-len(dst) < n+5 {
				dst = append(make([]byte, 0, len(dst)+n+5), dst...)
			}
			return pymarshal.AppendBytes(dst, unsafe.Slice((*byte)(unsafe.Pointer(src)), n)), nil
		}
		if n == 0 {
			return dst, nil
		}
		return append(dst, unsafe.Slice((*byte)(unsafe.Pointer(src)), n)...), nil
	case C.SPK_EPYTHON:
		return nil, &worker.PythonError{
			Type:      C.GoString(r.etype),
			Message:   C.GoString(r.emsg),
			Traceback: C.GoString(r.etb),
		}
	case C.SPK_EUNSERIALIZABLE:
		return nil, &worker.NotSerializableError{What: "result", Detail: C.GoString(r.emsg)}
	case C.SPK_ECLOSED:
		return nil, ErrClosed
	case C.SPK_EBADARGS:
		return nil, &worker.NotSerializableError{What: "argument", Detail: C.GoString(r.emsg)}
	default:
		return nil, fmt.Errorf("embed: %s", C.GoString(r.emsg))
	}
}

func encodeArgs(args []any, kwargs map[string]any) (a, kw []byte, err error) {
	if len(args) > 0 {
		if a, err = pymarshal.Marshal(pymarshal.Tuple(args)); err != nil {
			return nil, nil, &worker.NotSerializableError{What: "argument", Detail: err.Error(), Err: err}
		}
	}
	if len(kwargs) > 0 {
		if kw, err = pymarshal.Marshal(kwargs); err != nil {
			return nil, nil, &worker.NotSerializableError{What: "argument", Detail: err.Error(), Err: err}
		}
	}
	return a, kw, nil
}

func decodeResult(out []byte) (any, error) {
	v, err := pymarshal.Decode(out)
	if err != nil {
		return nil, &worker.NotSerializableError{What: "result", Detail: err.Error(), Err: err}
	}
	return v, nil
}

// bootstrapCode prepares a new interpreter: the helper module the C side
// uses to name values marshal cannot carry (snakepit's own _wire.py), the
// guards against acting on the host process (snakepit's _hostguard.py:
// os._exit, fork on 3.11, faulthandler, signal masks; on 3.11 daemon
// threads in sub-interpreters, which abort the host when the interpreter
// ends), and the extra sys.path entries.
func bootstrapCode(paths []string, isMain bool) string {
	if paths == nil {
		paths = []string{}
	}
	// JSON strings and lists are valid Python literals.
	p, _ := json.Marshal(paths)
	src, _ := json.Marshal(python.WireSource())
	guard, _ := json.Marshal(python.HostGuardSource())
	sub := "True"
	if isMain {
		sub = "False"
	}
	return `import sys as _s, types as _t
_m = _t.ModuleType("_snakepit_embed")
exec(` + string(src) + `, _m.__dict__)
_s.modules["_snakepit_embed"] = _m
_g = {"__name__": "_snakepit_hostguard"}
exec(` + string(guard) + `, _g)
_g["install"](sub_interpreter=` + sub + `, legacy_threads=` + sub + ` and _s.version_info < (3, 12))
_s.path[0:0] = ` + string(p) + `
del _s, _t, _m, _g
`
}
