package worker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Worker runs commands of one Python adapter module. Both profiles
// implement it: thread (package gil) and process (package subproc). Pools
// and tests use it; users normally reach workers through a pool.
//
// A Worker is safe for use by several goroutines. It has a number of
// slots, fixed when it starts (its concurrency; one unless configured
// otherwise): it runs up to that many calls and open streams at once, each
// open stream holding a slot until it is closed or exhausted, and a call
// made while every slot is held waits for one, bounded by its own context.
// Pools give a worker at most as many calls as it has slots. Calls that
// share a worker stay apart: a deadline or cancellation interrupts only its
// own call, correlation ids, log records and host calls stay with their
// call, and a worker that dies fails every call in flight with
// [ErrWorkerDead], each exactly once. Whether calls really overlap is up to
// the handlers: async handlers run concurrently on the worker's event
// loop, plain ones only when the adapter declares itself thread-safe, and
// otherwise one at a time.
type Worker interface {
	// ID names the worker in logs and errors.
	ID() string

	// Call runs req.Command and returns its marshalled result. The call is
	// bounded by ctx (and req.Deadline): when it ends, Call returns an error
	// matching ctx.Err() (or context.DeadlineExceeded) at once, and the
	// worker interrupts the handler in the background. If the handler does
	// not stop within the worker's grace period, the worker declares itself
	// dead ([ErrWorkerDead], see Done and Err); until it stops, the worker's
	// next call waits.
	Call(ctx context.Context, req *Request) (*Response, error)

	// Stream runs a command whose handler returns a generator; each item is
	// one chunk. The worker is busy until the stream is closed or exhausted.
	// ctx bounds the whole stream.
	Stream(ctx context.Context, req *Request) (Stream, error)

	// Done is closed when the worker has stopped: closed, or dead.
	Done() <-chan struct{}

	// Err returns why the worker stopped (nil while it runs, and after a
	// clean Close). A worker that died returns an error matching
	// [ErrWorkerDead].
	Err() error

	// Close stops the worker: it runs the adapter's teardown() and releases
	// everything the worker holds, waiting for an in-flight call to finish
	// until ctx ends. Closing twice is a no-op.
	Close(ctx context.Context) error
}

// Stream is an open stream of chunks from a generator handler.
type Stream interface {
	// Next returns the next chunk (a marshalled value). At the end of the
	// stream it returns io.EOF; when the generator raised, the error.
	Next(ctx context.Context) ([]byte, error)
	// Close ends the stream early, closing the generator (its finally
	// blocks run). Closing an exhausted or closed stream is a no-op.
	Close() error
}

// SessionEnder is implemented by workers that keep per-session state: it
// drops the Python-side state of a session on this worker.
type SessionEnder interface {
	EndSession(ctx context.Context, sessionID string) error
}

// Withdrawer is implemented by workers that hold calls beyond their slots
// until a slot frees (the process profile's pipeline). Withdraw takes back
// req, a request of a Call in progress, if the worker has not started it:
// it reports true and that Call returns an error matching ErrNotStarted
// (its handler never runs). It reports false when the call has started
// (or ended, or is unknown): it goes on as it was.
type Withdrawer interface {
	Withdraw(ctx context.Context, req *Request) (bool, error)
}

// MemoryReporter is implemented by workers that can measure their own
// memory (the process profile: resident set of the process group).
type MemoryReporter interface {
	MemoryBytes() (int64, error)
}

// Request is one call.
type Request struct {
	// Command names the handler (the @snakepit.command name).
	Command string
	// Args are the keyword arguments: a marshalled dict with str keys, as
	// produced by pymarshal.Marshal of a map or struct. Empty means none.
	// A worker keeps no reference to Args once Call has returned without
	// error: the caller may then reuse the buffer (the pool does).
	Args []byte
	// ArgsChecked says Args is known to be exactly one marshalled dict
	// with str keys: bytes pymarshal's encoder wrote for a map or struct
	// and reported as checked (see pymarshal.AppendMarshalOOBChecked).
	// Workers then do not walk Args again before sending it. Leave it
	// false for bytes from anywhere else: Args that are not one dict are
	// then refused, where with it set they would garble the call.
	ArgsChecked bool
	// Attachments are raw byte blobs passed to the handler unconverted, as
	// ctx.attachments (a list of bytes).
	Attachments [][]byte
	// Buffers are the call's out-of-band payloads: Args refers to them
	// with markers (see pymarshal.AppendMarshalOOB), and the handler gets a
	// read-only memoryview of each where its marker was. The thread profile
	// (3.12+) hands the memory over without copying it: do not modify it
	// until the call has returned (see embed.Interpreter.CallOnThreadBuffers
	// for views a handler keeps); the process profile sends it after Args.
	Buffers [][]byte
	// CorrelationID follows the call into Python (ctx.correlation_id) and
	// into log records and errors.
	CorrelationID string
	// SessionID, when set, selects the session state (ctx.session) kept on
	// this worker for that session.
	SessionID string
	// Deadline, when not zero, is when the call must end. The context's
	// deadline is used when it is earlier.
	Deadline time.Time
	// TraceParent is the W3C traceparent of the span the call runs under,
	// "" for none. It reaches Python as ctx.traceparent, so adapters that
	// use OpenTelemetry continue the trace. The pool sets it from the
	// call's context (see pool.Config.TracerProvider).
	TraceParent string
}

