// Package pool runs Python handlers in a pool of workers of one profile —
// thread (sub-interpreters in this process) or process (child processes) —
// behind one API: calls with backpressure, streams, sessions with worker
// affinity, recycling, supervision and metrics.
//
// A pool is created with [New] from a [Config] and used concurrently:
//
//	p, err := pool.New(ctx, pool.Config{Module: "my_adapter", Paths: []string{"./py"}})
//	...
//	var out Result
//	err = p.Call(ctx, "predict", map[string]any{"x": 1}, &out)
//
// Several pools can live in one process, each independent (a process holds
// one libpython, shared by its thread-profile pools).
//
// A worker has [Config.WorkerConcurrency] slots (one by default): the pool
// gives it at most that many calls at once, and in the process profile up to
// [Config.PipelineDepth] more while every worker is busy (see pipeline.go).
// Process workers can be forked from a template process ([Config.ForkServer]).
package pool

import (
	"container/list"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/snakepit-go/snakepit/worker"
)

// Errors a caller branches on.
var (
	// ErrSaturated: the wait queue is full (or, with RejectEarly, the
	// estimated wait exceeds the call's remaining deadline). Nothing ran.
	ErrSaturated = errors.New("pool: saturated")
	// ErrClosed: the pool is closed or closing. Nothing ran.
	ErrClosed = errors.New("pool: closed")
	// ErrDegraded: no worker is alive and they keep failing (a crash loop,
	// or an adapter that no longer starts); see Pool.Health.
	ErrDegraded = errors.New("pool: degraded: workers keep failing")
	// ErrSessionLost: the worker holding a session's state died or was
	// recycled; the state is gone. The next call starts the session afresh.
	ErrSessionLost = errors.New("pool: session state lost (its worker died or was recycled)")
	// ErrSessionBusy: a strict-fail-fast session's worker is busy.
	ErrSessionBusy = errors.New("pool: session's worker is busy")
	// ErrReentrant: a host function called this pool back, but the call
	// could never get a worker: it needs the session's worker, which is
	// the one waiting on that host function, or every worker of the pool
	// is waiting on host functions up the chain of the call.
	ErrReentrant = errors.New("pool: host function calls back into the worker waiting on it")
)

// Pool is a pool of workers. It is safe for concurrent use.
type Pool struct {
	cfg       Config
	slots     int // calls one worker runs at once (Config.WorkerConcurrency)
	depth     int // calls a busy worker may hold besides (Config.PipelineDepth)
	log       *slog.Logger
	newWorker func(ctx context.Context, id string) (worker.Worker, error)
	// closeProfile stops what the profile holds besides the workers (the
	// fork server); called once every worker is closed.
	closeProfile func(ctx context.Context)
	// effective reports the profile the workers run (Stats.Effective); nil
	// with Config.NewWorker.
	effective func() Profile

	ctx    context.Context // the pool's lifetime: start-ups, supervision
	cancel context.CancelFunc
	// stopCtx bounds the closing of workers that leave service (retired,
	// dead): it ends when Close's context ends, so no Close outlives it.
	stopCtx context.Context
	stop    context.CancelFunc

	cidPrefix string
	tracer    trace.Tracer // nil: Config.TracerProvider unset
	cidSeq    atomic.Uint64
	memberSeq atomic.Uint64

	mu         sync.Mutex // guards the fields below
	closed     bool
	members    map[*member]bool // live workers, any state
	pipes      list.List        // *pipeEntry: calls pipelined to a busy worker, oldest first
	idle       []*member        // workers in service with a free slot (see member)
	waiters    list.List        // *waiter, FIFO
	inflight   int              // calls holding a worker
	starting   int              // workers being started
	sessions   map[string]*sessionEntry
	deaths     []time.Time // recent deaths and start failures, for crash-loop detection
	failStreak int         // consecutive failures, for backoff
	lastErr    error       // the latest death or start failure
	drained    chan struct{}

	closing   chan struct{} // closed when Close begins
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup // every goroutine the pool starts

	stats counters
}

