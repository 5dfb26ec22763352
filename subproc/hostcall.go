package subproc

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// Host calls (Python calling Go, ctx.host in a handler) travel as two
// frame types:
//
//   - HOST_CALL (child → host): the frame's request id is the host call's
//     own id, which the child assigns with hostCallIDBit set, so it never
//     equals one of the host's request ids. The payload is the marshalled
//     tuple (call id, name, kwargs bytes): the call id is the request id
//     of the CALL or STREAM_OPEN frame whose handler made the host call,
//     the kwargs bytes the marshalled keyword arguments.
//   - HOST_REPLY (host → child): the same request id as the HOST_CALL; the
//     payload is what worker.Host.Invoke returned (see host.Reply).
//
// Neither goes through the shared region (a call's arguments may be
// viewed there while the handler runs): both use the socket, up to
// Config.MaxFrame. Because each HOST_CALL names its call, several calls in
// flight on one worker need no other frames.

// hostCallIDBit is set in the request id of every HOST_CALL.
const hostCallIDBit = 1 << 63

// hostCallBudget bounds what decoding a HOST_CALL payload may allocate,
// beyond the payload's size: its shape is a flat tuple of three values.
const hostCallBudget = 4 << 10

// errBadHostCall: a HOST_CALL payload that is not (call id, name, kwargs).
var errBadHostCall = errors.New("subproc: malformed HOST_CALL")

// decodeHostCall parses a HOST_CALL payload: the marshalled tuple (call
// id: a non-negative int, name: str, kwargs: bytes).
func decodeHostCall(p []byte) (callID uint64, name string, args []byte, err error) {
	v, err := pymarshal.DecodeLimit(p, int64(len(p))+hostCallBudget)
	if err != nil {
		return 0, "", nil, fmt.Errorf("%w: %w", errBadHostCall, err)
	}
	t, ok := v.([]any) // a tuple (or a list) decodes to []any
	if !ok || len(t) != 3 {
		return 0, "", nil, fmt.Errorf("%w: got %T, want a tuple of 3", errBadHostCall, v)
	}
	id, ok := t[0].(int64)
	if !ok || id < 0 {
		return 0, "", nil, fmt.Errorf("%w: call id %v (%T), want a non-negative int", errBadHostCall, t[0], t[0])
	}
	name, ok = t[1].(string)
	if !ok {
		return 0, "", nil, fmt.Errorf("%w: name of type %T, want str", errBadHostCall, t[1])
	}
	args, ok = t[2].([]byte)
	if !ok {
		return 0, "", nil, fmt.Errorf("%w: arguments of type %T, want bytes", errBadHostCall, t[2])
	}
	return uint64(id), name, args, nil
}

// hostScope is a call (or an open stream) whose handler may call host
// functions: HOST_CALL frames naming its request id run with its context.
type hostScope struct {
	id     uint64
	parent context.Context // the call's (the stream's) context
	cid    string
	// ctx and cancel are made at the first host call of the scope (most
	// calls make none), guarded by hostCalls.mu.
	ctx    context.Context
	cancel context.CancelFunc
}

// hostCalls tracks the scopes in flight and the host functions running.
type hostCalls struct {
	mu      sync.Mutex // guards scopes, closed and the additions to running
	scopes  map[uint64]*hostScope
	closed  bool           // Close waits for running: no host call starts any more
	running sync.WaitGroup // goroutines running a host function
}

// newScope returns the scope of a call with context ctx, or nil when the
// worker has no host functions (a HOST_CALL then gets an "unknown" reply
// whatever call it names).
func (w *Worker) newScope(ctx context.Context, cid string) *hostScope {
	if w.cfg.Host == nil {
		return nil
	}
	return &hostScope{parent: ctx, cid: cid}
}

