package pool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

// fakes builds scripted workers and remembers them.
type fakes struct {
	mu      sync.Mutex
	all     []*workertest.Fake
	release chan struct{}             // "block" returns when it closes (or its ctx ends)
	fail    atomic.Int64              // the next fail starts fail
	flaky   atomic.Int64              // calls of "flaky" so far: the first kills its worker
	state   sync.Map                  // worker id + session -> value
	slots   int                       // each fake's Concurrency
	pool    atomic.Pointer[pool.Pool] // for "outer", which calls the pool back
	held    sync.Map                  // worker id -> chan struct{}: "hold" returns when it closes
}

// holdOf returns the channel that releases worker id's "hold" calls.
func (f *fakes) holdOf(id string) chan struct{} {
	ch, _ := f.held.LoadOrStore(id, make(chan struct{}))
	return ch.(chan struct{})
}

func newFakes() *fakes { return &fakes{release: make(chan struct{})} }

func (f *fakes) factory(ctx context.Context, id string) (worker.Worker, error) {
	if f.fail.Load() > 0 {
		f.fail.Add(-1)
		return nil, &worker.SetupError{WorkerID: id, Stage: "start", Err: errors.New("scripted start failure")}
	}
	var w *workertest.Fake
	w = &workertest.Fake{WorkerID: id, Concurrency: f.slots, Handlers: map[string]workertest.Handler{
		"echo": func(ctx context.Context, r *worker.Request) (any, error) {
			var args map[string]any
			if len(r.Args) > 0 {
				if err := pymarshal.Unmarshal(r.Args, &args); err != nil {
					return nil, err
				}
			}
			return map[string]any{"args": args, "worker": id, "cid": r.CorrelationID}, nil
		},
		"block": func(ctx context.Context, r *worker.Request) (any, error) {
			select {
			case <-f.release:
				return id, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		"hold": func(ctx context.Context, r *worker.Request) (any, error) {
			select {
			case <-f.holdOf(id):
				return id, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		"die": func(ctx context.Context, r *worker.Request) (any, error) {
			go w.Kill("scripted death")
			<-ctx.Done()
			return nil, ctx.Err()
		},
		"put": func(ctx context.Context, r *worker.Request) (any, error) {
			var args struct{ V string }
			pymarshal.Unmarshal(r.Args, &args)
			f.state.Store(id+"/"+r.SessionID, args.V)
			return id, nil
		},
		"get": func(ctx context.Context, r *worker.Request) (any, error) {
			v, _ := f.state.Load(id + "/" + r.SessionID)
			return v, nil
		},
		// Calls the pool back with the context a host function would get:
		// returns its own worker and the one the inner call ran on.
		"outer": func(ctx context.Context, r *worker.Request) (any, error) {
			var inner map[string]any
			if err := f.pool.Load().Call(ctx, "echo", nil, &inner); err != nil {
				return nil, err
			}
			return []any{id, inner["worker"]}, nil
		},
		"items": func(ctx context.Context, r *worker.Request) (any, error) {
			return []any{1, 2, 3}, nil
		},
		// Every worker has it, replacements too: a retry may land on one.
		"flaky": func(ctx context.Context, r *worker.Request) (any, error) {
			if f.flaky.Add(1) == 1 {
				go f.killWorkerOf(r)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return "ok", nil
		},
	}}
	f.mu.Lock()
	f.all = append(f.all, w)
	f.mu.Unlock()
	return w, nil
}

func (f *fakes) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.all)
}

func newPool(t *testing.T, f *fakes, cfg pool.Config) *pool.Pool {
	t.Helper()
	cfg.NewWorker = f.factory
	if cfg.Size == 0 {
		cfg.Size = 2
	}
	p, err := pool.New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Close(ctx)
	})
	return p
}

// eventually polls cond every 5 ms until it holds, for at most 10 s (cond
// runs on another goroutine: it must not call t.FailNow).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 10*time.Second, 5*time.Millisecond, "timed out waiting until %s", what)
}

