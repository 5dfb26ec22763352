package workertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// Handler scripts one command of a [Fake]: it gets the call's context and
// request and returns the (Go) result, which the Fake marshals.
type Handler func(ctx context.Context, req *worker.Request) (any, error)

// Fake is a scripted [worker.Worker] for testing code that uses workers,
// such as pools, without Python. Commands not in Handlers fail with a
// *worker.CommandNotFoundError; a handler returning a []any for Stream
// yields its items as chunks. Fake is safe for concurrent use and, like a
// real worker, runs Concurrency calls at a time (one by default); further
// calls wait for a slot, and one withdrawn (Withdraw) or whose context ends
// meanwhile fails with an error matching worker.ErrNotStarted without
// running.
type Fake struct {
	// WorkerID is returned by ID.
	WorkerID string
	// Handlers maps command names to their behaviour.
	Handlers map[string]Handler
	// Concurrency is how many calls run at once; zero: one.
	Concurrency int

	slot     chan struct{}
	initOnce sync.Once
	done     chan struct{}
	stopOnce sync.Once
	mu       sync.Mutex // guards err, sessions, waiting
	err      error
	sessions map[string]bool
	waiting  map[*worker.Request]chan struct{} // calls waiting for a slot: closed to withdraw
	calls    atomic.Int64
	closed   atomic.Bool
}

var _ worker.Worker = (*Fake)(nil)
var _ worker.SessionEnder = (*Fake)(nil)
var _ worker.Withdrawer = (*Fake)(nil)

func (f *Fake) init() {
	f.initOnce.Do(func() {
		f.slot = make(chan struct{}, max(f.Concurrency, 1))
		f.done = make(chan struct{})
		f.sessions = map[string]bool{}
		f.waiting = map[*worker.Request]chan struct{}{}
	})
}

// ID returns WorkerID.
func (f *Fake) ID() string { return f.WorkerID }

// Calls returns how many calls (and streams) started.
func (f *Fake) Calls() int64 { return f.calls.Load() }

// Kill makes the worker die with a *worker.DeadError carrying reason: the
// running call (if it waits on its context) and later calls fail.
func (f *Fake) Kill(reason string) {
	f.init()
	f.mu.Lock()
	if f.err == nil {
		f.err = &worker.DeadError{WorkerID: f.WorkerID, Reason: reason}
	}
	f.mu.Unlock()
	f.stopOnce.Do(func() { close(f.done) })
}

// Done is closed when the fake was closed or killed.
func (f *Fake) Done() <-chan struct{} {
	f.init()
	return f.done
}

// Err returns the death error set by Kill.
func (f *Fake) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Sessions returns the sessions that saw a call and were not ended.
func (f *Fake) Sessions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for s := range f.sessions {
		out = append(out, s)
	}
	return out
}

func (f *Fake) stopped() error {
	if err := f.Err(); err != nil {
		return err
	}
	return worker.ErrClosed
}

func (f *Fake) run(ctx context.Context, req *worker.Request) (any, error) {
	f.init()
	select {
	case <-f.done:
		return nil, f.stopped()
	default:
	}
	select {
	case f.slot <- struct{}{}:
	default:
		withdrawn := make(chan struct{})
		f.mu.Lock()
		f.waiting[req] = withdrawn
		f.mu.Unlock()
		var err error
		select {
		case f.slot <- struct{}{}:
		case <-ctx.Done():
			err = fmt.Errorf("%w: %w", worker.ErrNotStarted, ctx.Err())
		case <-withdrawn:
			err = worker.ErrNotStarted
		case <-f.done:
			err = f.stopped()
		}
		f.mu.Lock()
		delete(f.waiting, req)
		f.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-withdrawn: // withdrawn as the slot came: it does not run
			<-f.slot
			return nil, worker.ErrNotStarted
		default:
		}
	}
	defer func() { <-f.slot }()
	f.calls.Add(1)
	if req.SessionID != "" {
		f.mu.Lock()
		f.sessions[req.SessionID] = true
		f.mu.Unlock()
	}
	h, ok := f.Handlers[req.Command]
	if !ok {
		names := make([]string, 0, len(f.Handlers))
		for n := range f.Handlers {
			names = append(names, n)
		}
		return nil, &worker.CommandNotFoundError{Command: req.Command, Available: names}
	}
	// Like a real worker, a killed worker fails the call it was running.
	// cctx inherits ctx's end and its error (DeadlineExceeded stays
	// DeadlineExceeded); cancel is only for the kill.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		v   any
		err error
	}
	resc := make(chan result, 1)
	go func() {
		v, err := h(cctx, req)
		resc <- result{v, err}
	}()
	select {
	case r := <-resc:
		return r.v, r.err
	case <-f.done:
		cancel()
		<-resc
		return nil, f.stopped()
	}
}

// Queued returns how many calls wait for a slot.
func (f *Fake) Queued() int {
	f.init()
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiting)
}

// Withdraw takes back req if it waits for a slot (see worker.Withdrawer).
func (f *Fake) Withdraw(ctx context.Context, req *worker.Request) (bool, error) {
	f.init()
	f.mu.Lock()
	defer f.mu.Unlock()
	ch, ok := f.waiting[req]
	if !ok {
		return false, nil
	}
	delete(f.waiting, req)
	close(ch)
	return true, nil
}

// Call runs the scripted handler and marshals its result.
func (f *Fake) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	v, err := f.run(ctx, req)
	if err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	b, err := pymarshal.Marshal(v)
	if err != nil {
		return nil, &worker.NotSerializableError{What: "result", Detail: err.Error(), Err: err}
	}
	return &worker.Response{Result: b}, nil
}

// Stream runs the scripted handler, which must return a []any, and streams
// its items.
func (f *Fake) Stream(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	v, err := f.run(ctx, req)
	if err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	items, ok := v.([]any)
	if !ok {
		return nil, worker.ErrStreamMismatch
	}
	return &fakeStream{items: items}, nil
}

type fakeStream struct {
	mu    sync.Mutex
	items []any
}

func (s *fakeStream) Next(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(s.items) == 0 {
		return nil, io.EOF
	}
	v := s.items[0]
	s.items = s.items[1:]
	return pymarshal.Marshal(v)
}

func (s *fakeStream) Close() error {
	s.mu.Lock()
	s.items = nil
	s.mu.Unlock()
	return nil
}

// EndSession forgets the session.
func (f *Fake) EndSession(ctx context.Context, sessionID string) error {
	f.init()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	delete(f.sessions, sessionID)
	return nil
}

// Close stops the fake; it waits for a running call until ctx ends.
func (f *Fake) Close(ctx context.Context) error {
	f.init()
	if f.closed.Swap(true) {
		return nil
	}
	select {
	case f.slot <- struct{}{}:
		<-f.slot
	case <-ctx.Done():
		f.stopOnce.Do(func() { close(f.done) })
		return errors.New("workertest: close: a call is still running")
	case <-f.done:
	}
	f.stopOnce.Do(func() { close(f.done) })
	return nil
}
