// Package gil is the thread profile: each worker is a CPython
// sub-interpreter inside the Go process, with its own GIL on Python ≥ 3.12,
// so workers run Python in parallel on every core with no IPC. It implements
// [worker.Worker].
//
// # The call path
//
// A call runs on the calling goroutine's own OS thread: the thread keeps a
// thread state of the worker's interpreter (created on its first call), and
// a call is one cgo call that takes the interpreter's GIL, runs the
// dispatcher and the handler, and releases it. No other OS thread is woken,
// which on a virtual machine costs tens of microseconds (see
// BenchmarkNoopHome for that alternative). A call whose context can end runs
// on a helper goroutine (a Go-level switch, not an OS thread wake-up) so the
// caller can return at its deadline while the handler is being stopped.
//
// # Deadlines
//
// When a call's context ends, Call returns the context's error at once. In
// the background the worker marks the handler's ctx cancelled and raises
// snakepit.Cancelled in it (an asynchronous exception, raised within one
// switch interval in pure-Python code) unless the handler has already seen
// ctx.cancelled() return true, and stops by itself; a handler that stops within
// [Config.InterruptGrace] leaves the worker usable. A handler that does not
// (blocked in C code) makes the worker declare itself dead: its interpreter
// and threads cannot be reclaimed while the C code runs, so the pool should
// replace it.
//
// # Host functions
//
// A handler calls the Go functions of [Config.Host] through ctx.host (see
// package host). The Go function runs on the calling Python thread's own
// OS thread, with the interpreter's GIL released for its duration: no
// other OS thread is woken, the interpreter's other threads run meanwhile,
// and several threads of one handler may be in Go at once. Its ctx is the
// Call's (or the Stream's, from open to close), with the request's
// correlation id ([worker.CorrelationID]); it is done when the Go-side call
// ends, including at a deadline that interrupts a handler waiting in Go.
// Threads the handler started may call while the call runs; a host call
// made for a call that has ended is refused (HostError in Python). A host
// function must not call the same worker with one slot: the call waiting
// in Go holds it.
//
// # Several calls at once
//
// With [Config.Concurrency] above one the worker has that many slots:
// calls run side by side, each on its caller's OS thread, async handlers
// as tasks on an event loop thread of the interpreter, plain handlers one
// at a time unless the adapter is thread-safe (see conc.go). Each call is
// named to the dispatcher by an id of its own, which its cancellation, host
// calls and log records follow.
//
// # Limits
//
// Extension modules that do not support sub-interpreters (numpy, most
// Cython and pybind11 modules) fail to import on Python ≥ 3.12; the worker
// then fails to start with an error matching [worker.ErrNotSubinterpreterSafe]
// that names the process profile as the fix. On 3.11 workers share one GIL,
// and accept such modules; numpy before 2 loads in one interpreter only
// (the others fail with the same error). A module whose import deadlocks
// makes Start end at its ctx's deadline with an error matching
// [worker.ErrSetup] and naming the process profile.
package gil

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/callslot"
	"github.com/snakepit-go/snakepit/internal/wstream"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/worker"
)

// DefaultInterruptGrace is the grace period when Config.InterruptGrace is 0.
const DefaultInterruptGrace = 2 * time.Second