// TestWorkerSlots: a worker with three slots takes three calls at once
// (the fake runs at most three: a fourth handed to it would wait inside
// it, not in the pool's queue), the pool queues the fourth, and a freed
// slot takes it; calls spread to the worker running fewest.
func TestWorkerSlots(t *testing.T) {
	f := newFakes()
	f.slots = 3
	p := newPool(t, f, pool.Config{Size: 1, WorkerConcurrency: 3})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 3 {
		wg.Go(func() {
			_, err := p.CallRaw(context.Background(), "block", nil)
			errs <- err
		})
	}
	eventually(t, "three calls on the one worker", func() bool {
		s := p.Stats()
		return s.InFlight == 3 && s.Busy == 1 && s.Idle == 0 && s.SlotsPerWorker == 3
	})
	wg.Go(func() {
		_, err := p.CallRaw(context.Background(), "block", nil)
		errs <- err
	})
	eventually(t, "the fourth call queued in the pool", func() bool { s := p.Stats(); return s.Waiting == 1 && s.InFlight == 3 })
	close(f.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	s := p.Stats()
	require.Zero(t, s.InFlight, "in flight after the calls: %+v", s)
	require.Equal(t, 1, s.Idle, "idle workers after the calls: %+v", s)
	require.Zero(t, s.Waiting, "waiting after the calls: %+v", s)

	// Two workers, two slots each: two blocked calls take one worker each.
	f2 := newFakes()
	f2.slots = 2
	p2 := newPool(t, f2, pool.Config{Size: 2, WorkerConcurrency: 2})
	for range 2 {
		wg.Go(func() { _, _ = p2.CallRaw(context.Background(), "block", nil) })
	}
	eventually(t, "one call on each worker", func() bool { s := p2.Stats(); return s.InFlight == 2 && s.Busy == 2 })
	close(f2.release)
	wg.Wait()
}

// TestNewWorkerSlotsAfterSessionBinds: a replacement worker's free slots
// go to the queued callers in order; when the first binds an unbound
// strict session, a fail-fast caller of that session queued behind it gets
// ErrSessionBusy and the slots go on to the next callers (no slot is taken
// for a caller already answered).
func TestNewWorkerSlotsAfterSessionBinds(t *testing.T) {
	f := newFakes()
	f.slots = 3
	p := newPool(t, f, pool.Config{Size: 1, WorkerConcurrency: 3, RestartBackoff: time.Millisecond})
	ctx := context.Background()
	var blocked sync.WaitGroup
	for range 3 {
		blocked.Go(func() { _, _ = p.CallRaw(ctx, "block", nil) })
	}
	eventually(t, "the worker's slots taken", func() bool { return p.Stats().InFlight == 3 })
	type res struct {
		name string
		err  error
	}
	results := make(chan res, 3)
	queue := func(name string, call func() error, waiting int) {
		go func() { results <- res{name, call()} }()
		eventually(t, name+" queued", func() bool { return p.Stats().Waiting == waiting })
	}
	queue("strict", func() error { _, err := p.Session("s", pool.StrictQueue).CallRaw(ctx, "echo", nil); return err }, 1)
	queue("fail-fast", func() error {
		_, err := p.Session("s", pool.StrictFailFast).CallRaw(ctx, "echo", nil)
		return err
	}, 2)
	queue("any", func() error { _, err := p.CallRaw(ctx, "echo", nil); return err }, 3)
	f.mu.Lock()
	first := f.all[0]
	f.mu.Unlock()
	first.Kill("scripted death") // the replacement is offered to the queue
	blocked.Wait()
	for range 3 {
		select {
		case r := <-results:
			if r.name == "fail-fast" && r.err != nil {
				assert.ErrorIs(t, r.err, pool.ErrSessionBusy, "%s: want ErrSessionBusy or success", r.name)
			} else {
				assert.NoError(t, r.err, r.name)
			}
		case <-time.After(10 * time.Second):
			require.FailNow(t, "queued callers still waiting", "%+v", p.Stats())
		}
	}
	eventually(t, "no slot held", func() bool { return p.Stats().InFlight == 0 })
}

// TestReentrantSkipsItsOwnWorker: a call made from a handler's host call
// never goes to the worker that handler runs on, even when that worker has
// a free slot (a plain handler holds the worker's lock for plain handlers
// while it waits): it waits for another worker.
func TestReentrantSkipsItsOwnWorker(t *testing.T) {
	f := newFakes()
	f.slots = 2
	noop := host.New("noop", func(context.Context, struct{}) (int, error) { return 0, nil })
	p := newPool(t, f, pool.Config{Size: 2, WorkerConcurrency: 2, Host: []host.Func{noop}})
	f.pool.Store(p)
	ctx := context.Background()
	var wg sync.WaitGroup
	hold := p.Session("hold", pool.StrictQueue) // both slots of one worker
	for range 2 {
		wg.Go(func() { _, _ = hold.CallRaw(ctx, "block", nil) })
	}
	eventually(t, "one worker full", func() bool { s := p.Stats(); return s.InFlight == 2 && s.Busy == 1 })
	got := make(chan []any, 1)
	errc := make(chan error, 1)
	go func() {
		var out []any
		err := p.Call(ctx, "outer", nil, &out)
		got <- out
		errc <- err
	}()
	// outer runs on the other worker; its inner call must wait for a slot
	// of the full one, not take outer's worker's free slot.
	eventually(t, "the inner call waiting", func() bool { return p.Stats().Waiting == 1 })
	close(f.release)
	wg.Wait()
	require.NoError(t, <-errc)
	out := <-got
	require.Len(t, out, 2, "the workers outer and inner ran on")
	require.NotEqual(t, out[0], out[1], "outer and inner ran on the same worker, want two different workers")
}

// TestPipelining: with every slot taken, calls take places in the busy
// workers' pipelines (not the pool's queue) up to PipelineDepth; a
// pipelined call whose context ends before it starts never runs; and a
// pipelined call behind a long call moves to the worker that frees up.
func TestPipelining(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 1, PipelineDepth: 2})
	ctx := context.Background()
	var wg sync.WaitGroup
	run := func(ctx context.Context, cmd string) chan error {
		errc := make(chan error, 1)
		wg.Go(func() { _, err := p.CallRaw(ctx, cmd, nil); errc <- err })
		return errc
	}
	// Each call reaches the worker before the next is made: a call granted
	// a place may otherwise reach its worker after a later one.
	worker0 := func() *workertest.Fake {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.all[0]
	}
	a := run(ctx, "block")
	eventually(t, "the first call running", func() bool { return p.Stats().InFlight == 1 && worker0().Calls() == 1 })
	b := run(ctx, "block")
	eventually(t, "the second call pipelined", func() bool { return worker0().Queued() == 1 })
	cctx, cancelC := context.WithCancel(ctx)
	c := run(cctx, "block")
	eventually(t, "two calls pipelined", func() bool {
		s := p.Stats()
		return s.InFlight == 3 && s.Waiting == 0 && worker0().Queued() == 2
	})
	d := run(ctx, "echo")
	eventually(t, "the fourth call queued in the pool", func() bool { return p.Stats().Waiting == 1 })
	cancelC()
	cErr := <-c
	require.ErrorIs(t, cErr, worker.ErrNotStarted, "a pipelined call cancelled before it started")
	require.ErrorIs(t, cErr, context.Canceled, "a pipelined call cancelled before it started")
	eventually(t, "the queued call pipelined in its place", func() bool { s := p.Stats(); return s.InFlight == 3 && s.Waiting == 0 })
	close(f.release)
	for name, errc := range map[string]chan error{"a": a, "b": b, "d": d} {
		require.NoError(t, <-errc, name)
	}
	wg.Wait()
	f.mu.Lock()
	calls := f.all[0].Calls()
	f.mu.Unlock()
	require.Equal(t, int64(3), calls, "the calls the worker ran (the cancelled one never ran)")

	// Two workers, one place each: a call pipelined behind a call that
	// holds its worker moves to the other worker once that one frees up.
	f2 := newFakes()
	p2 := newPool(t, f2, pool.Config{Size: 2, PipelineDepth: 1})
	h1 := run2(&wg, p2, "hold")
	h2 := run2(&wg, p2, "hold")
	// Both holds running in their workers, not only granted by the pool:
	// a call granted a slot may reach its worker after a later one.
	eventually(t, "both workers holding", func() bool {
		f2.mu.Lock()
		defer f2.mu.Unlock()
		return len(f2.all) == 2 && f2.all[0].Calls() == 1 && f2.all[1].Calls() == 1 && p2.Stats().InFlight == 2
	})
	e := run2(&wg, p2, "echo")
	var behind, other *workertest.Fake
	eventually(t, "a call pipelined", func() bool {
		f2.mu.Lock()
		defer f2.mu.Unlock()
		for i, w := range f2.all {
			if w.Queued() == 1 {
				behind, other = w, f2.all[1-i]
				return true
			}
		}
		return false
	})
	close(f2.holdOf(other.ID())) // the other worker frees up; behind's hold goes on
	select {
	case err := <-e:
		require.NoError(t, err, "the pipelined call")
	case <-time.After(10 * time.Second):
		close(f2.holdOf(behind.ID()))
		require.FailNow(t, "the pipelined call still waits behind the held worker while the other is free")
	}
	require.EqualValues(t, 1, p2.Stats().Moved, "Moved")
	close(f2.holdOf(behind.ID()))
	for _, errc := range []chan error{h1, h2} {
		require.NoError(t, <-errc)
	}
	wg.Wait()
}

