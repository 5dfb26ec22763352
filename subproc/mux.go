package subproc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/internal/wstream"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// The concurrent mode (Config.Concurrency > 1 or Config.PipelineDepth > 0).
//
// Up to Concurrency+PipelineDepth requests are in flight at once, each
// holding one token of the worker's slot. One reader goroutine, started at
// the first request, reads every frame the child sends and routes it by
// request id: a REPLY or NOT_STARTED to the request's caller, a HOST_CALL
// to a goroutine of its own that runs the host function and writes its
// HOST_REPLY. Writers share the connection through wlock.
//
// A request whose context ends returns at once; the host sends CANCEL for
// its id (the child removes it if it is still queued, answering
// NOT_STARTED, or cancels the running call) and the request's slot is
// freed when its outcome arrives. If none arrives within InterruptGrace
// the worker is killed. When the reader stops (the child crashed, broke
// the protocol or the connection was closed) every request in flight gets
// the worker's error, exactly once.
//
// The child's end is _Mux in python/snakepit/_process.py. STREAM_NEXT and
// STREAM_CLOSE carry the stream's id (its STREAM_OPEN's request id) as a
// little-endian uint64 payload.
//
// The sequential pipelined mode (Concurrency 1, PipelineDepth > 0) shares
// this machinery: the child runs the requests one at a time on its main
// thread, in the order they were written, and replies in that order. The
// host keeps that order (muxState.order): the oldest request outstanding
// is the one running (or about to start). A request whose context ends
// gets CANCEL as above; when it is (or becomes) the oldest, the host also
// sends SIGUSR1, repeated until its outcome arrives, and starts its
// InterruptGrace. The child heeds a SIGUSR1 only for a running request
// whose CANCEL it can see, so a late signal never reaches the request
// after it. A request still queued gets NOT_STARTED when the child drains
// its CANCEL, before it starts the next request.

// muxSentHook, set only by tests, sees each request frame the concurrent
// mode has sent.
var muxSentHook func(typ byte, id uint64)

// seqWaitHook, set only by tests, runs in the sequential pipelined mode
// each time a caller looks for the reading role.
var seqWaitHook func(ctx context.Context)

// muxState is the concurrent mode's routing table.
type muxState struct {
	mu     sync.Mutex
	calls  map[uint64]*muxCall // requests in flight, by request id
	err    error               // set when the reader stopped: no request is accepted
	start  sync.Once
	done   chan struct{} // closed when the reader returned
	reader bool          // the reader was started (guarded by mu)
	seq    bool          // the sequential pipelined mode
	// seq: there is no reader goroutine for good. A request's caller
	// reads the connection while it waits (no hand-off between goroutines
	// when it is alone); when none does and a request whose caller left
	// (or a Withdraw) waits for its answer, a goroutine reads until none
	// is left. Guarded by mu.
	reading  bool          // a caller or that goroutine reads the connection
	turn     chan struct{} // closed (and replaced) when reading ends, if turnSeen
	turnSeen bool          // a caller waits on turn
	waits    int           // Withdraws waiting for their answer
	order    []uint64      // seq: the requests outstanding, oldest first, in the order they were written (guarded by mu)
}

// muxCall is one request in flight.
type muxCall struct {
	req     *worker.Request // the Call's request (for Withdraw); nil for other requests
	res     chan muxResult  // gets the outcome, once, unless abandoned
	command string          // for the error that kills a worker whose call does not stop
	cid     string
	// Guarded by muxState.mu:
	withdraw chan bool   // a Withdraw waiting for the child's answer
	abandon  func()      // set when the caller left: runs when the outcome arrives
	timer    *time.Timer // the grace period of an abandoned request
	// seq: closed when the outcome of an abandoned request that the host
	// interrupts (it was the oldest) arrived; nil until then.
	settled chan struct{}
}

// muxResult is a request's outcome.
type muxResult struct {
	f          frame
	notStarted bool // the child removed it before it started
	err        error
}

func newMuxState(cfg *Config) *muxState {
	if !cfg.concurrent() {
		return nil
	}
	return &muxState{calls: make(map[uint64]*muxCall), done: make(chan struct{}), seq: cfg.sequential(), turn: make(chan struct{})}
}

// startReader starts the reader goroutine once.
func (w *Worker) startReader() {
	m := w.mux
	m.start.Do(func() {
		m.mu.Lock()
		m.reader = true
		m.mu.Unlock()
		go w.muxRead()
	})
}