// Config configures one worker.
type Config struct {
	// Module is the adapter module to import (required), e.g. "my_adapter".
	Module string
	// Paths are prepended to sys.path before the module is imported, e.g.
	// the directory holding it. Zero value: none.
	Paths []string
	// Runtime is the Python to use. Nil means the one LibPython and Python
	// name, or embed.Default(): the SNAKEPIT_LIBPYTHON/SNAKEPIT_PYTHON
	// environment, else the hermetic CPython if the program imports
	// python/dist, else python3 on PATH.
	Runtime *embed.Runtime
	// LibPython, when Runtime is nil, is the libpython to load, or the
	// directory of an environment or installation (a venv, a conda
	// environment, a standalone CPython) whose library to load (see
	// [LoadRuntimeFor]). Zero value: Python's, or embed.Default().
	LibPython string
	// Python, when Runtime is nil, is an interpreter (or environment
	// directory) whose installation's libpython to load. A virtual
	// environment's interpreter starts the runtime as that interpreter
	// would start: its sys.prefix, sys.executable and site-packages, .pth
	// files processed, in every interpreter (see [embed.Load]). A Python
	// without a shared library fails with an error matching
	// [embed.ErrNoLibPython]; the process profile can run it. Zero value:
	// LibPython's, or embed.Default().
	Python string
	// ID names the worker in logs and errors. Zero value: "gil-<n>", n the
	// interpreter's id.
	ID string
	// Logger receives the adapter's log records and its print() output,
	// with the worker id, command and correlation id. Nil discards them.
	Logger *slog.Logger
	// InterruptGrace is how long a handler may take to stop after its call's
	// context ended before the worker declares itself dead. Zero value:
	// DefaultInterruptGrace.
	InterruptGrace time.Duration
	// SharedGIL runs the interpreter under the main interpreter's GIL even
	// on Python ≥ 3.12 (for comparison; no parallelism). Zero value: own GIL.
	SharedGIL bool
	// Host holds the Go functions handlers may call (ctx.host in Python;
	// see package host and "Host functions" above), e.g. a *host.Set.
	// Nil: none (ctx.host.names() is empty, and every call is a HostError
	// of kind "unknown").
	Host worker.Host
	// Concurrency is how many calls (and open streams) the worker runs at
	// once: its slots (see worker.Worker). Zero or one: one at a time. Above
	// one, each call runs on its caller's OS thread in the interpreter,
	// async def handlers as tasks on an event loop thread of the
	// interpreter, plain def handlers concurrently only when the adapter
	// declares itself thread-safe. At most MaxConcurrency.
	Concurrency int
}

// MaxConcurrency bounds Config.Concurrency.
const MaxConcurrency = 1024

// Worker is a thread-profile worker. It implements [worker.Worker] and
// [worker.SessionEnder].
type Worker struct {
	id    string
	in    *embed.Interpreter
	log   *slog.Logger
	grace time.Duration
	fns   dispatcherFuncs

	// slot is held while Python runs one of this worker's calls (or a
	// stream is open): calls take turns on it.
	slot       callslot.Slot
	openStream atomic.Pointer[wstream.Stream] // the open stream, closed by Close
	// jobs feeds the executor goroutine, which runs calls that may be
	// abandoned (their context can end); results come back on resc. Only
	// the slot holder sends, so one result channel serves every call.
	jobs     chan job
	resc     chan callResult
	execDone chan struct{} // closed when the executor has exited

	done      chan struct{} // closed when the worker stopped
	stopOnce  sync.Once
	mu        sync.Mutex     // guards err
	err       error          // why the worker died
	bg        sync.WaitGroup // background goroutines (interrupters, stuck-call watchers)
	closeOnce sync.Once
	closeErr  error

	host worker.Host              // Config.Host; nil: none
	cur  atomic.Pointer[hostCall] // the latest Call or Stream (ended once it has ended): whose host calls run

	// With several slots (conc > 1; see conc.go) calls run side by side:
	// the open streams and the host calls of the calls in flight, by the
	// call id the dispatcher knows them by, replace openStream and cur.
	conc    int
	cmu     sync.Mutex // guards streams, hosts
	streams map[*wstream.Stream]struct{}
	hosts   map[uint64]*hostCall
}

type dispatcherFuncs struct {
	call, streamOpen, streamNext, streamClose, endSession, teardown, drainLogs, cancel, cancelID, cancelled, stopLoop *embed.Func
}

var _ worker.Worker = (*Worker)(nil)
var _ worker.SessionEnder = (*Worker)(nil)

// LoadRuntime loads the Python runtime thread-profile workers run on:
// libPython's CPython, or embed.Default() when libPython is empty. It is
// LoadRuntimeFor(libPython, "").
func LoadRuntime(libPython string) (*embed.Runtime, error) {
	return LoadRuntimeFor(libPython, "")
}