func run2(wg *sync.WaitGroup, p *pool.Pool, cmd string) chan error {
	errc := make(chan error, 1)
	wg.Go(func() { _, err := p.CallRaw(context.Background(), cmd, nil); errc <- err })
	return errc
}

func TestConfigValidation(t *testing.T) {
	_, err := pool.New(context.Background(), pool.Config{Size: -1, QueueSize: 3, LifetimeJitter: 2, CallTimeout: -time.Second, Profile: 7})
	var ce *pool.ConfigError
	require.ErrorAs(t, err, &ce)
	require.GreaterOrEqual(t, len(ce.Errs), 5, "want every problem reported at once, got %v", err)
	cfg := pool.Config{Module: "m", NewWorker: newFakes().factory, Size: 1}
	p, err := pool.New(context.Background(), cfg)
	require.NoError(t, err)
	defer p.Close(context.Background())
	require.Empty(t, cfg.Name, "New modified the caller's Config")
	require.Zero(t, cfg.QueueSize, "New modified the caller's Config")
	s := p.Stats()
	require.Equal(t, "default", s.Name, "defaults: %+v", s)
	require.Equal(t, 16, s.QueueSize, "defaults: %+v", s)
	require.Equal(t, 1, s.Workers, "defaults: %+v", s)
	require.Equal(t, 1, s.SlotsPerWorker, "defaults: %+v", s)
	for _, c := range []pool.Config{
		{Module: "m", NewWorker: newFakes().factory, WorkerConcurrency: -1},
		{Module: "m", NewWorker: newFakes().factory, WorkerConcurrency: pool.MaxWorkerConcurrency + 1},
	} {
		_, err := pool.New(context.Background(), c)
		if assert.ErrorAs(t, err, &ce, "WorkerConcurrency %d", c.WorkerConcurrency) {
			assert.ErrorContains(t, err, "WorkerConcurrency", "WorkerConcurrency %d: want a ConfigError naming it", c.WorkerConcurrency)
		}
	}
	for _, c := range []pool.Config{
		{Module: "m", NewWorker: newFakes().factory, PipelineDepth: -1},
		{Module: "m", NewWorker: newFakes().factory, PipelineDepth: pool.MaxPipelineDepth + 1},
		{Module: "m", PipelineDepth: 1}, // the thread profile has no worker queue
	} {
		_, err := pool.New(context.Background(), c)
		if assert.ErrorAs(t, err, &ce, "PipelineDepth %d (%v)", c.PipelineDepth, c.Profile) {
			assert.ErrorContains(t, err, "PipelineDepth", "PipelineDepth %d (%v): want a ConfigError naming it", c.PipelineDepth, c.Profile)
		}
	}
}