type member struct {
	w        worker.Worker
	id       string
	started  time.Time
	retireAt time.Time // zero: no lifetime limit

	// The fields below are guarded by Pool.mu. A worker runs up to
	// Config.WorkerConcurrency calls at once (its slots); active of them
	// are held by callers. A member with a free slot that is in service
	// (not retiring, not gone) is in Pool.idle (inIdle); one whose slots
	// are all held is busy; a retiring one leaves once active is 0.
	calls     int64
	active    int  // slots held by callers
	inIdle    bool // it is in Pool.idle (then active < slots, not retiring or gone)
	replacing bool // a replacement is starting or started: it no longer counts towards Size
	retiring  bool // its replacement is in service: it leaves when idle
	gone      bool // removed from the pool
	stopping  atomic.Bool
}

// waiter is a caller queued for a worker.
type waiter struct {
	// sess is set for a strict session: the waiter wants the session's
	// worker, or any worker while the session is unbound (the worker it
	// gets is then bound to the session).
	sess     *sessionEntry
	failFast bool
	excl     []*member  // workers up the caller's chain of host calls (see chainLocked): not for it
	pipe     *pipeEntry // a call that may be pipelined (see Config.PipelineDepth); nil: never
	ch       chan grant // buffered: one grant
	handed   bool       // a grant was sent on ch (guarded by Pool.mu)
}

// grant is what a waiter gets: a worker, or why it will not get one.
type grant struct {
	m   *member
	err error
}

// accepts reports whether w may take one of m's places: a slot, or
// (slots full) a place in its pipeline.
func (w *waiter) accepts(m *member, slots int) bool {
	if t := w.target(); t != nil && t != m {
		return false
	}
	if m.active >= slots && w.pipe == nil {
		return false
	}
	return !slices.Contains(w.excl, m)
}

// target returns the member w waits for, nil for any.
func (w *waiter) target() *member {
	if w.sess != nil {
		return w.sess.m
	}
	return nil
}

// New starts a pool: Size workers, StartConcurrency at a time, each ready
// (health-checked) before it takes work. It returns when all are ready, or
// the first start-up error (matching worker.ErrSetup), or ctx's error — then
// with no worker left behind. Start-ups belong to the pool, not to ctx:
// ctx only bounds how long New waits.
func New(ctx context.Context, cfg Config) (*Pool, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var tok [4]byte
	_, _ = crand.Read(tok[:])
	var tracer trace.Tracer
	if c.TracerProvider != nil {
		tracer = c.TracerProvider.Tracer(tracerName)
	}
	p := &Pool{
		tracer:    tracer,
		cfg:       c,
		slots:     c.WorkerConcurrency,
		depth:     c.PipelineDepth,
		log:       c.Logger.With("pool", c.Name),
		members:   map[*member]bool{},
		sessions:  map[string]*sessionEntry{},
		closing:   make(chan struct{}),
		cidPrefix: hex.EncodeToString(tok[:]),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.stopCtx, p.stop = context.WithCancel(context.Background())
	p.closeProfile = func(context.Context) {}
	if p.newWorker = c.NewWorker; p.newWorker == nil {
		prof, effective, err := newProfile(c)
		if err != nil {
			p.cancel()
			p.stop()
			return nil, err
		}
		p.newWorker, p.closeProfile, p.effective = prof.newWorker, prof.close, effective
		// The fork server starts before the workers, bounded like a
		// worker's start and by ctx.
		pctx, cancel := context.WithTimeout(p.ctx, c.StartTimeout)
		stopAfter := context.AfterFunc(ctx, cancel)
		err = prof.prepare(pctx)
		stopAfter()
		cancel()
		if err != nil {
			p.cancel()
			p.stop()
			p.closeProfile(context.Background())
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			return nil, fmt.Errorf("pool %s: start: %w", c.Name, err)
		}
	}

	type result struct {
		m   *member
		err error
	}
	results := make(chan result, c.Size)
	sem := make(chan struct{}, c.StartConcurrency)
	for range c.Size {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			select {
			case sem <- struct{}{}:
			case <-p.ctx.Done():
				results <- result{err: p.ctx.Err()}
				return
			}
			m, err := p.startMember()
			<-sem
			results <- result{m, err}
		}()
	}
	var started []*member
	var firstErr error
	for range c.Size {
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			firstErr = fmt.Errorf("pool %s: start: %w", c.Name, context.Cause(ctx))
			p.cancel() // stop the others; wait for them below
			r = <-results
		}
		if r.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("pool %s: start: %w", c.Name, r.err)
			p.cancel()
		}
		if r.m != nil {
			started = append(started, r.m)
		}
	}
	if firstErr != nil {
		// The workers that did start are stopped at once: New failed.
		p.stop()
		for _, m := range started {
			m.stopping.Store(true)
			_ = m.w.Close(p.stopCtx)
		}
		p.wg.Wait()
		p.closeProfile(p.stopCtx)
		return nil, firstErr
	}
	p.mu.Lock()
	for _, m := range started {
		p.addLocked(m)
	}
	p.mu.Unlock()
	p.wg.Add(1)
	go p.housekeeping()
	p.log.Info("pool ready", "profile", c.Profile.String(), "workers", c.Size)
	return p, nil
}