// LoadRuntimeFor loads the Python runtime thread-profile workers run on:
// the one named by libPython (a shared library, or an environment's
// directory) and python (an interpreter, a virtual environment's
// included, or an environment's directory), as [Config] describes, or
// embed.Default() when both are empty. The runtime is loaded once per
// process; see [embed.Load].
func LoadRuntimeFor(libPython, python string) (*embed.Runtime, error) {
	if libPython == "" && python == "" {
		return embed.Default()
	}
	py, err := locate.Find(locate.Options{LibPython: libPython, Executable: python})
	if err != nil {
		return nil, err
	}
	return embed.Load(py)
}

// Start creates the worker's sub-interpreter, imports the adapter and runs
// its setup(). It returns when the worker is ready, or an error matching
// [worker.ErrSetup] (and, for a module that refuses sub-interpreters,
// [worker.ErrNotSubinterpreterSafe]) with nothing left behind. ctx bounds
// the wait: if it ends first, Start returns an error matching
// [worker.ErrSetup] and ctx's error at once, while the import or setup()
// still runs (Python code on the home thread cannot be interrupted); the
// interpreter and its thread are reclaimed in the background when it
// returns, and never if it blocks for ever.
func Start(ctx context.Context, cfg Config) (*Worker, error) {
	if cfg.Module == "" {
		return nil, errors.New("gil: Config.Module is required")
	}
	if cfg.InterruptGrace < 0 {
		return nil, errors.New("gil: Config.InterruptGrace must not be negative")
	}
	if cfg.Concurrency < 0 || cfg.Concurrency > MaxConcurrency {
		return nil, fmt.Errorf("gil: Config.Concurrency must be in [0, %d], got %d", MaxConcurrency, cfg.Concurrency)
	}
	rt := cfg.Runtime
	if rt == nil {
		var err error
		if rt, err = LoadRuntimeFor(cfg.LibPython, cfg.Python); err != nil {
			return nil, &worker.SetupError{WorkerID: cfg.ID, Stage: "start", Err: err}
		}
	}
	pkg, err := python.Path()
	if err != nil {
		return nil, &worker.SetupError{WorkerID: cfg.ID, Stage: "start", Err: err}
	}
	in, err := rt.NewInterpreter(embed.InterpreterConfig{
		Paths:     append([]string{pkg}, cfg.Paths...),
		SharedGIL: cfg.SharedGIL,
	})
	if err != nil {
		return nil, &worker.SetupError{WorkerID: cfg.ID, Stage: "start", Err: err}
	}
	w := &Worker{
		id:    cfg.ID,
		in:    in,
		log:   cfg.Logger,
		grace: cfg.InterruptGrace,
		slot:  callslot.NewN(max(cfg.Concurrency, 1)),
		done:  make(chan struct{}),
		jobs:  make(chan job),
		resc:  make(chan callResult, 1),
		host:  cfg.Host,
		conc:  max(cfg.Concurrency, 1),

		streams: map[*wstream.Stream]struct{}{},
		hosts:   map[uint64]*hostCall{},

		execDone: make(chan struct{}),
	}
	if w.id == "" {
		w.id = "gil-" + strconv.FormatInt(in.ID(), 10)
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.grace == 0 {
		w.grace = DefaultInterruptGrace
	}
	go w.executor()
	// The import and setup() run on the interpreter's home thread and
	// cannot be interrupted: ctx bounds the wait for them. If ctx ends
	// first, Start returns and the interpreter is ended once they return.
	bootc := make(chan error, 1)
	go func() { bootc <- w.boot(ctx, cfg.Module, hostNames(cfg.Host)) }()
	abort := func() {
		close(w.jobs)
		<-w.execDone
		_ = in.Close(context.Background())
	}
	select {
	case err := <-bootc:
		if err != nil {
			abort()
			return nil, err
		}
		return w, nil
	case <-ctx.Done():
		go func() {
			if <-bootc == nil {
				w.stop()
			}
			abort()
		}()
		return nil, &worker.SetupError{WorkerID: w.id, Stage: "setup",
			Err: fmt.Errorf("gil: the adapter's import or setup() did not return in time (it is abandoned and reclaimed if it returns; a module that deadlocks in a sub-interpreter may need the process profile): %w", context.Cause(ctx))}
	}
}

type job struct {
	id   uint64
	fn   *embed.Func
	args []byte
	bufs [][]byte
}

// callOnThread calls fn on this thread, with out-of-band payloads if any.
func (w *Worker) callOnThread(id uint64, fn *embed.Func, args []byte, bufs [][]byte) ([]byte, error) {
	if len(bufs) > 0 {
		return w.in.CallOnThreadBuffers(id, fn, args, bufs, nil)
	}
	return w.in.CallOnThread(id, fn, args, nil, nil)
}

// executor runs the calls whose callers may leave early. Handing a call to
// it is a Go-level switch (no OS thread wake-up): the call still runs on
// whichever OS thread runs the executor, with that thread's cached thread
// state.
func (w *Worker) executor() {
	defer close(w.execDone)
	for j := range w.jobs {
		out, err := w.callOnThread(j.id, j.fn, j.args, j.bufs)
		w.resc <- callResult{out, err}
	}
}

func (w *Worker) boot(ctx context.Context, module string, hostNames []string) error {
	names, _ := json.Marshal(hostNames) // a JSON list of strings is a Python list literal
	code := fmt.Sprintf(`import snakepit, snakepit._dispatch, snakepit._sleep, snakepit._aio311, _snakepit_embed
snakepit._sleep.install()
snakepit._aio311.install()
_spk = snakepit._dispatch.Dispatcher(%s, worker_id=%s, capture_stdio=True, log_level=%d, concurrency=%d)
_spk.raw_results = True
_spk.host_names = tuple(%s)
_spk.host_transport = _snakepit_embed.host_call
_spk.host_fast = _snakepit_embed.host_call
_spk.hold_interrupt = _snakepit_embed.hold_interrupt
_spk_call, _spk_stream_open, _spk_stream_next, _spk_stream_close = _spk.call, _spk.stream_open, _spk.stream_next, _spk.stream_close
_spk_end_session, _spk_teardown, _spk_drain_logs, _spk_cancel, _spk_setup = _spk.end_session, _spk.teardown, _spk.drain_logs, snakepit._sleep.on_cancel(_spk.cancel, lambda: _spk._call), _spk.setup
_spk_cancelled = snakepit.Cancelled
_spk_cancel_id, _spk_stop_loop = _spk.cancel, _spk._stop_loop_thread
`, pyString(module), pyString(w.id), python.PythonLevel(w.log), w.conc, names)
	if err := w.in.Exec(ctx, code); err != nil {
		return &worker.SetupError{WorkerID: w.id, Stage: "import", Err: err}
	}
	if err := w.installHost(ctx); err != nil {
		return &worker.SetupError{WorkerID: w.id, Stage: "import", Err: err}
	}
	for name, fp := range map[string]**embed.Func{
		"_spk_call": &w.fns.call, "_spk_stream_open": &w.fns.streamOpen, "_spk_stream_next": &w.fns.streamNext,
		"_spk_stream_close": &w.fns.streamClose, "_spk_end_session": &w.fns.endSession, "_spk_teardown": &w.fns.teardown,
		"_spk_drain_logs": &w.fns.drainLogs, "_spk_cancel": &w.fns.cancel, "_spk_cancelled": &w.fns.cancelled,
		"_spk_cancel_id": &w.fns.cancelID, "_spk_stop_loop": &w.fns.stopLoop,
	} {
		f, err := w.in.Func(ctx, "__main__", name)
		if err != nil {
			return &worker.SetupError{WorkerID: w.id, Stage: "import", Err: err}
		}
		*fp = f
	}
	setup, err := w.in.Func(ctx, "__main__", "_spk_setup")
	if err != nil {
		return &worker.SetupError{WorkerID: w.id, Stage: "setup", Err: err}
	}
	out, err := w.in.CallRaw(ctx, setup, nil, nil, nil)
	if err != nil {
		return &worker.SetupError{WorkerID: w.id, Stage: "setup", Err: err}
	}
	r, err := python.DecodeReply(out, "setup", "")
	if err != nil {
		return &worker.SetupError{WorkerID: w.id, Stage: "setup", Err: err}
	}
	w.emit(context.Background(), r.Logs)
	if r.Err != nil {
		return &worker.SetupError{WorkerID: w.id, Stage: "setup", Err: unwrapCallError(r.Err)}
	}
	return nil
}

func unwrapCallError(err error) error {
	var ce *worker.CallError
	if errors.As(err, &ce) {
		return ce.Err
	}
	return err
}

// pyString quotes s as a Python string literal (a JSON string is one).
func pyString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.id }

