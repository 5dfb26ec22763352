package subproc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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

// hostCalls tracks the scopes in flight and the goroutines reading a
// request's frames (and running host functions).
type hostCalls struct {
	mu      sync.Mutex // guards scopes, closed and the additions to running
	scopes  map[uint64]*hostScope
	closed  bool           // Close waits for running: no reader starts any more
	running sync.WaitGroup // hostReader goroutines
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

// hostInlineBudget is how long the reader of a request's frames may run a
// host function itself (and so leave the connection unread) before
// another goroutine takes over reading: a host call that returns within it
// costs no goroutine hand-off, and a slow one delays neither other host
// calls nor the reply (nor the caller's return at its deadline) by much
// more.
const hostInlineBudget = 500 * time.Microsecond

// replyResult is what the reader of a request's frames hands the request.
type replyResult struct {
	f   frame
	err error
}

// hostCall is a parsed HOST_CALL.
type hostCall struct {
	ctx    context.Context // the call's; nil when it is not in flight
	id     uint64          // the HOST_CALL's request id
	callID uint64
	name   string
	args   []byte
}

// hostReading is the reading of one request's frames once a host call
// came: one hostReader goroutine at a time reads them and runs the host
// functions that come, until the reply, which it hands over on res. A
// watchdog timer, armed while a reader runs a host function (once per
// budget, not per call: arming a timer can wake an idle thread), starts
// the next reader when one has run a host function for hostInlineBudget.
type hostReading struct {
	id    uint64
	res   chan replyResult
	start func() // starts the next reader (goHostReader)

	mu      sync.Mutex // guards the fields below
	gen     uint64     // counts the host functions run inline
	inline  bool       // the reader runs host function gen
	since   time.Time  // when it began
	taken   uint64     // the last gen whose reader was relieved of reading
	timer   *time.Timer
	armed   bool // the timer will fire
	stopped bool // the reply was handed over: no reader starts
}

// enter marks the start of an inline host function; it returns its gen.
func (hr *hostReading) enter() uint64 {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	hr.gen++
	hr.inline, hr.since = true, time.Now()
	if !hr.armed {
		hr.armed = true
		if hr.timer == nil {
			hr.timer = time.AfterFunc(hostInlineBudget, hr.watch)
		} else {
			hr.timer.Reset(hostInlineBudget)
		}
	}
	return hr.gen
}

// leave marks the end of inline host function gen; it reports whether
// its reader still reads (no other reader took over).
func (hr *hostReading) leave(gen uint64) bool {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	if hr.gen == gen {
		hr.inline = false
	}
	// A reader runs gens in order, and a later gen runs only after a
	// takeover relieved it: it was relieved if any gen from its own on
	// was taken.
	return hr.taken < gen
}

// watch is the timer's: it starts another reader when the current one
// has been running a host function for hostInlineBudget.
func (hr *hostReading) watch() {
	hr.mu.Lock()
	if !hr.inline || hr.stopped {
		hr.armed = false
		hr.mu.Unlock()
		return
	}
	if left := hostInlineBudget - time.Since(hr.since); left > 0 {
		hr.timer.Reset(left)
		hr.mu.Unlock()
		return
	}
	hr.taken, hr.inline, hr.armed = hr.gen, false, false
	hr.mu.Unlock()
	hr.start()
}

// deliver hands over the reading's outcome; the timer is stopped.
func (hr *hostReading) deliver(r replyResult) {
	hr.mu.Lock()
	hr.stopped = true
	if hr.timer != nil {
		hr.timer.Stop()
	}
	hr.mu.Unlock()
	hr.res <- r
}

// goHostReader starts a goroutine that reads hr's frames (see
// hostReader). first, if not nil, is a HOST_CALL already read, to serve
// first. Once the worker is closed it starts nothing and hands over its
// error.
func (w *Worker) goHostReader(hr *hostReading, first *frame) {
	w.hosts.mu.Lock()
	if w.hosts.closed {
		w.hosts.mu.Unlock()
		hr.deliver(replyResult{err: w.unavailable()})
		return
	}
	w.hosts.running.Add(1)
	w.hosts.mu.Unlock()
	go w.hostReader(hr, first)
}

// hostReader reads request hr.id's frames: it serves the HOST_CALL frames
// that come, each on this goroutine (see serveInline), until the reply or
// an error (a read timeout too), which it hands over. It stops reading,
// handing nothing over, when another reader took over.
func (w *Worker) hostReader(hr *hostReading, first *frame) {
	defer w.hosts.running.Done()
	if first != nil && !w.serveInline(hr, *first) {
		return
	}
	for {
		f, err := w.rd.next()
		if err == nil && f.typ&^frameShared == frameHostCall {
			if !w.serveInline(hr, f) {
				return
			}
			continue
		}
		f, err = w.checkReply(hr.id, f, err)
		hr.deliver(replyResult{f: f, err: err})
		return
	}
}

// serveInline runs the host call f on the goroutine reading hr's frames.
// It reports whether that goroutine still reads: false when the function
// took so long that another reader took over. A malformed f kills the
// worker (the error is handed over, false).
func (w *Worker) serveInline(hr *hostReading, f frame) bool {
	hc, err := w.parseHostCall(f)
	if err != nil {
		perr := &ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()}
		w.die(perr)
		hr.deliver(replyResult{err: perr})
		return false
	}
	gen := hr.enter()
	w.runHostCall(hc)
	return hr.leave(gen)
}

// parseHostCall checks and decodes a HOST_CALL frame and finds the call it
// names. An error means the child broke the protocol.
func (w *Worker) parseHostCall(f frame) (hostCall, error) {
	if f.typ&frameShared != 0 {
		return hostCall{}, fmt.Errorf("%w: HOST_CALL in the shared region", ErrBadFrame)
	}
	if f.id&hostCallIDBit == 0 {
		return hostCall{}, fmt.Errorf("%w: HOST_CALL id %d without the host call bit", ErrBadFrame, f.id)
	}
	callID, name, args, err := decodeHostCall(f.payload)
	if err != nil {
		return hostCall{}, err
	}
	hc := hostCall{id: f.id, callID: callID, name: name, args: args}
	w.hosts.mu.Lock()
	if sc := w.hosts.scopes[callID]; sc != nil {
		if sc.ctx == nil {
			sc.ctx, sc.cancel = context.WithCancel(worker.WithCorrelationID(sc.parent, sc.cid))
		}
		hc.ctx = sc.ctx
	}
	w.hosts.mu.Unlock()
	return hc, nil
}

// runHostCall runs one host function and sends its reply.
func (w *Worker) runHostCall(hc hostCall) {
	var reply []byte
	switch {
	case w.cfg.Host == nil:
		reply = host.Reply(nil, fmt.Errorf("%w %q: this worker has no host functions", host.ErrUnknownFunction, hc.name))
	case hc.ctx == nil:
		reply = host.Reply(nil, fmt.Errorf("subproc: host function %q called for request %d, which is not in flight (the call ended)", hc.name, hc.callID))
	default:
		reply = w.cfg.Host.Invoke(hc.ctx, hc.name, hc.args)
	}
	if len(reply) > w.cfg.MaxFrame {
		reply = host.Reply(nil, fmt.Errorf("subproc: result of host function %q: %d bytes exceed the frame limit of %d bytes", hc.name, len(reply), w.cfg.MaxFrame))
	}
	n, err := w.write(w.stopCtx, frameHostReply, hc.id, reply)
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