func TestCall(t *testing.T) {
	p := newPool(t, newFakes(), pool.Config{})
	var out struct {
		Args   map[string]any `json:"args"`
		Worker string         `json:"worker"`
		CID    string         `json:"cid"`
	}
	ctx := pool.WithCorrelationID(context.Background(), "cid-7")
	require.NoError(t, p.Call(ctx, "echo", map[string]any{"x": 1}, &out))
	require.Equal(t, map[string]any{"x": int64(1)}, out.Args, "args the worker got")
	require.Equal(t, "cid-7", out.CID, "correlation id the worker got")
	require.NotEmpty(t, out.Worker, "worker id: got %+v", out)
	// Generated correlation ids are distinct.
	var a, b struct{ CID string }
	p.Call(context.Background(), "echo", nil, &a)
	p.Call(context.Background(), "echo", nil, &b)
	require.NotEmpty(t, a.CID, "a generated correlation id")
	require.NotEqual(t, a.CID, b.CID, "two generated correlation ids")
	require.ErrorIs(t, p.Call(context.Background(), "nope", nil, nil), worker.ErrCommandNotFound, "unknown command")
	require.ErrorIs(t, p.Call(context.Background(), "echo", []int{1}, nil), worker.ErrNotSerializable, "args not a map")
	var n int
	for c, err := range p.Stream(context.Background(), "items", nil) {
		require.NoError(t, err)
		var v int
		c.Decode(&v)
		n += v
	}
	require.Equal(t, 6, n, "stream sum")
	s := p.Stats()
	require.EqualValues(t, 4, s.Calls, "stats: %+v", s)
	require.EqualValues(t, 2, s.Failed, "stats: %+v", s)
	require.Equal(t, 2, s.Idle, "stats: %+v", s)
}