// Interpreter returns the worker's sub-interpreter.
func (w *Worker) Interpreter() *embed.Interpreter { return w.in }

// Done is closed when the worker stopped: closed or dead.
func (w *Worker) Done() <-chan struct{} { return w.done }

// Err returns why the worker died, or nil.
func (w *Worker) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *Worker) die(reason string, cause error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = &worker.DeadError{WorkerID: w.id, Reason: reason, Err: cause}
	}
	w.mu.Unlock()
	w.stop()
	w.log.Error("worker dead", "worker", w.id, "reason", reason)
}

func (w *Worker) stop() { w.stopOnce.Do(func() { close(w.done) }) }

// unavailable returns the error for a call on a stopped worker.
func (w *Worker) unavailable() error {
	if err := w.Err(); err != nil {
		return err
	}
	return worker.ErrClosed
}

// acquire takes the call slot, bounded by ctx.
func (w *Worker) acquire(ctx context.Context) error {
	return w.slot.Acquire(ctx, w.done, w.unavailable)
}

func (w *Worker) release() { w.slot.Release() }

// Call runs a command. See [worker.Worker.Call].
func (w *Worker) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	if w.conc > 1 {
		return w.callConc(ctx, req)
	}
	ctx, cancel := req.WithDeadline(ctx)
	defer cancel()
	deadline, _ := ctx.Deadline()
	args, err := python.EncodeCallOutOfBand(nil, req, deadline)
	if err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(ctx); err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	hc := w.newHostCall(ctx, req.CorrelationID)
	r, abandoned, err := w.runBufs(ctx, w.fns.call, args, req.Buffers, req.Command, req.CorrelationID, hc, w.release)
	// The Go-side call has ended (even if the handler still runs, being
	// stopped): its host calls end, and later ones are refused.
	w.endHostCall(hc)
	if !abandoned {
		w.release()
	}
	if err != nil {
		return nil, err
	}
	return &worker.Response{Result: r.Payload}, nil
}