// waitReader waits for the reader to return, if it was started. Call it
// once the connection is closed.
func (w *Worker) waitReader() {
	m := w.mux
	m.start.Do(func() {}) // none starts from now on
	m.mu.Lock()
	started := m.reader
	m.mu.Unlock()
	if started {
		<-m.done
	}
}

// muxRead reads and routes the child's frames until the connection fails.
func (w *Worker) muxRead() {
	defer close(w.mux.done)
	for {
		f, err := w.rd.next()
		if err != nil {
			w.muxFail(w.connError(err))
			return
		}
		if !w.muxRoute(f) {
			return
		}
	}
}

// muxRoute routes one frame the child sent; on a protocol violation it
// kills the worker, fails every request and returns false.
func (w *Worker) muxRoute(f frame) bool {
	var err error
	switch f.typ {
	case frameReply:
		err = w.muxDeliver(f.id, muxResult{f: f})
	case frameNotStarted, frameStarted:
		if len(f.payload) != 0 {
			err = fmt.Errorf("%w: type %d with a payload of %d bytes", ErrBadFrame, f.typ, len(f.payload))
		} else if f.typ == frameNotStarted {
			err = w.muxDeliver(f.id, muxResult{notStarted: true})
		} else {
			w.muxStarted(f.id)
		}
	case frameHostCall, frameHostCall | frameShared, frameHostGrant:
		var hc hostCall
		if hc, err = w.parseHostCall(f); err == nil {
			w.goHostCall(hc)
		}
	default:
		err = fmt.Errorf("%w: got type %d id %d from the child", ErrBadFrame, f.typ, f.id)
	}
	if err != nil {
		perr := &ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()}
		w.die(perr)
		w.muxFail(perr)
		return false
	}
	return true
}

// goHostCall runs a host call on a goroutine of its own (Close waits for
// it); once the worker is closing it is not run.
func (w *Worker) goHostCall(hc hostCall) {
	w.hosts.mu.Lock()
	if w.hosts.closed {
		w.hosts.mu.Unlock()
		return
	}
	w.hosts.running.Add(1)
	w.hosts.mu.Unlock()
	go func() {
		defer w.hosts.running.Done()
		w.runHostCall(hc)
	}()
}

// muxDeliver hands request id its outcome. A reply for no request in
// flight breaks the protocol.
func (w *Worker) muxDeliver(id uint64, r muxResult) error {
	m := w.mux
	m.mu.Lock()
	c := m.calls[id]
	if c == nil {
		m.mu.Unlock()
		return fmt.Errorf("%w: a reply for request %d, which is not in flight", ErrBadFrame, id)
	}
	delete(m.calls, id)
	if c.withdraw != nil {
		c.withdraw <- r.notStarted
		c.withdraw = nil
	}
	abandon := c.abandon
	c.stopGrace()
	if m.seq {
		m.unorder(id)
		w.seqEscalate()
	}
	m.mu.Unlock()
	if abandon != nil {
		if r.err == nil && !r.notStarted {
			if rep, err := python.DecodeReply(r.f.payload, "", ""); err == nil {
				w.emit(context.Background(), rep.Logs)
			}
		}
		abandon()
		return nil
	}
	c.res <- r
	return nil
}

// muxStarted answers a Withdraw of request id: it had started.
func (w *Worker) muxStarted(id uint64) {
	m := w.mux
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.calls[id]; c != nil && c.withdraw != nil {
		c.withdraw <- false
		c.withdraw = nil
	}
}

// muxFail ends every request in flight with err, each once; no request is
// accepted any more.
func (w *Worker) muxFail(err error) {
	m := w.mux
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	calls := m.calls
	m.calls = make(map[uint64]*muxCall)
	for _, c := range calls {
		if c.withdraw != nil {
			c.withdraw <- false
			c.withdraw = nil
		}
		c.stopGrace()
	}
	m.order = nil
	m.mu.Unlock()
	for _, c := range calls {
		if c.abandon != nil {
			c.abandon()
		} else {
			c.res <- muxResult{err: err}
		}
	}
}

// muxForget takes request id out of the table after its frame could not
// be sent. It reports false when the request's outcome was handed over
// meanwhile (the reader failed).
func (m *muxState) forget(id uint64, c *muxCall) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.calls[id] == c {
		delete(m.calls, id)
		if m.seq {
			m.unorder(id)
		}
		return true
	}
	return false
}