// startMember starts one worker, bounded by StartTimeout and the pool.
func (p *Pool) startMember() (*member, error) {
	id := p.cfg.Name + "-" + strconv.FormatUint(p.memberSeq.Add(1), 10)
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.StartTimeout)
	defer cancel()
	w, err := p.newWorker(ctx, id)
	if err != nil {
		return nil, err
	}
	m := &member{w: w, id: w.ID(), started: time.Now()}
	if p.cfg.MaxLifetime > 0 {
		jitter := time.Duration(rand.Float64() * p.cfg.LifetimeJitter * float64(p.cfg.MaxLifetime))
		m.retireAt = m.started.Add(p.cfg.MaxLifetime - jitter)
	}
	return m, nil
}

// addLocked puts a ready worker in service and watches it. A worker that
// died while starting is not offered: its watcher removes and replaces it.
func (p *Pool) addLocked(m *member) {
	p.members[m] = true
	p.stats.started.Add(1)
	p.wg.Add(1)
	go p.watch(m)
	if !dead(m) {
		p.offerLocked(m)
	}
}

// watch notices a worker's death.
func (p *Pool) watch(m *member) {
	defer p.wg.Done()
	select {
	case <-m.w.Done():
	case <-p.ctx.Done():
		return
	}
	if m.stopping.Load() {
		return // retired or closed by the pool
	}
	err := m.w.Err()
	p.log.Warn("worker died", "worker", m.id, "error", err)
	p.mu.Lock()
	p.removeLocked(m)
	p.stats.deaths.Add(1)
	p.noteFailureLocked(err)
	// A worker being replaced already has its successor on the way: it
	// no longer counts towards Size, so its death starts nothing more.
	if !m.replacing {
		m.replacing = true
		p.replaceLocked(nil)
	}
	p.mu.Unlock()
	m.stopping.Store(true)
	p.closeInBackground(m, time.Second) // release what the dead worker still holds
}

// closeInBackground closes a worker that left service, bounded by limit
// and by Close's context.
func (p *Pool) closeInBackground(m *member, limit time.Duration) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(p.stopCtx, limit)
		defer cancel()
		if err := m.w.Close(ctx); err != nil {
			p.log.Warn("worker left service with an error", "worker", m.id, "error", err)
		}
	}()
}

// removeLocked takes m out of service and invalidates its sessions.
func (p *Pool) removeLocked(m *member) {
	if m.gone {
		return
	}
	m.gone = true
	delete(p.members, m)
	p.unidleLocked(m)
	// Strict session waiters for m will never get it: they learn that the
	// session's state is gone, which reports the loss. (All of them: their
	// session is unbound only once none is left waiting for m.)
	var lost []*sessionEntry
	for el := p.waiters.Front(); el != nil; {
		next := el.Next()
		if w := el.Value.(*waiter); w.target() == m {
			lost = append(lost, w.sess)
			p.grantLocked(el, grant{err: ErrSessionLost})
		}
		el = next
	}
	for _, e := range lost {
		e.m = nil
		e.lost = false
	}
	// The next strict call of any other session bound to m reports it.
	for _, e := range p.sessions {
		if e.m == m {
			e.lost = true
			e.m = nil
		}
	}
}