// TestSaturation: beyond the queue, calls fail at once; a waiter whose
// context ends leaves no trace; a context ending during a call returns.
func TestSaturation(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 1, QueueSize: 1})
	ctx := context.Background()
	errs := make(chan error, 2)
	go func() { errs <- p.Call(ctx, "block", nil, nil) }() // holds the worker
	eventually(t, "the worker is busy", func() bool { return p.Stats().Busy == 1 })
	go func() { errs <- p.Call(ctx, "block", nil, nil) }() // queued
	eventually(t, "a caller waits", func() bool { return p.Stats().Waiting == 1 })
	require.ErrorIs(t, p.Call(ctx, "echo", nil, nil), pool.ErrSaturated, "beyond the queue")
	close(f.release)
	for range 2 {
		require.NoError(t, <-errs)
	}
	s := p.Stats()
	require.EqualValues(t, 1, s.Rejected, "stats: %+v", s)
	require.Zero(t, s.Waiting, "stats: %+v", s)
	require.Equal(t, 1, s.Idle, "stats: %+v", s)

	// Context expiry while queued.
	f2 := newFakes()
	p2 := newPool(t, f2, pool.Config{Size: 1})
	go p2.Call(ctx, "block", nil, nil)
	eventually(t, "the worker is busy", func() bool { return p2.Stats().Busy == 1 })
	qctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, p2.Call(qctx, "echo", nil, nil), context.DeadlineExceeded, "queued past the deadline")
	s = p2.Stats()
	require.Zero(t, s.Waiting, "the waiter left a trace: %+v", s)
	close(f2.release)
	eventually(t, "the worker is idle", func() bool { return p2.Stats().Idle == 1 })
	require.NoError(t, p2.Call(ctx, "echo", nil, nil))

	// Context expiry during a call.
	f3 := newFakes()
	p3 := newPool(t, f3, pool.Config{Size: 1})
	cctx, cancel3 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel3()
	require.ErrorIs(t, p3.Call(cctx, "block", nil, nil), context.DeadlineExceeded, "deadline during the call")
	require.NoError(t, p3.Call(ctx, "echo", nil, nil), "after")
}

func TestRejectEarly(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 1, RejectEarly: true})
	ctx := context.Background()
	// Teach the pool that calls take about 100 ms.
	go func() { time.Sleep(100 * time.Millisecond); f.release <- struct{}{} }()
	require.NoError(t, p.Call(ctx, "block", nil, nil))
	go p.Call(ctx, "block", nil, nil)
	eventually(t, "the worker is busy", func() bool { return p.Stats().Busy == 1 })
	short, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, p.Call(short, "echo", nil, nil), pool.ErrSaturated, "want an early ErrSaturated")
	close(f.release)
}

// TestDeathAndRetry: a worker dying mid-call fails that call with
// ErrWorkerDead (or retries it once if idempotent), and is replaced.
func TestDeathAndRetry(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 2, RestartBackoff: time.Millisecond})
	ctx := context.Background()
	require.ErrorIs(t, p.Call(ctx, "die", nil, nil), worker.ErrWorkerDead)
	eventually(t, "the dead worker is replaced", func() bool { s := p.Stats(); return s.Workers == 2 && s.Deaths == 1 })

	// An idempotent call whose worker dies runs again on another one.
	var got string
	require.NoError(t, p.Call(ctx, "flaky", nil, &got, pool.Idempotent()), "idempotent")
	require.Equal(t, "ok", got, "idempotent")
	s := p.Stats()
	require.EqualValues(t, 1, s.Retries, "retries: %+v", s)
}