// stopGrace stops an abandoned request's grace period and its interrupts,
// if they were started, as its outcome arrived. Call it with the state's
// mu held.
func (c *muxCall) stopGrace() {
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.settled != nil {
		close(c.settled)
		c.settled = nil
	}
}

// unorder takes request id out of the order of the requests outstanding.
// Call it with mu held.
func (m *muxState) unorder(id uint64) {
	for i, o := range m.order {
		if o == id {
			m.order = append(m.order[:i], m.order[i+1:]...)
			return
		}
	}
}

// seqEscalate interrupts the oldest request outstanding if its caller has
// left and it is not interrupted yet: SIGUSR1 until its outcome arrives,
// and its grace period starts. Call it with the state's mu held.
func (w *Worker) seqEscalate() {
	m := w.mux
	if len(m.order) == 0 {
		return
	}
	id := m.order[0]
	c := m.calls[id]
	if c == nil || c.abandon == nil || c.settled != nil {
		return
	}
	settled := make(chan struct{})
	c.settled = settled
	c.timer = time.AfterFunc(w.cfg.InterruptGrace, func() {
		m.mu.Lock()
		pending := m.calls[id] == c
		m.mu.Unlock()
		if pending {
			w.die(&worker.DeadError{WorkerID: w.id,
				Reason: fmt.Sprintf("handler %q (correlation %s) did not stop within %v of its deadline", c.command, c.cid, w.cfg.InterruptGrace)})
		}
	})
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		w.interruptUntil(settled)
	}()
}

// interruptUntil sends SIGUSR1 to the child, again and again (further
// apart each time), until settled closes or the child was reaped.
func (w *Worker) interruptUntil(settled <-chan struct{}) {
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		select {
		case <-settled:
			return
		case <-w.exited:
			return // reaped: the pid may belong to another process now
		default:
		}
		w.signalProcess(unix.SIGUSR1)
		t := time.NewTimer(delay)
		select {
		case <-settled:
		case <-w.exited:
		case <-t.C:
		}
		t.Stop()
	}
}

// muxRequest is request for the concurrent mode: it sends request id and
// waits for its outcome. If ctx ends first it returns at once with
// abandoned set: CANCEL goes to the child, and onAbandon runs once the
// outcome arrives (or the worker dies); if none arrives within
// InterruptGrace, the worker is killed. sc, if not nil, is begun under id
// (the caller ends it). req is the Call's request (for Withdraw), or nil.
func (w *Worker) muxRequest(ctx context.Context, id uint64, typ byte, payload []byte, command, cid string, onAbandon func(), sc *hostScope, req *worker.Request) (r python.Reply, abandoned bool, err error) {
	wrap := func(err error) error {
		return &worker.CallError{Command: command, CorrelationID: cid, Err: err}
	}
	m := w.mux
	if !m.seq {
		w.startReader()
	}
	c := &muxCall{req: req, res: make(chan muxResult, 1), command: command, cid: cid}
	m.mu.Lock()
	if m.err != nil {
		err := m.err
		m.mu.Unlock()
		return r, false, wrap(err)
	}
	m.calls[id] = c
	m.mu.Unlock()
	w.beginScope(sc, id)
	var before func()
	if m.seq {
		before = func() {
			m.mu.Lock()
			if m.calls[id] == c {
				m.order = append(m.order, id)
			}
			m.mu.Unlock()
		}
	}
	if n, err := w.writeFrame(ctx, typ, id, payload, before); err != nil {
		if !m.forget(id, c) {
			<-c.res // the reader failed and handed over its error meanwhile
		}
		if ctx.Err() != nil && n == 0 {
			return r, false, wrap(context.Cause(ctx))
		}
		if ctx.Err() != nil {
			w.die(&worker.DeadError{WorkerID: w.id, Reason: "request write interrupted", Err: context.Cause(ctx)})
			return r, false, wrap(context.Cause(ctx))
		}
		var nse *worker.NotSerializableError
		if errors.As(err, &nse) {
			return r, false, wrap(err)
		}
		return r, false, wrap(w.connError(err))
	}
	if muxSentHook != nil {
		muxSentHook(typ, id)
	}
	if m.seq {
		if res, ok := w.seqWait(ctx, c); ok {
			return w.muxOutcome(ctx, res, command, cid)
		}
	} else {
		select {
		case res := <-c.res:
			return w.muxOutcome(ctx, res, command, cid)
		case <-ctx.Done():
		}
	}
	m.mu.Lock()
	if m.calls[id] != c {
		m.mu.Unlock() // the outcome came meanwhile
		return w.muxOutcome(ctx, <-c.res, command, cid)
	}
	c.abandon = onAbandon
	if m.seq {
		// Interrupted (with its grace period) once it is the oldest.
		w.seqEscalate()
		w.seqReadLocked()
		m.mu.Unlock()
		w.sendCancel(id, nil)
		return r, true, wrap(context.Cause(ctx))
	}
	c.timer = time.AfterFunc(w.cfg.InterruptGrace, func() {
		m.mu.Lock()
		pending := m.calls[id] == c
		m.mu.Unlock()
		if pending {
			w.die(&worker.DeadError{WorkerID: w.id,
				Reason: fmt.Sprintf("handler %q (correlation %s) did not stop within %v of its deadline", command, cid, w.cfg.InterruptGrace)})
		}
	})
	m.mu.Unlock()
	w.sendCancel(id, nil)
	return r, true, wrap(context.Cause(ctx))
}