// unidleLocked takes m out of the idle list, if there.
func (p *Pool) unidleLocked(m *member) {
	if !m.inIdle {
		return
	}
	m.inIdle = false
	for i, x := range p.idle {
		if x == m {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			return
		}
	}
}

// grantLocked removes waiter el from the queue and hands it g.
func (p *Pool) grantLocked(el *list.Element, g grant) {
	w := el.Value.(*waiter)
	p.waiters.Remove(el)
	w.handed = true
	w.ch <- g
}

func (p *Pool) noteFailureLocked(err error) {
	p.lastErr = err
	p.failStreak++
	p.deaths = append(p.deaths, time.Now())
	p.pruneDeathsLocked()
}

// pruneDeathsLocked forgets failures older than the crash-loop window.
func (p *Pool) pruneDeathsLocked() {
	now := time.Now()
	cut := 0
	for cut < len(p.deaths) && now.Sub(p.deaths[cut]) > p.cfg.CrashLoopWindow {
		cut++
	}
	p.deaths = p.deaths[cut:]
}

// degradedLocked reports a crash loop: too many failures in the window.
func (p *Pool) degradedLocked() bool {
	p.pruneDeathsLocked()
	return len(p.deaths) >= p.cfg.CrashLoopThreshold
}

// replaceLocked starts a worker in the background, with backoff after
// failures; if old is set, old retires once the new worker is ready. The
// caller has marked old (or the dead worker it replaces) as replacing, so
// that exactly one replacement is on its way per worker that leaves.
func (p *Pool) replaceLocked(old *member) {
	if p.closed {
		return
	}
	p.starting++
	delay := time.Duration(0)
	if p.failStreak > 0 {
		delay = min(p.cfg.RestartBackoff<<min(p.failStreak-1, 20), p.cfg.MaxRestartBackoff)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			if delay > 0 {
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-p.ctx.Done():
					t.Stop()
					p.mu.Lock()
					p.starting--
					p.mu.Unlock()
					return
				}
			}
			m, err := p.startMember()
			p.mu.Lock()
			if err == nil && p.closed {
				p.starting--
				p.mu.Unlock()
				m.stopping.Store(true)
				_ = m.w.Close(p.stopCtx)
				return
			}
			if err != nil {
				if p.closed || p.ctx.Err() != nil {
					p.starting--
					p.mu.Unlock()
					return
				}
				p.stats.startFailures.Add(1)
				p.noteFailureLocked(err)
				delay = min(p.cfg.RestartBackoff<<min(p.failStreak-1, 20), p.cfg.MaxRestartBackoff)
				p.mu.Unlock()
				p.log.Warn("worker start failed", "error", err, "retry_in", delay)
				continue
			}
			p.starting--
			if old != nil && !old.gone {
				p.stats.recycled.Add(1)
				old.retiring = true
				p.unidleLocked(old) // no new calls: it leaves when its last one ends
				if old.active == 0 {
					p.removeLocked(old)
					p.retireLocked(old)
				}
			}
			p.addLocked(m)
			p.mu.Unlock()
			return
		}
	}()
}

// retireLocked closes a worker that left service, in the background: its
// teardown gets up to 30 s, less if Close's context ends first.
func (p *Pool) retireLocked(m *member) {
	m.stopping.Store(true)
	p.closeInBackground(m, 30*time.Second)
}