// killWorkerOf kills the fake that is running request r (the busy one).
func (f *fakes) killWorkerOf(r *worker.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.all {
		if w.Calls() > 0 {
			select {
			case <-w.Done():
			default:
				if w.Err() == nil {
					w.Kill("killed mid-call")
					return
				}
			}
		}
	}
}

func TestSessions(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 2})
	ctx := context.Background()
	s := p.Session("s1", pool.StrictQueue)
	var w1, w2 string
	require.NoError(t, s.Call(ctx, "put", map[string]any{"v": "a"}, &w1))
	for range 5 {
		var v string
		require.NoError(t, s.Call(ctx, "get", nil, &v), "strict session")
		require.Equal(t, "a", v, "strict session")
	}
	// Fail-fast while its worker is busy.
	ff := p.Session("s2", pool.StrictFailFast)
	require.NoError(t, ff.Call(ctx, "put", map[string]any{"v": "b"}, &w2))
	done := make(chan error)
	go func() { done <- ff.Call(ctx, "block", nil, nil) }()
	eventually(t, "the session's worker is busy", func() bool { return p.Stats().Busy >= 1 })
	require.ErrorIs(t, ff.Call(ctx, "get", nil, nil), pool.ErrSessionBusy, "fail-fast")
	close(f.release)
	<-done

	// The session's worker dies: the next strict call reports the loss.
	f.mu.Lock()
	for _, w := range f.all {
		if w.ID() == w1 {
			w.Kill("test")
		}
	}
	f.mu.Unlock()
	eventually(t, "the death is noticed", func() bool { return p.Stats().Deaths == 1 })
	require.ErrorIs(t, s.Call(ctx, "get", nil, nil), pool.ErrSessionLost, "after its worker died")
	var v any
	require.NoError(t, s.Call(ctx, "get", nil, &v), "the session starts afresh")
	require.Nil(t, v, "the session starts afresh")
	require.NoError(t, s.Close(ctx))
}

func TestSessionExpiry(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 1, SessionIdleTimeout: 50 * time.Millisecond})
	s := p.Session("idle", pool.StrictQueue)
	require.NoError(t, s.Call(context.Background(), "put", map[string]any{"v": "x"}, nil))
	// The pool forgets the session, then tells the worker to end it.
	eventually(t, "the idle session ends on the worker too", func() bool {
		f.mu.Lock()
		left := f.all[0].Sessions()
		f.mu.Unlock()
		return p.Stats().Sessions == 0 && len(left) == 0
	})
}

// TestRecycling: workers are replaced after MaxCalls and MaxLifetime,
// without failing a call and without losing capacity.
func TestRecycling(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 2, MaxCalls: 3})
	ctx := context.Background()
	for i := range 30 {
		require.NoError(t, p.Call(ctx, "echo", nil, nil), "call %d", i)
		time.Sleep(2 * time.Millisecond) // replacements start in the background
	}
	eventually(t, "recycled workers", func() bool { s := p.Stats(); return s.Recycled >= 5 && s.Workers == 2 })

	f2 := newFakes()
	p2 := newPool(t, f2, pool.Config{Size: 2, MaxLifetime: 30 * time.Millisecond})
	eventually(t, "lifetime recycling", func() bool { return p2.Stats().Recycled >= 2 })
	for range 10 {
		require.NoError(t, p2.Call(ctx, "echo", nil, nil))
	}
	s := p2.Stats()
	require.Equal(t, 2, s.Workers, "capacity: %+v", s)
}