// sendCancel sends CANCEL for request id in the background (the caller
// returns at once); payload "w" withdraws it only if it has not started.
func (w *Worker) sendCancel(id uint64, payload []byte) {
	w.bg.Add(1)
	go func() {
		defer w.bg.Done()
		n, err := w.write(w.stopCtx, frameCancel, id, payload)
		if err != nil && n > 0 && n < headerSize+len(payload) {
			w.die(&worker.DeadError{WorkerID: w.id, Reason: "cancel write interrupted", Err: err})
		}
	}()
}

// muxOutcome turns a request's outcome into its reply or error.
func (w *Worker) muxOutcome(ctx context.Context, res muxResult, command, cid string) (python.Reply, bool, error) {
	var r python.Reply
	switch {
	case res.err != nil:
		return r, false, &worker.CallError{Command: command, CorrelationID: cid, Err: res.err}
	case res.notStarted:
		err := worker.ErrNotStarted
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", worker.ErrNotStarted, context.Cause(ctx))
		}
		return r, false, &worker.CallError{Command: command, CorrelationID: cid, Err: err}
	}
	r, err := python.DecodeReply(res.f.payload, command, cid)
	if err != nil {
		w.die(&ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()})
		return r, false, &worker.CallError{Command: command, CorrelationID: cid, Err: w.Err()}
	}
	w.emit(ctx, r.Logs)
	// A reply read as the context ended: the call ended with its context
	// (as it would have a moment later), whatever the handler returned.
	if ctx.Err() != nil {
		return r, false, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
	}
	if r.Err != nil {
		if errors.Is(r.Err, python.ErrCancelled) {
			return r, false, python.CancelledError(ctx, r.Err, command, cid)
		}
		return r, false, r.Err
	}
	return r, false, nil
}

// callMux is Call in the concurrent mode.
func (w *Worker) callMux(ctx context.Context, req *worker.Request, deadline time.Time) (*worker.Response, error) {
	args, err := python.EncodeCall(nil, req, deadline)
	if err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(ctx); err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	sc := w.newScope(ctx, req.CorrelationID)
	r, abandoned, err := w.muxRequest(ctx, w.nextID.Add(1), frameCall, args, req.Command, req.CorrelationID, w.releaseSlot, sc, req)
	w.endScope(sc)
	if !abandoned {
		w.releaseSlot()
	}
	if err != nil {
		return nil, err
	}
	return &worker.Response{Result: r.Payload}, nil
}