// offerLocked gives m's free slots (m in service), and then its free
// pipeline places, to the first waiters that accept them, and puts it in
// the idle list if a slot is left.
func (p *Pool) offerLocked(m *member) {
	for m.active < p.slots+p.depth {
		// From the front each time: binding a session (below) takes
		// other waiters out of the queue.
		el := p.waiters.Front()
		for ; el != nil; el = el.Next() {
			if el.Value.(*waiter).accepts(m, p.slots) {
				break
			}
		}
		if el == nil {
			break
		}
		w := el.Value.(*waiter)
		p.takeLocked(m)
		p.pipeLocked(w.pipe, m)
		p.grantLocked(el, grant{m: m}) // out of the queue before binding
		if w.sess != nil && w.sess.m == nil {
			p.bindLocked(w.sess, m)
		}
	}
	if m.active < p.slots && !m.inIdle {
		m.inIdle = true
		p.idle = append(p.idle, m)
	}
	if m.active < p.slots {
		p.moveLocked(m)
	}
}

// bindLocked binds an unbound strict session to m, which the caller has
// just taken for it. Fail-fast waiters of the same session, queued while it
// was unbound, now find its worker busy.
func (p *Pool) bindLocked(e *sessionEntry, m *member) {
	e.m = m
	for el := p.waiters.Front(); el != nil; {
		next := el.Next()
		if w := el.Value.(*waiter); w.sess == e && w.failFast {
			p.grantLocked(el, grant{err: ErrSessionBusy})
		}
		el = next
	}
}

// acquire takes a worker for a call. A strict session (sess set, strict)
// gets the session's worker — waiting for it unless failFast — or, while
// unbound, any worker, which it binds at once (so concurrent first calls
// of a session meet on one worker). A hint session prefers its worker when
// idle. On success the caller must release the worker.
func (p *Pool) acquire(ctx context.Context, sess *sessionEntry, strict, failFast bool, pe *pipeEntry) (*member, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if p.reentrantLocked(ctx, sess, strict) {
		p.mu.Unlock()
		return nil, ErrReentrant
	}
	// A call made by a host function never goes to a worker up its chain
	// of callers: that worker's handler is waiting for it (and, if it is
	// a plain one, holds the worker's lock for plain handlers).
	excl := p.chainLocked(ctx)
	var ws *sessionEntry // the waiter's session, for strict calls
	if strict {
		ws = sess
		if t := sess.m; t != nil {
			if !t.gone && dead(t) {
				p.removeLocked(t) // died; its watcher has not seen it yet
			}
			if t.gone || sess.m == nil {
				sess.lost = false // reported now
				p.mu.Unlock()
				return nil, ErrSessionLost
			}
			if t.inIdle {
				p.takeLocked(t)
				p.mu.Unlock()
				return t, nil
			}
			if failFast {
				p.mu.Unlock()
				return nil, ErrSessionBusy
			}
		} else if m := p.pickIdleLocked(nil, excl); m != nil {
			p.takeLocked(m)
			p.bindLocked(sess, m)
			p.mu.Unlock()
			return m, nil
		}
	} else {
		var prefer *member
		if sess != nil {
			prefer = sess.m
		}
		if m := p.pickIdleLocked(prefer, excl); m != nil {
			p.takeLocked(m)
			p.mu.Unlock()
			return m, nil
		}
	}
	if pe != nil && p.depth > 0 {
		// Every worker (or the session's) has its slots taken: a place in
		// a worker's pipeline saves the wake-up between its calls.
		if m := p.pickPipelineLocked(ws, excl); m != nil {
			p.takeLocked(m)
			p.pipeLocked(pe, m)
			if ws != nil && ws.m == nil {
				p.bindLocked(ws, m)
			}
			p.mu.Unlock()
			return m, nil
		}
	}
	if len(p.members) == 0 && p.degradedLocked() {
		err := p.lastErr
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrDegraded, err)
	}
	if p.waiters.Len() >= p.cfg.QueueSize {
		p.mu.Unlock()
		p.stats.rejected.Add(1)
		return nil, ErrSaturated
	}
	if p.cfg.RejectEarly {
		if d, ok := ctx.Deadline(); ok {
			est := p.stats.estimateWait(p.waiters.Len()+1, max(len(p.members), 1))
			if time.Until(d) < est {
				p.mu.Unlock()
				p.stats.rejected.Add(1)
				return nil, fmt.Errorf("%w: estimated wait %v exceeds the remaining deadline", ErrSaturated, est.Round(time.Microsecond))
			}
		}
	}
	w := &waiter{sess: ws, failFast: failFast, excl: excl, pipe: pe, ch: make(chan grant, 1)}
	el := p.waiters.PushBack(w)
	p.mu.Unlock()

	select {
	case g := <-w.ch:
		return g.m, g.err
	case <-ctx.Done():
	case <-p.closing:
	}
	p.mu.Lock()
	if !w.handed {
		p.waiters.Remove(el)
		p.mu.Unlock()
	} else {
		// A worker was handed over as we gave up: pass it on.
		p.mu.Unlock()
		if g := <-w.ch; g.m != nil {
			p.unpipe(pe)
			p.putBack(g.m)
		}
	}
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return nil, ErrClosed
}