// beginScope makes sc's host calls (HOST_CALL frames naming request id)
// run from now on.
func (w *Worker) beginScope(sc *hostScope, id uint64) {
	if sc == nil {
		return
	}
	sc.id = id
	w.hosts.mu.Lock()
	if w.hosts.scopes == nil {
		w.hosts.scopes = make(map[uint64]*hostScope)
	}
	w.hosts.scopes[id] = sc
	w.hosts.mu.Unlock()
}

// endScope ends sc: the contexts of its host calls still running are
// done, and a HOST_CALL naming it from now on is refused.
func (w *Worker) endScope(sc *hostScope) {
	if sc == nil {
		return
	}
	w.hosts.mu.Lock()
	if w.hosts.scopes[sc.id] == sc {
		delete(w.hosts.scopes, sc.id)
	}
	cancel := sc.cancel
	w.hosts.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// serveHostCall starts the host call f asks for, in a goroutine of its
// own: the reader goes on reading (the reply, other host calls) while it
// runs. An error means f is malformed: the child broke the protocol.
func (w *Worker) serveHostCall(f frame) error {
	if f.typ&frameShared != 0 {
		return fmt.Errorf("%w: HOST_CALL in the shared region", ErrBadFrame)
	}
	if f.id&hostCallIDBit == 0 {
		return fmt.Errorf("%w: HOST_CALL id %d without the host call bit", ErrBadFrame, f.id)
	}
	callID, name, args, err := decodeHostCall(f.payload)
	if err != nil {
		return err
	}
	w.hosts.mu.Lock()
	if w.hosts.closed {
		w.hosts.mu.Unlock()
		return nil // the worker is closed: nobody reads a reply
	}
	var ctx context.Context
	if sc := w.hosts.scopes[callID]; sc != nil {
		if sc.ctx == nil {
			sc.ctx, sc.cancel = context.WithCancel(worker.WithCorrelationID(sc.parent, sc.cid))
		}
		ctx = sc.ctx
	}
	w.hosts.running.Add(1)
	w.hosts.mu.Unlock()
	go w.runHostCall(ctx, f.id, callID, name, args)
	return nil
}

// runHostCall runs one host function and sends its reply. ctx is nil when
// the call named is not in flight.
func (w *Worker) runHostCall(ctx context.Context, id, callID uint64, name string, args []byte) {
	defer w.hosts.running.Done()
	var reply []byte
	switch {
	case w.cfg.Host == nil:
		reply = host.Reply(nil, fmt.Errorf("%w %q: this worker has no host functions", host.ErrUnknownFunction, name))
	case ctx == nil:
		reply = host.Reply(nil, fmt.Errorf("subproc: host function %q called for request %d, which is not in flight (the call ended)", name, callID))
	default:
		reply = w.cfg.Host.Invoke(ctx, name, args)
	}
	if len(reply) > w.cfg.MaxFrame {
		reply = host.Reply(nil, fmt.Errorf("subproc: result of host function %q: %d bytes exceed the frame limit of %d bytes", name, len(reply), w.cfg.MaxFrame))
	}
	n, err := w.write(w.stopCtx, frameHostReply, id, reply)
	if err != nil && n > 0 && n < headerSize+len(reply) {
		// A partly written frame cannot be taken back.
		w.die(&worker.DeadError{WorkerID: w.id, Reason: "host reply write interrupted", Err: err})
	}
}

// closeHostCalls ends every scope and waits, until ctx ends, for the host
// functions still running to return. Call it once the connection is
// closed: no HOST_CALL is read any more.
func (w *Worker) closeHostCalls(ctx context.Context) {
	w.hosts.mu.Lock()
	w.hosts.closed = true
	var cancels []context.CancelFunc
	for id, sc := range w.hosts.scopes {
		if sc.cancel != nil {
			cancels = append(cancels, sc.cancel)
		}
		delete(w.hosts.scopes, id)
	}
	w.hosts.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
	done := make(chan struct{})
	go func() { w.hosts.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.log.Warn("host functions still running after their calls ended (they ignore their context)", "worker", w.id)
	}
}