type callResult struct {
	out []byte
	err error
}

// run calls a dispatcher method; the caller holds the slot. If ctx ends
// first, run returns at once with abandoned set: the call is then stopped in
// the background, which runs onAbandon once Python is done with it (unless
// the worker died waiting).
func (w *Worker) run(ctx context.Context, fn *embed.Func, args []byte, command, cid string, onAbandon func()) (r python.Reply, abandoned bool, err error) {
	return w.runBufs(ctx, fn, args, nil, command, cid, nil, onAbandon)
}

// runBufs is run with out-of-band payloads (see
// embed.Interpreter.CallOnThreadBuffers), which stay pinned until Python is
// done with the call, even when the caller has gone. hc, when not nil, is
// the call handlers' host calls are made for: it becomes the current one,
// identified by the call's id (the caller ends it).
func (w *Worker) runBufs(ctx context.Context, fn *embed.Func, args []byte, bufs [][]byte, command, cid string, hc *hostCall, onAbandon func()) (r python.Reply, abandoned bool, err error) {
	if w.conc > 1 { // calls and streams take their own path (conc.go)
		return w.runConc(ctx, fn, args, bufs, 0, command, cid, onAbandon)
	}
	id := embed.NewCallID()
	if hc != nil {
		hc.token = id // before Store: readers Load it
		w.cur.Store(hc)
	}
	var res callResult
	if ctx.Done() == nil {
		// Nothing can end this call early: run it right here.
		res.out, res.err = w.callOnThread(id, fn, args, bufs)
	} else {
		if ctx.Err() != nil {
			// Ended already (say, while the call waited for the worker):
			// the handler does not run.
			return python.Reply{}, false, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
		}
		w.jobs <- job{id, fn, args, bufs}
		select {
		case res = <-w.resc:
		case <-ctx.Done():
			w.bg.Add(1)
			go w.abandon(id, 0, w.resc, command, cid, onAbandon)
			return python.Reply{}, true, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
		}
	}
	r, err = w.reply(ctx, res, command, cid)
	return r, false, err
}