// pickIdleLocked returns a worker with a free slot, not one of excl:
// prefer, if it has one; else the one running fewest calls, the latest
// idled among equals. It skips and removes workers that died while idle
// (their watcher replaces them). Each round removes a worker or returns,
// so it ends.
func (p *Pool) pickIdleLocked(prefer *member, excl []*member) *member {
	if prefer != nil && prefer.inIdle && !slices.Contains(excl, prefer) {
		if !dead(prefer) {
			return prefer
		}
		p.removeLocked(prefer)
	}
	for {
		var m *member
		for i := len(p.idle) - 1; i >= 0; i-- {
			x := p.idle[i]
			if slices.Contains(excl, x) {
				continue
			}
			if m == nil || x.active < m.active {
				m = x
			}
			if p.slots == 1 {
				break
			}
		}
		if m == nil {
			return nil
		}
		if !dead(m) {
			return m
		}
		p.removeLocked(m)
	}
}

// dead reports whether m's worker has stopped (its watcher may not have
// seen it yet).
func dead(m *member) bool {
	select {
	case <-m.w.Done():
		return true
	default:
		return false
	}
}

// takeLocked takes one of m's slots for a caller. m has a free slot: it
// is idle or was just started.
func (p *Pool) takeLocked(m *member) {
	m.active++
	if m.active >= p.slots {
		p.unidleLocked(m)
	}
	p.inflight++
}

// release returns a worker after a call; callErr is the call's error.
func (p *Pool) release(m *member, callErr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m.calls++
	if callErr == nil && p.failStreak > 0 {
		p.failStreak = 0 // a working worker ends a failure streak
	}
	p.releaseLocked(m)
}

// putBack returns a worker that was handed to a caller who had already
// left: no call ran on it.
func (p *Pool) putBack(m *member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.releaseLocked(m)
}

// releaseLocked makes a busy worker available again, or lets it leave.
// Everything happens under one hold of the lock: the worker is never seen
// free by another caller before its fate (recycle, retire) is decided.
func (p *Pool) releaseLocked(m *member) {
	m.active--
	p.inflight--
	if p.inflight == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
	if !m.gone && dead(m) {
		p.removeLocked(m) // its watcher replaces it
	}
	switch {
	case m.gone:
		return
	case p.closed:
		if !m.inIdle {
			m.inIdle = true
			p.idle = append(p.idle, m) // Close stops it
		}
		return
	case m.retiring:
		if m.active == 0 {
			p.removeLocked(m)
			p.retireLocked(m)
		}
		return
	}
	if !m.replacing && p.dueLocked(m) {
		// The replacement starts first; m keeps serving until it is ready.
		m.replacing = true
		p.replaceLocked(m)
	}
	p.offerLocked(m)
}

// dueLocked reports whether m reached a call-count or lifetime limit.
func (p *Pool) dueLocked(m *member) bool {
	if p.cfg.MaxCalls > 0 && m.calls >= p.cfg.MaxCalls {
		return true
	}
	return !m.retireAt.IsZero() && time.Now().After(m.retireAt)
}