// Withdraw takes back a request that a Call sent to the child and that is
// queued there, not started (see [Config.PipelineDepth]): it returns true
// and that Call returns an error matching [worker.ErrNotStarted]; the
// handler never runs. It returns false when req (the pointer passed to
// Call) is not in flight on this worker, has not been sent yet, or has
// started (or finished) — the call then goes on. With an error (ctx ended
// first, the worker stopped) the outcome is unknown: the Call reports it.
// In the one-call mode nothing is ever queued: it returns false.
func (w *Worker) Withdraw(ctx context.Context, req *worker.Request) (bool, error) {
	m := w.mux
	if m == nil || req == nil {
		return false, nil
	}
	m.mu.Lock()
	var id uint64
	var c *muxCall
	for cid, cc := range m.calls {
		if cc.req == req && cc.abandon == nil && cc.withdraw == nil {
			id, c = cid, cc
			break
		}
	}
	if c == nil {
		m.mu.Unlock()
		return false, nil
	}
	answer := make(chan bool, 1)
	c.withdraw = answer
	m.mu.Unlock()
	n, err := w.write(ctx, frameCancel, id, []byte("w"))
	if err != nil {
		if n > 0 && n < headerSize+1 {
			w.die(&worker.DeadError{WorkerID: w.id, Reason: "withdraw write interrupted", Err: err})
		}
		m.mu.Lock()
		if c.withdraw == answer {
			c.withdraw = nil
		}
		m.mu.Unlock()
		select {
		case ok := <-answer: // answered meanwhile (the call ended)
			return ok, nil
		default:
		}
		if ctx.Err() != nil {
			return false, context.Cause(ctx)
		}
		return false, w.connError(err)
	}
	if m.seq {
		// Someone reads for the answer; the child reads the withdraw
		// while a request runs when a signal tells it to look.
		m.mu.Lock()
		m.waits++
		w.seqReadLocked()
		m.mu.Unlock()
		defer func() {
			m.mu.Lock()
			m.waits--
			m.mu.Unlock()
		}()
		stop := make(chan struct{})
		defer close(stop)
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			w.interruptUntil(stop)
		}()
	}
	select {
	case ok := <-answer:
		return ok, nil
	case <-ctx.Done():
		return false, context.Cause(ctx)
	}
}

// streamMux is Stream in the concurrent mode: the stream holds one slot
// token until it ends (in the sequential pipelined mode, every token: the
// child has one stream at a time, and nothing else runs meanwhile); its
// operations name it by its STREAM_OPEN's id.
func (w *Worker) streamMux(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	sctx, cancel := req.WithDeadline(ctx)
	deadline, _ := sctx.Deadline()
	args, err := python.EncodeCall(nil, req, deadline)
	if err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	acquire, release := w.acquire, w.releaseSlot
	if w.mux.seq {
		acquire, release = w.acquireAll, w.releaseAll
	}
	if err := acquire(sctx); err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	cmd, cid := req.Command, req.CorrelationID
	sid := w.nextID.Add(1)
	ref := binary.LittleEndian.AppendUint64(nil, sid)
	closeGen := func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, w.cfg.InterruptGrace)
		defer cancel()
		_, abandoned, err := w.muxRequest(ctx, w.nextID.Add(1), frameStreamClose, ref, cmd, cid, release, nil, nil)
		return abandoned, err
	}
	closeAbandoned := func() {
		select {
		case <-w.done:
		default:
			if abandoned, _ := closeGen(context.Background()); abandoned {
				return
			}
		}
		release()
	}
	sc := w.newScope(sctx, cid)
	_, abandoned, err := w.muxRequest(sctx, sid, frameStreamOpen, args, cmd, cid, closeAbandoned, sc, nil)
	if err != nil {
		w.endScope(sc)
		if !abandoned {
			release()
		}
		cancel()
		return nil, err
	}
	var s *wstream.Stream
	s = wstream.New(sctx, cancel, wstream.Ops{
		Next: func(ctx context.Context) (python.Reply, bool, error) {
			return w.muxRequest(ctx, w.nextID.Add(1), frameStreamNext, ref, cmd, cid, closeAbandoned, nil, nil)
		},
		CloseGen: closeGen,
		Release:  release,
		Forget: func() {
			w.endScope(sc)
			w.streamsMu.Lock()
			delete(w.streams, s)
			w.streamsMu.Unlock()
		},
	})
	w.streamsMu.Lock()
	if w.streams == nil {
		w.streams = make(map[*wstream.Stream]struct{})
	}
	w.streams[s] = struct{}{}
	w.streamsMu.Unlock()
	if w.closing.Load() {
		_ = s.Close()
		return nil, &worker.CallError{Command: cmd, CorrelationID: cid, Err: worker.ErrClosed}
	}
	return s, nil
}

// closeStreams closes the concurrent mode's open streams, bounded by ctx.
func (w *Worker) closeStreams(ctx context.Context) {
	w.streamsMu.Lock()
	open := make([]*wstream.Stream, 0, len(w.streams))
	for s := range w.streams {
		open = append(open, s)
	}
	w.streamsMu.Unlock()
	var wg sync.WaitGroup
	for _, s := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.CloseContext(ctx)
		}()
	}
	wg.Wait()
}

// acquireAll takes every token of the slot, bounded by ctx: one taker at
// a time (streamGate), so two of them never each hold a part.
func (w *Worker) acquireAll(ctx context.Context) error {
	select {
	case w.streamGate <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-w.streamGate }()
	for n := range cap(w.slot) {
		if err := w.acquire(ctx); err != nil {
			for range n {
				w.releaseSlot()
			}
			return err
		}
	}
	return nil
}