func (w *Worker) reply(ctx context.Context, res callResult, command, cid string) (python.Reply, error) {
	if res.err != nil {
		if errors.Is(res.err, embed.ErrClosed) {
			res.err = w.unavailable()
		}
		return python.Reply{}, &worker.CallError{Command: command, CorrelationID: cid, Err: res.err}
	}
	r, err := python.DecodeReply(res.out, command, cid)
	if err != nil {
		return python.Reply{}, &worker.CallError{Command: command, CorrelationID: cid, Err: err}
	}
	w.emit(ctx, r.Logs)
	// A reply read as the context ended: the call ended with its context
	// (as it would have a moment later), whatever the handler returned.
	if ctx.Err() != nil {
		return r, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
	}
	if r.Err != nil {
		if errors.Is(r.Err, python.ErrCancelled) {
			return r, python.CancelledError(ctx, r.Err, command, cid)
		}
		return r, r.Err
	}
	return r, nil
}

// abandon stops a call whose caller has gone: it marks the handler's ctx
// cancelled and raises snakepit.Cancelled in it, then waits the grace
// period for the call to end. If it does not, the worker dies. pyID, when
// not 0, is the call id the dispatcher knows the call by (a worker with
// several slots): the dispatcher cancels that call only, an async one by
// cancelling its task, so that no interrupt is needed.
func (w *Worker) abandon(id, pyID uint64, resc <-chan callResult, command, cid string, onAbandon func()) {
	defer w.bg.Done()
	settled, interrupted := make(chan struct{}), make(chan struct{})
	w.bg.Add(1)
	go func() {
		// Until the interrupt lands or the call ends: the executor may not
		// have started the call yet (the handler then does not run at all
		// if its deadline has passed; one with a later deadline is
		// interrupted once it runs). Each try blocks for as long as C code
		// holds the interpreter's GIL.
		defer w.bg.Done()
		defer close(interrupted)
		bg := context.Background()
		for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
			if pyID != 0 {
				if task, err := w.cancelByID(bg, pyID); task || err != nil {
					return
				}
			} else if _, err := w.in.CallRaw(bg, w.fns.cancel, nil, nil, nil); err != nil {
				return
			}
			if ok, err := w.in.Interrupt(bg, id, w.fns.cancelled); ok || err != nil {
				return
			}
			select {
			case <-settled:
				return
			case <-time.After(delay):
			}
		}
	}()
	timer := time.NewTimer(w.grace)
	defer timer.Stop()
	select {
	case res := <-resc:
		// Stop interrupting before the worker takes its next call.
		close(settled)
		<-interrupted
		if res.err == nil {
			if r, err := python.DecodeReply(res.out, command, cid); err == nil {
				w.emit(context.Background(), r.Logs)
			}
		}
		onAbandon()
	case <-timer.C:
		close(settled)
		w.die(fmt.Sprintf("handler %q (correlation %s) did not stop within %v of its deadline", command, cid, w.grace), nil)
		// If the call ever ends, let Close reclaim the interpreter.
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			<-resc
			onAbandon()
		}()
	}
}