// TestCrashLoop: replacements that keep failing mark the pool degraded and
// back off instead of spinning; calls fail fast once no worker is left.
func TestCrashLoop(t *testing.T) {
	f := newFakes()
	p := newPool(t, f, pool.Config{Size: 1, RestartBackoff: 5 * time.Millisecond, MaxRestartBackoff: 50 * time.Millisecond, CrashLoopThreshold: 3})
	f.fail.Store(1 << 30)
	f.mu.Lock()
	f.all[0].Kill("crash")
	f.mu.Unlock()
	eventually(t, "degraded", func() bool { return errors.Is(p.Health(), pool.ErrDegraded) })
	require.ErrorIs(t, p.Call(context.Background(), "echo", nil, nil), pool.ErrDegraded)
	s1 := p.Stats().StartFailures
	time.Sleep(200 * time.Millisecond)
	d := p.Stats().StartFailures - s1
	require.LessOrEqual(t, d, int64(10), "%d start attempts in 200 ms: the pool spins", d)
	f.fail.Store(0)
	eventually(t, "recovered", func() bool { return p.Stats().Workers == 1 })
	require.NoError(t, p.Call(context.Background(), "echo", nil, nil), "after recovery")
}

func TestStartFailure(t *testing.T) {
	f := newFakes()
	f.fail.Store(1)
	_, err := pool.New(context.Background(), pool.Config{Size: 3, NewWorker: f.factory})
	require.ErrorIs(t, err, worker.ErrSetup)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.all {
		select {
		case <-w.Done():
		default:
			t.Fatalf("worker %s left running after a failed start", w.ID())
		}
	}
}

func TestCloseWithBusyWorkers(t *testing.T) {
	f := newFakes()
	p, err := pool.New(context.Background(), pool.Config{Size: 2, NewWorker: f.factory})
	require.NoError(t, err)
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- p.Call(context.Background(), "block", nil, nil) }()
	}
	eventually(t, "busy and waiting", func() bool { s := p.Stats(); return s.Busy == 2 && s.Waiting == 1 })
	closed := make(chan error)
	go func() { closed <- p.Close(context.Background()) }()
	require.ErrorIs(t, <-errs, pool.ErrClosed, "the waiter")
	time.Sleep(20 * time.Millisecond)
	select {
	case <-closed:
		require.FailNow(t, "Close returned while calls were in flight")
	default:
	}
	close(f.release)
	for range 2 {
		require.NoError(t, <-errs, "in-flight call")
	}
	require.NoError(t, <-closed)
	require.ErrorIs(t, p.Call(context.Background(), "echo", nil, nil), pool.ErrClosed, "after Close")
	require.NoError(t, p.Close(context.Background()), "second Close")
	for _, w := range f.all {
		select {
		case <-w.Done():
		default:
			t.Fatalf("worker %s still running after Close", w.ID())
		}
	}
}

// TestStress runs mixed calls, sessions and worker deaths concurrently;
// every call ends exactly once. SNAKEPIT_POOL_STRESS sets the number of
// calls (default 2000).
func TestStress(t *testing.T) {
	n := 2000
	if s := os.Getenv("SNAKEPIT_POOL_STRESS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	f := newFakes()
	close(f.release) // "block" returns at once
	p := newPool(t, f, pool.Config{Size: 4, QueueSize: 8, MaxCalls: 50, RestartBackoff: time.Millisecond})
	var ended, ok, failed atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / 16 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				var err error
				switch i % 5 {
				case 0:
					err = p.Session(fmt.Sprint("s", g), pool.Hint).Call(ctx, "put", map[string]any{"v": "x"}, nil)
				case 1:
					err = p.Call(ctx, "die", nil, nil, pool.Idempotent())
				default:
					err = p.Call(ctx, "echo", map[string]any{"i": i}, nil)
				}
				cancel()
				ended.Add(1)
				if err == nil {
					ok.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	total := int64(n / 16 * 16)
	t.Logf("stress: %d calls, %d ok, %d failed; %+v", ended.Load(), ok.Load(), failed.Load(), p.Stats())
	require.Equal(t, total, ended.Load(), "calls ended")
	require.Equal(t, total, ok.Load()+failed.Load(), "calls ended ok or failed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.Close(ctx))
}

// TestCallSettings: Settings reads back what the options ask for, for
// packages that carry pool calls elsewhere (remote).
func TestCallSettings(t *testing.T) {
	require.Equal(t, pool.CallSettings{}, pool.Settings())
	got := pool.Settings(pool.WithAttachments([]byte("a")), pool.Idempotent(), pool.WithAttachments([]byte("b"), []byte("c")))
	require.Equal(t, pool.CallSettings{Idempotent: true, Attachments: [][]byte{[]byte("a"), []byte("b"), []byte("c")}}, got)
}