// WithDeadline returns ctx bounded by req.Deadline as well (ctx itself when
// the request has no earlier deadline) and its cancel function.
func (r *Request) WithDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); !r.Deadline.IsZero() && (!ok || r.Deadline.Before(d)) {
		return context.WithDeadline(ctx, r.Deadline)
	}
	return ctx, func() {}
}

// Response is the result of a call.
type Response struct {
	// Result is the handler's return value, marshalled (pymarshal format).
	Result []byte
}

// More sentinel errors shared by all workers.
var (
	// ErrWorkerDead: the worker died (crash, stuck handler, exit) during or
	// before the call. Whether a call that failed with it reached Python is
	// unknown: retry only idempotent calls.
	ErrWorkerDead = errors.New("worker: dead")
	// ErrClosed: the worker has been closed.
	ErrClosed = errors.New("worker: closed")
	// ErrNotStarted: the call was withdrawn while it waited in the
	// worker's queue, before its handler started; it never ran, so it may
	// be sent elsewhere.
	ErrNotStarted = errors.New("worker: the call was withdrawn before it started")
	// ErrCommandNotFound: the adapter has no command by that name.
	ErrCommandNotFound = errors.New("worker: command not found")
	// ErrBadArguments: the arguments do not fit the handler's signature.
	ErrBadArguments = errors.New("worker: bad arguments")
	// ErrStreamMismatch: Call of a command whose handler streams (returns a
	// generator), or Stream of one that returns a single value.
	ErrStreamMismatch = errors.New("worker: call kind does not match the command (Call vs Stream)")
	// ErrSetup: the worker could not start: the adapter failed to import,
	// or its setup() raised.
	ErrSetup = errors.New("worker: setup failed")
)

// CommandNotFoundError names the missing command and those that exist.
type CommandNotFoundError struct {
	Command   string
	Available []string
}

func (e *CommandNotFoundError) Error() string {
	return fmt.Sprintf("command %q not found (adapter has %v)", e.Command, e.Available)
}

func (e *CommandNotFoundError) Unwrap() error { return ErrCommandNotFound }

// BadArgumentsError says why the arguments do not fit the handler.
type BadArgumentsError struct {
	Command string
	Reason  string
}

func (e *BadArgumentsError) Error() string {
	return fmt.Sprintf("bad arguments for %q: %s", e.Command, e.Reason)
}

func (e *BadArgumentsError) Unwrap() error { return ErrBadArguments }

// DeadError says why a worker died. It matches [ErrWorkerDead].
type DeadError struct {
	WorkerID string
	Reason   string
	Err      error // the underlying cause, if any
}

func (e *DeadError) Error() string {
	msg := "worker " + e.WorkerID + " dead: " + e.Reason
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns [ErrWorkerDead] and the cause.
func (e *DeadError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrWorkerDead, e.Err}
	}
	return []error{ErrWorkerDead}
}

// SetupError is a failure to start a worker. It matches [ErrSetup] and its
// cause (often a *PythonError, or one matching ErrNotSubinterpreterSafe).
type SetupError struct {
	WorkerID string
	Stage    string // "import", "setup", "start"
	Err      error
}

func (e *SetupError) Error() string {
	return "worker " + e.WorkerID + ": " + e.Stage + ": " + e.Err.Error()
}

func (e *SetupError) Unwrap() []error { return []error{ErrSetup, e.Err} }

// CallError wraps an error of a call with the call's correlation id and
// command, so logs and callers can tie it to the request. It unwraps to the
// underlying error.
type CallError struct {
	Command       string
	CorrelationID string
	Err           error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("%s [correlation %s]: %v", e.Command, e.CorrelationID, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

type correlationKey struct{}

// WithCorrelationID returns a context whose calls carry id as their
// correlation id (ctx.correlation_id in Python, in log records and errors).
// A host function's context carries the id of the Python call that made it.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationID returns the correlation id ctx carries, or "".
func CorrelationID(ctx context.Context) string {
	id, _ := ctx.Value(correlationKey{}).(string)
	return id
}

// Host is what a worker calls when a handler calls Go (ctx.host.call in
// Python): package host's *Set implements it.
type Host interface {
	// Names lists the functions handlers may call.
	Names() []string
	// Invoke runs the function name with marshalled keyword arguments and
	// returns the reply for Python (see host.Reply). ctx is the Python
	// call's, with its correlation id. args need only stay valid until
	// Invoke returns.
	Invoke(ctx context.Context, name string, args []byte) []byte
}