func (w *Worker) emit(ctx context.Context, logs []python.LogRecord) {
	for _, r := range logs {
		r.Emit(ctx, w.log, w.id)
	}
}

// EndSession drops the Python-side state of a session on this worker.
func (w *Worker) EndSession(ctx context.Context, sessionID string) error {
	args, err := pymarshal.Marshal(pymarshal.Tuple{sessionID})
	if err != nil {
		return err
	}
	if err := w.acquire(ctx); err != nil {
		return err
	}
	_, abandoned, err := w.run(ctx, w.fns.endSession, args, "end_session", "", w.release)
	if !abandoned {
		w.release()
	}
	return err
}

// Close runs the adapter's teardown() and ends the interpreter. It waits for
// a running call or stream Next until ctx ends, then returns ctx's error and
// finishes closing in the background once that call returns. A dead worker whose handler is still stuck
// cannot be reclaimed: Close then returns the death error.
func (w *Worker) Close(ctx context.Context) error {
	w.closeOnce.Do(func() { w.closeErr = w.close(ctx) })
	return w.closeErr
}

func (w *Worker) close(ctx context.Context) error {
	streams := w.openStreams()
	for _, s := range streams {
		// Frees its slot, after a Next in progress if it ends within ctx.
		_ = s.CloseContext(ctx)
	}
	// Take every slot directly: a dead worker refuses acquire, but its
	// stuck call may have ended since.
	taken := 0
	for ; taken < w.conc; taken++ {
		select {
		case w.slot <- struct{}{}:
			continue
		case <-ctx.Done():
		}
		break
	}
	if taken < w.conc {
		w.stop()
		// A call still runs (blocked in C, for a dead worker): finish
		// closing when it returns, so the interpreter and its thread are
		// reclaimed then rather than never.
		go func() {
			for _, s := range streams {
				_ = s.Close() // after the Next in progress
			}
			for ; taken < w.conc; taken++ {
				w.slot <- struct{}{}
			}
			_ = w.finishClose(context.Background(), true)
		}()
		if err := w.Err(); err != nil {
			return fmt.Errorf("gil: close %s: %w", w.id, err)
		}
		return fmt.Errorf("gil: close %s: a call is still running: %w", w.id, ctx.Err())
	}
	return w.finishClose(ctx, w.Err() != nil)
}

// finishClose ends the worker once it holds the slot: teardown (unless the
// worker died), the executor, the interpreter.
func (w *Worker) finishClose(ctx context.Context, dead bool) error {
	w.stop()
	close(w.jobs) // we hold the slot: no call is sending
	<-w.execDone
	if dead && w.conc > 1 {
		// No teardown for a dead worker, but the event loop thread of its
		// concurrent calls must stop, or the interpreter cannot end.
		_, _ = w.in.CallRaw(ctx, w.fns.stopLoop, nil, nil, nil)
	}
	if !dead {
		if out, err := w.in.CallRaw(ctx, w.fns.teardown, nil, nil, nil); err == nil {
			if r, err := python.DecodeReply(out, "teardown", ""); err == nil {
				w.emit(ctx, r.Logs)
				if r.Err != nil {
					w.log.Warn("teardown raised", "worker", w.id, "error", r.Err)
				}
			}
		}
		if out, err := w.in.CallRaw(ctx, w.fns.drainLogs, nil, nil, nil); err == nil {
			if logs, err := python.DecodeLogs(out); err == nil {
				w.emit(ctx, logs)
			}
		}
	}
	err := w.in.Close(ctx)
	w.bg.Wait()
	if err != nil {
		if ctx.Err() != nil {
			// A thread that called the worker is still inside a C call
			// and holds its thread state: end the interpreter once it
			// returns.
			go w.in.Close(context.Background())
		}
		return fmt.Errorf("gil: close %s: %w", w.id, err)
	}
	return nil
}