// releaseAll frees every token of the slot.
func (w *Worker) releaseAll() {
	for range cap(w.slot) {
		w.releaseSlot()
	}
}

// seqWait waits for request c's outcome in the sequential pipelined mode,
// reading the connection itself when no one else does. It reports false
// when ctx ended first.
func (w *Worker) seqWait(ctx context.Context, c *muxCall) (muxResult, bool) {
	m := w.mux
	for {
		if seqWaitHook != nil {
			seqWaitHook(ctx)
		}
		m.mu.Lock()
		if m.reading || m.err != nil {
			turn := m.turn
			m.turnSeen = true
			m.mu.Unlock()
			select {
			case res := <-c.res:
				return res, true
			case <-turn:
				continue
			case <-ctx.Done():
				return muxResult{}, false
			}
		}
		// No one reads: a reader that routed c's outcome did so before it
		// gave up the role, so the outcome is in c.res now. Looked for
		// under the lock, not before it: a caller that read for an
		// outcome already routed would wait for a frame that never comes.
		select {
		case res := <-c.res:
			m.mu.Unlock()
			return res, true
		default:
		}
		m.reading = true
		m.mu.Unlock()
		if !w.seqReadOne(ctx) {
			select {
			case res := <-c.res:
				return res, true
			default:
			}
			return muxResult{}, false
		}
	}
}

// seqReadOne reads and routes one frame, the reading role held; it hands
// the role on. It reports false when ctx ended before a whole frame came
// (what was read of it stays in w.rd for the next reader).
func (w *Worker) seqReadOne(ctx context.Context) bool {
	var stop func() bool
	var fired chan struct{}
	if ctx.Done() != nil {
		fired = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			w.conn.SetReadDeadline(longAgo)
			close(fired)
		})
	}
	f, err := w.rd.next()
	if stop != nil && !stop() {
		<-fired // it ran: let it finish before the deadline is cleared
		w.conn.SetReadDeadline(time.Time{})
	}
	ok := true
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() != nil {
			ok = false
		} else {
			w.muxFail(w.connError(err))
		}
	} else if w.muxRoute(f) { // false: the worker died, every request has its outcome
		w.routeReady()
	}
	m := w.mux
	m.mu.Lock()
	m.endReading()
	w.seqReadLocked()
	m.mu.Unlock()
	return ok
}

// routeReady routes the frames read ahead already (no read of the
// connection, which cannot block), the reading role held: their callers
// get them without waiting to read for themselves. It reports false when
// the worker died.
func (w *Worker) routeReady() bool {
	for w.rd.ready() {
		f, err := w.rd.next()
		if err != nil {
			w.muxFail(w.connError(err))
			return false
		}
		if !w.muxRoute(f) {
			return false
		}
	}
	return true
}

// endReading gives up the reading role and wakes the callers waiting for
// it. Call it with mu held.
func (m *muxState) endReading() {
	m.reading = false
	if m.turnSeen {
		close(m.turn)
		m.turn = make(chan struct{})
		m.turnSeen = false
	}
}

// seqReadLocked starts a goroutine that reads the connection when no one
// does and an answer is awaited that no caller reads for: a request whose
// caller left, or a Withdraw. Call it with mu held.
func (w *Worker) seqReadLocked() {
	m := w.mux
	if m.reading || m.err != nil || !m.needsReader() {
		return
	}
	m.reading = true
	w.bg.Add(1)
	go w.seqReader()
}

// needsReader reports whether an answer is awaited that no caller reads
// for. Call it with mu held.
func (m *muxState) needsReader() bool {
	if m.waits > 0 {
		return true
	}
	for _, c := range m.calls {
		if c.abandon != nil {
			return true
		}
	}
	return false
}

// seqReader reads and routes frames while needsReader, then hands the
// reading role on.
func (w *Worker) seqReader() {
	defer w.bg.Done()
	m := w.mux
	for {
		f, err := w.rd.next()
		if err != nil {
			w.muxFail(w.connError(err))
		} else if w.muxRoute(f) {
			m.mu.Lock()
			more := m.needsReader()
			m.mu.Unlock()
			if more {
				continue
			}
		}
		m.mu.Lock()
		m.endReading()
		m.mu.Unlock()
		return
	}
}