// housekeeping expires sessions, checks lifetimes of idle workers and
// memory, until the pool closes.
func (p *Pool) housekeeping() {
	defer p.wg.Done()
	tick := min(p.cfg.SessionIdleTimeout/4, p.cfg.MemoryCheckInterval, time.Second)
	tick = max(tick, 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	lastMem := time.Now()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.expireSessions()
		p.mu.Lock()
		for m := range p.members {
			if !m.replacing && !p.closed && p.dueLocked(m) {
				m.replacing = true
				p.replaceLocked(m)
			}
		}
		checkMem := p.cfg.MaxMemory > 0 && time.Since(lastMem) >= p.cfg.MemoryCheckInterval
		p.mu.Unlock()
		if checkMem {
			lastMem = time.Now()
			p.checkMemory()
		}
	}
}

// checkMemory recycles workers over MaxMemory. Sampling happens without
// the lock; the decision is re-checked under it.
func (p *Pool) checkMemory() {
	p.mu.Lock()
	var ms []*member
	for m := range p.members {
		if !m.replacing {
			ms = append(ms, m)
		}
	}
	p.mu.Unlock()
	for _, m := range ms {
		r, ok := m.w.(worker.MemoryReporter)
		if !ok {
			continue
		}
		if b, err := r.MemoryBytes(); err == nil && b > p.cfg.MaxMemory {
			p.mu.Lock()
			if !m.replacing && !m.gone && !p.closed {
				m.replacing = true
				p.log.Info("recycling worker over its memory limit", "worker", m.id, "bytes", b)
				p.replaceLocked(m)
			}
			p.mu.Unlock()
		}
	}
}

// Health returns nil while the pool works, ErrClosed once closed, and an
// error matching ErrDegraded (with the latest failure) during a crash loop.
func (p *Pool) Health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.degradedLocked() {
		return fmt.Errorf("%w: %d failures in %v, latest: %v", ErrDegraded, len(p.deaths), p.cfg.CrashLoopWindow, p.lastErr)
	}
	return nil
}

// Close stops admitting calls (waiting ones fail with ErrClosed), waits for
// calls in flight until ctx ends, then stops every worker (running
// teardown()), and returns when every goroutine and process the pool
// started is gone. Everything it waits for is bounded by ctx: when ctx
// ends, calls still running are interrupted, process workers are killed
// (SIGKILL to their process groups) and reaped, and workers being retired
// are stopped the same way. The one thing that may outlive Close is a
// thread-profile worker whose handler is stuck in C code that ignores
// interruption: its interpreter ends in the background when that call
// returns (see gil.Worker.Close). Close returns ctx's error if calls were
// still running when ctx ended. Closing twice returns the first result.
func (p *Pool) Close(ctx context.Context) error {
	p.closeOnce.Do(func() { p.closeErr = p.close(ctx) })
	return p.closeErr
}

func (p *Pool) close(ctx context.Context) error {
	stopAfter := context.AfterFunc(ctx, p.stop) // bounds retirements too
	defer stopAfter()
	defer p.stop()
	p.mu.Lock()
	p.closed = true
	close(p.closing)
	var drained chan struct{}
	if p.inflight > 0 {
		drained = make(chan struct{})
		p.drained = drained
	}
	p.mu.Unlock()
	var err error
	if drained != nil {
		select {
		case <-drained:
		case <-ctx.Done():
			err = fmt.Errorf("pool %s: close: calls still running: %w", p.cfg.Name, context.Cause(ctx))
		}
	}
	p.cancel() // stops start-ups, supervision, housekeeping
	p.mu.Lock()
	var ms []*member
	for m := range p.members {
		ms = append(ms, m)
		p.removeLocked(m)
	}
	p.idle = nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range ms {
		m.stopping.Store(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cerr := m.w.Close(ctx); cerr != nil {
				p.log.Warn("worker closed with an error", "worker", m.id, "error", cerr)
			}
		}()
	}
	wg.Wait()
	p.wg.Wait()
	p.closeProfile(ctx)
	p.log.Info("pool closed")
	return err
}
