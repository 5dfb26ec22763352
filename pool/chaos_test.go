package pool

// A seeded, randomized test of the pool over scripted workers, in virtual
// time (testing/synctest): each run mixes calls with and without deadlines
// and cancellations, the three session modes, recycling by calls, lifetime
// and memory, deaths at random moments, start failures and crash loops,
// idempotent retries, streams broken off early and Close at a random point,
// and checks the pool's invariants after every step.
//
//	go test ./pool -run 'TestChaos$'                        # the CI share
//	go test ./pool -run 'TestChaos$' -chaos.seeds=20000     # make chaos (-chaos.first=N starts there)
//	go test ./pool -run 'TestChaos$' -chaos.seed=N -v       # replay one

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/snakepit-go/snakepit/worker"
)

var (
	chaosSeeds = flag.Int("chaos.seeds", 150, "randomized pool runs (seeds first..first+n-1)")
	chaosFirst = flag.Int("chaos.first", 1, "the first seed of the randomized pool runs")
	chaosSeed  = flag.Uint64("chaos.seed", 0, "run only this seed")
	chaosSteps = flag.Int("chaos.steps", 120, "steps per randomized run")
)

func TestChaos(t *testing.T) {
	seeds := make([]uint64, 0, *chaosSeeds)
	if *chaosSeed != 0 {
		seeds = append(seeds, *chaosSeed)
	} else {
		for s := range *chaosSeeds {
			seeds = append(seeds, uint64(*chaosFirst+s))
		}
	}
	failed := 0
	for _, seed := range seeds {
		ok := t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { runChaos(t, seed, *chaosSteps) })
		})
		if !ok {
			t.Logf("replay: go test ./pool -run 'TestChaos$' -chaos.seed=%d -v", seed)
			if failed++; failed >= 3 {
				t.Fatal("stopping after 3 failed seeds")
			}
		}
	}
}

// chaosErr is a handler's scripted exception.
var chaosErr = errors.New("chaos: scripted handler error")

// harness drives one run: it builds workers, keeps what the invariants
// need and collects violations.
type harness struct {
	t   *testing.T
	rng *rand.Rand // the driver's only

	mu          sync.Mutex // guards the fields below
	workers     []*chaosWorker
	runs        map[string]int                  // correlation id -> handler runs
	strictRuns  map[string]map[*chaosWorker]int // strict session -> workers running it
	slots       int                             // calls a worker may run at once
	depth       int                             // calls a worker may hold besides (pipelined)
	failStarts  bool                            // start-ups fail (a crash loop)
	startFail   float64                         // else they fail with this probability
	closeCtx    context.Context                 // Close's context, once Close begins
	violations  []string
	outcomes    map[string]int // error class -> count
	memHigh     map[*chaosWorker]bool
	endSessions int // Session.Close calls (not counted in Stats)
}

// closeHard reports whether Close's context ended: then Close may cut
// workers off mid-call.
func (h *harness) closeHard() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closeCtx != nil && h.closeCtx.Err() != nil
}

func (h *harness) violate(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.violations = append(h.violations, fmt.Sprintf(format, args...))
}

// factory is Config.NewWorker. Its randomness is drawn under h.mu from a
// per-worker seed so that the driver's sequence stays its own.
func (h *harness) factory(seed uint64) func(ctx context.Context, id string) (worker.Worker, error) {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 7))
	return func(ctx context.Context, id string) (worker.Worker, error) {
		mu.Lock()
		delay := time.Duration(rng.IntN(20)) * time.Millisecond
		roll := rng.Float64()
		mu.Unlock()
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		h.mu.Lock()
		fail := h.failStarts || roll < h.startFail
		h.mu.Unlock()
		if fail {
			return nil, &worker.SetupError{WorkerID: id, Stage: "start", Err: errors.New("chaos: scripted start failure")}
		}
		w := &chaosWorker{h: h, id: id, done: make(chan struct{}), idle: make(chan struct{}),
			freed: make(chan struct{}), waiting: map[*worker.Request]chan struct{}{}}
		h.mu.Lock()
		h.workers = append(h.workers, w)
		h.mu.Unlock()
		return w, nil
	}
}

// chaosWorker is a scripted worker that reports any overlap of calls and
// any call it is given after it was closed.
type chaosWorker struct {
	h  *harness
	id string

	mu      sync.Mutex // guards the fields below
	running int        // calls and open streams
	queued  int        // pipelined calls waiting for a slot
	waiting map[*worker.Request]chan struct{}
	freed   chan struct{} // closed (and replaced) when a slot frees
	idle    chan struct{}
	closed  bool
	err     error
	done    chan struct{}
	stopped atomic.Pointer[error] // err, readable without mu
}

var _ worker.SessionEnder = (*chaosWorker)(nil)
var _ worker.Withdrawer = (*chaosWorker)(nil)
var _ worker.MemoryReporter = (*chaosWorker)(nil)

func (w *chaosWorker) ID() string            { return w.id }
func (w *chaosWorker) Done() <-chan struct{} { return w.done }
func (w *chaosWorker) isDead() bool          { return w.Err() != nil }

// Err takes no lock: the harness reads it while holding its own (its lock
// is taken after a worker's, never before).
func (w *chaosWorker) Err() error {
	if e := w.stopped.Load(); e != nil {
		return *e
	}
	return nil
}

// stopLocked records why the worker stopped and closes done.
func (w *chaosWorker) stopLocked(err error) {
	w.err = err
	w.stopped.Store(&err)
	close(w.done)
}
func (w *chaosWorker) EndSession(context.Context, string) error { return nil }

func (w *chaosWorker) MemoryBytes() (int64, error) {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	if w.h.memHigh[w] {
		return 1 << 30, nil
	}
	return 1 << 20, nil
}

// kill makes the worker die: its running call fails with ErrWorkerDead.
func (w *chaosWorker) kill() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.closed {
		return
	}
	w.stopLocked(&worker.DeadError{WorkerID: w.id, Reason: "chaos: killed"})
}

// Withdraw takes back a pipelined call that waits for a slot.
func (w *chaosWorker) Withdraw(ctx context.Context, req *worker.Request) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch, ok := w.waiting[req]
	if ok {
		delete(w.waiting, req)
		close(ch)
	}
	return ok, nil
}

// begin starts a call or stream, checking it may. With pipelining, one
// that finds every slot taken waits for one; its context ending or a
// withdrawal meanwhile fail it with ErrNotStarted, and it never runs.
func (w *chaosWorker) begin(ctx context.Context, req *worker.Request) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.closed {
		if !w.h.closeHard() {
			w.h.violate("worker %s: call %s started after the pool closed the worker", w.id, req.CorrelationID)
		}
		return worker.ErrClosed
	}
	if w.running >= w.h.slots && w.h.depth > 0 {
		if w.running+w.queued >= w.h.slots+w.h.depth {
			w.h.violate("worker %s: call %s beyond its %d slots and %d pipeline places", w.id, req.CorrelationID, w.h.slots, w.h.depth)
		}
		withdrawn := make(chan struct{})
		w.waiting[req] = withdrawn
		w.queued++
		var err error
		for w.running >= w.h.slots && err == nil {
			freed := w.freed
			w.mu.Unlock()
			select {
			case <-freed:
			case <-ctx.Done():
				err = fmt.Errorf("%w: %w", worker.ErrNotStarted, ctx.Err())
			case <-withdrawn:
				err = worker.ErrNotStarted
			case <-w.done:
			}
			w.mu.Lock()
			if err == nil && w.err != nil {
				err = w.err
			}
		}
		w.queued--
		if w.waiting[req] == withdrawn {
			delete(w.waiting, req)
		} else if err == nil {
			err = worker.ErrNotStarted // withdrawn as the slot came
		}
		if err != nil {
			return err
		}
	}
	if w.running >= w.h.slots {
		w.h.violate("worker %s: call %s beyond its %d slots", w.id, req.CorrelationID, w.h.slots)
	}
	w.running++
	if w.running == 1 {
		w.idle = make(chan struct{})
	}
	w.h.mu.Lock()
	w.h.runs[req.CorrelationID]++
	if strings.HasPrefix(req.SessionID, "strict") {
		on := w.h.strictRuns[req.SessionID]
		if on == nil {
			on = map[*chaosWorker]int{}
			w.h.strictRuns[req.SessionID] = on
		}
		for other, n := range on {
			if other != w && n > 0 && !other.isDead() {
				w.h.violations = append(w.h.violations, fmt.Sprintf("strict session %s runs on %s and %s at once", req.SessionID, other.id, w.id))
			}
		}
		on[w]++
	}
	w.h.mu.Unlock()
	return nil
}

func (w *chaosWorker) end(req *worker.Request) {
	w.h.mu.Lock()
	if on := w.h.strictRuns[req.SessionID]; on != nil {
		on[w]--
	}
	w.h.mu.Unlock()
	w.mu.Lock()
	w.running--
	if w.running == 0 {
		close(w.idle)
	}
	close(w.freed)
	w.freed = make(chan struct{})
	w.mu.Unlock()
}

// script runs a command "op:ms": ok, fail, hang (until its context ends),
// die (the worker dies after ms), grow (memory over the limit).
func (w *chaosWorker) script(ctx context.Context, command string) error {
	op, arg, _ := strings.Cut(command, ":")
	ms, _ := strconv.Atoi(arg)
	d := time.Duration(ms) * time.Millisecond
	switch op {
	case "die":
		time.AfterFunc(d, w.kill)
		d = time.Hour
	case "hang":
		d = time.Hour
	case "grow":
		w.h.mu.Lock()
		w.h.memHigh[w] = true
		w.h.mu.Unlock()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return w.Err()
	}
	if op == "fail" {
		return chaosErr
	}
	return nil
}

func (w *chaosWorker) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	if err := w.begin(ctx, req); err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	defer w.end(req)
	if err := w.script(ctx, req.Command); err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	return &worker.Response{Result: []byte{'N'}}, nil
}

func (w *chaosWorker) Stream(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	// A stream takes no pipeline place, but a pipelined call that reaches
	// the worker first may take the slot it was given: it then waits in
	// the worker, as a pipelined call does.
	if err := w.begin(ctx, req); err != nil {
		return nil, err
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(req.Command, "stream:"))
	return &chaosStream{w: w, req: req, left: n}, nil
}

type chaosStream struct {
	w      *chaosWorker
	req    *worker.Request
	mu     sync.Mutex
	left   int
	closed bool
}

func (s *chaosStream) Next(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.left == 0 {
		return nil, io.EOF
	}
	if err := s.w.script(ctx, "ok:2"); err != nil {
		return nil, err
	}
	s.left--
	return []byte{'N'}, nil
}

func (s *chaosStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.w.end(s.req)
	}
	return nil
}

// Close waits for the running call until ctx ends, then stops the worker.
func (w *chaosWorker) Close(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	idle := w.idle
	busy := w.running > 0
	w.mu.Unlock()
	if busy {
		select {
		case <-idle:
		case <-ctx.Done():
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.stopLocked(worker.ErrClosed)
	}
	return nil
}

// chaosCall is one caller's scripted call, drawn by the driver.
type chaosCall struct {
	kind       string // call, stream, session, endsession
	command    string
	session    string
	mode       Affinity
	idempotent bool
	deadline   time.Duration // 0: none
	cancel     time.Duration // 0: never
	breakAfter int           // streams: items before breaking off (-1: drain)
}

func (h *harness) drawCall(closing bool) chaosCall {
	r := h.rng
	c := chaosCall{kind: "call"}
	switch x := r.IntN(100); {
	case x < 55:
	case x < 70:
		c.kind = "stream"
	case x < 95:
		c.kind = "session"
	default:
		c.kind = "endsession"
	}
	switch x := r.IntN(100); {
	case x < 60:
		c.command = "ok:" + strconv.Itoa(r.IntN(30))
	case x < 72:
		c.command = "fail:" + strconv.Itoa(r.IntN(5))
	case x < 80:
		c.command = "hang:0"
	case x < 85:
		c.command = "die:" + strconv.Itoa(r.IntN(20))
	default:
		c.command = "grow:" + strconv.Itoa(r.IntN(5))
	}
	if c.kind == "stream" {
		c.command = "stream:" + strconv.Itoa(r.IntN(6))
		c.breakAfter = r.IntN(8) - 1
	}
	if c.kind == "session" || c.kind == "endsession" || (c.kind == "stream" && r.IntN(2) == 0) {
		c.mode = Affinity(r.IntN(3))
		prefix := [...]string{"hint", "strictq", "strictf"}[c.mode]
		c.session = prefix + "-" + strconv.Itoa(r.IntN(3))
	}
	c.idempotent = r.IntN(3) == 0
	if r.IntN(3) > 0 {
		c.deadline = time.Duration(1+r.IntN(80)) * time.Millisecond
	}
	if r.IntN(5) == 0 {
		c.cancel = time.Duration(r.IntN(40)) * time.Millisecond
	}
	if c.command == "hang:0" && c.deadline == 0 && c.cancel == 0 {
		c.cancel = time.Duration(1+r.IntN(100)) * time.Millisecond // ends before Close
	}
	return c
}

// run performs the call and checks its one outcome.
func (h *harness) run(p *Pool, c chaosCall, cid string) {
	ctx := WithCorrelationID(context.Background(), cid)
	var cancel context.CancelFunc
	if c.deadline > 0 {
		ctx, cancel = context.WithTimeout(ctx, c.deadline)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	if c.cancel > 0 {
		time.AfterFunc(c.cancel, cancel)
	}
	var opts []CallOption
	if c.idempotent {
		opts = append(opts, Idempotent())
	}
	var err error
	switch c.kind {
	case "call":
		_, err = p.CallRaw(ctx, c.command, nil, opts...)
	case "session":
		_, err = p.Session(c.session, c.mode).CallRaw(ctx, c.command, nil, opts...)
	case "endsession":
		err = p.Session(c.session, c.mode).Close(ctx)
	case "stream":
		var seq iter.Seq2[Chunk, error]
		if c.session != "" {
			seq = p.Session(c.session, c.mode).Stream(ctx, c.command, nil, opts...)
		} else {
			seq = p.Stream(ctx, c.command, nil, opts...)
		}
		n := 0
		for _, e := range seq {
			if e != nil {
				err = e
				break
			}
			if n++; n == c.breakAfter {
				break
			}
		}
	}
	h.classify(c, cid, err)
}

func (h *harness) classify(c chaosCall, cid string, err error) {
	var class string
	switch {
	case err == nil:
		class = "ok"
	case errors.Is(err, chaosErr):
		class = "handler error"
	case errors.Is(err, ErrSaturated):
		class = "saturated"
	case errors.Is(err, ErrClosed):
		class = "pool closed"
	case errors.Is(err, ErrDegraded):
		class = "degraded"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		class = "context"
	case errors.Is(err, worker.ErrWorkerDead):
		class = "worker dead"
	case errors.Is(err, ErrSessionLost) && c.session != "" && c.mode != Hint:
		class = "session lost"
	case errors.Is(err, ErrSessionBusy) && c.mode == StrictFailFast && c.session != "":
		class = "session busy"
	case errors.Is(err, worker.ErrClosed):
		if !h.closeHard() {
			h.violate("call %s (%+v) got a closed worker: %v", cid, c, err)
		}
		class = "worker closed"
	default:
		h.violate("call %s (%+v): unexpected outcome %v", cid, c, err)
		class = "unexpected"
	}
	h.mu.Lock()
	h.outcomes[class]++
	if c.kind == "endsession" {
		h.endSessions++
	}
	h.mu.Unlock()
}

// checkLocked checks the pool's structural invariants; quiescent adds
// the ones that hold once every goroutine is blocked (synctest.Wait).
func (h *harness) check(p *Pool, quiescent bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	bad := func(format string, args ...any) {
		h.violate("invariant: "+format, args...)
	}
	seen := map[*member]bool{}
	for _, m := range p.idle {
		switch {
		case seen[m]:
			bad("worker %s idle twice", m.id)
		case !m.inIdle || m.active >= p.slots || m.gone || m.retiring:
			bad("worker %s in the idle list as inIdle=%v active=%d gone=%v retiring=%v", m.id, m.inIdle, m.active, m.gone, m.retiring)
		case !p.members[m]:
			bad("idle worker %s is not a member", m.id)
		}
		seen[m] = true
	}
	counted, active := 0, 0
	for m := range p.members {
		if m.gone {
			bad("member %s is gone", m.id)
		}
		if m.inIdle && !seen[m] {
			bad("worker %s marked idle but not in the list", m.id)
		}
		if m.active < 0 || m.active > p.slots+p.depth {
			bad("worker %s has %d calls, %d slots and %d pipeline places", m.id, m.active, p.slots, p.depth)
		}
		if !m.inIdle && !m.retiring && !p.closed && m.active < p.slots && !dead(m) {
			bad("worker %s has a free slot (%d of %d taken) but is not in the idle list", m.id, m.active, p.slots)
		}
		active += m.active
		if m.retiring && !m.replacing {
			bad("worker %s retiring without a replacement", m.id)
		}
		if !m.replacing {
			counted++
		}
	}
	if active > p.inflight {
		bad("%d slots held in members, %d calls hold a worker", active, p.inflight)
	}
	if p.waiters.Len() > p.cfg.QueueSize {
		bad("%d waiters, queue size %d", p.waiters.Len(), p.cfg.QueueSize)
	}
	if !p.closed {
		if counted+p.starting > p.cfg.Size {
			bad("%d workers counted + %d starting > Size %d", counted, p.starting, p.cfg.Size)
		}
		if quiescent && counted+p.starting != p.cfg.Size {
			bad("quiescent: %d workers counted + %d starting, want Size %d", counted, p.starting, p.cfg.Size)
		}
	}
	if quiescent {
		for el := p.waiters.Front(); el != nil; el = el.Next() {
			w := el.Value.(*waiter)
			if w.handed {
				bad("a handed waiter is still queued")
			}
			if t := w.target(); t == nil && len(p.idle) > 0 {
				bad("a waiter for any worker waits while %d are idle", len(p.idle))
			} else if t != nil && t.inIdle {
				bad("a waiter waits for idle worker %s", t.id)
			}
		}
	}
}

func runChaos(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	h := &harness{
		t: t, rng: rng,
		runs:       map[string]int{},
		strictRuns: map[string]map[*chaosWorker]int{},
		outcomes:   map[string]int{},
		memHigh:    map[*chaosWorker]bool{},
	}
	startFail := []float64{0, 0, 0.05, 0.2}[rng.IntN(4)]
	cfg := Config{
		Name:                "chaos",
		Size:                1 + rng.IntN(4),
		WorkerConcurrency:   []int{0, 1, 2, 3}[rng.IntN(4)],
		PipelineDepth:       []int{0, 0, 1, 2, MaxPipelineDepth}[rng.IntN(5)],
		QueueSize:           []int{-1, 1, 4, 16}[rng.IntN(4)],
		RejectEarly:         rng.IntN(4) == 0,
		StartConcurrency:    1 + rng.IntN(3),
		StartTimeout:        time.Second,
		MaxCalls:            []int64{0, 0, 2, 5}[rng.IntN(4)],
		MaxLifetime:         []time.Duration{0, 0, 50 * time.Millisecond, 300 * time.Millisecond}[rng.IntN(4)],
		MaxMemory:           []int64{0, 1 << 28}[rng.IntN(2)],
		MemoryCheckInterval: 20 * time.Millisecond,
		SessionIdleTimeout:  []time.Duration{40 * time.Millisecond, time.Second}[rng.IntN(2)],
		RestartBackoff:      5 * time.Millisecond,
		MaxRestartBackoff:   50 * time.Millisecond,
		CrashLoopThreshold:  3 + rng.IntN(3),
		CrashLoopWindow:     500 * time.Millisecond,
		NewWorker:           h.factory(seed),
	}
	h.slots, h.depth = max(cfg.WorkerConcurrency, 1), cfg.PipelineDepth
	report := func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.violations) > 0 {
			t.Errorf("seed %d (config %+v): %d violations:\n%s", seed, cfg, len(h.violations), strings.Join(h.violations[:min(len(h.violations), 20)], "\n"))
			h.violations = nil
		}
	}
	defer report()

	p, err := New(context.Background(), cfg)
	if err != nil {
		assert.ErrorIs(t, err, worker.ErrSetup, "seed %d: New: want a setup error or none", seed)
		return
	}
	h.mu.Lock()
	h.startFail = startFail // New itself starts cleanly
	h.mu.Unlock()
	var callers sync.WaitGroup
	closeAt := rng.IntN(steps + steps/2) // beyond steps: Close at the end
	var seq int
	closed := false
	for step := 0; step < steps && !closed; step++ {
		switch x := rng.IntN(100); {
		case x < 60:
			for range 1 + rng.IntN(4) {
				c := h.drawCall(false)
				seq++
				cid := fmt.Sprintf("c%d", seq)
				if c.idempotent {
					cid += "-idempotent"
				}
				callers.Go(func() { h.run(p, c, cid) })
			}
		case x < 64:
			h.mu.Lock()
			var live []*chaosWorker
			for _, w := range h.workers {
				if w.Err() == nil {
					live = append(live, w)
				}
			}
			h.mu.Unlock()
			if len(live) > 0 {
				live[rng.IntN(len(live))].kill()
			}
		case x < 66:
			h.mu.Lock()
			h.failStarts = !h.failStarts
			h.mu.Unlock()
		default:
			time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
		}
		h.check(p, false)
		if rng.IntN(4) == 0 {
			synctest.Wait()
			h.check(p, true)
		}
		if step == closeAt {
			closed = true
		}
	}

	if !closed {
		// Let failures age out: with start-ups working again, the pool
		// returns to Size workers and to health.
		h.mu.Lock()
		h.failStarts = false
		h.startFail = 0
		h.mu.Unlock()
		waitCallers(t, seed, p, &callers)
		time.Sleep(cfg.CrashLoopWindow + cfg.MaxRestartBackoff*4)
		synctest.Wait()
		h.check(p, true)
		assert.NoError(t, p.Health(), "seed %d: Health after the window with no failures", seed)
		if s := p.Stats(); s.Workers < cfg.Size {
			t.Errorf("seed %d: after recovery %d workers, want at least %d\n%s", seed, s.Workers, cfg.Size, p.dump())
		}
	}

	limit := []time.Duration{0, 5 * time.Millisecond, 50 * time.Millisecond, time.Second}[rng.IntN(4)]
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	h.mu.Lock()
	h.closeCtx = ctx
	h.mu.Unlock()
	start := time.Now()
	_ = p.Close(ctx)
	assert.LessOrEqual(t, time.Since(start), limit, "seed %d: the time Close took, beyond its context's", seed)
	waitCallers(t, seed, p, &callers)
	cancel()
	if err := p.Close(context.Background()); err != p.closeErr {
		t.Errorf("seed %d: second Close: %v, want the first result %v", seed, err, p.closeErr)
	}
	_, err = p.CallRaw(context.Background(), "ok:0", nil)
	assert.ErrorIs(t, err, ErrClosed, "seed %d: call after Close", seed)

	h.mu.Lock()
	for cid, n := range h.runs {
		if n > 2 || (n > 1 && !strings.HasSuffix(cid, "-idempotent")) {
			h.violations = append(h.violations, fmt.Sprintf("call %s ran %d times", cid, n))
		}
	}
	for _, w := range h.workers {
		if w.Err() == nil {
			h.violations = append(h.violations, fmt.Sprintf("worker %s still running after Close", w.id))
		}
	}
	total := 0
	for _, n := range h.outcomes {
		total += n
	}
	h.mu.Unlock()
	assert.Equal(t, seq, total, "seed %d: outcomes for %d calls", seed, seq)
	// Every call and stream is counted once as succeeded or failed, and a
	// retried one once more for its first attempt.
	st := p.Stats()
	if got, want := st.Calls+st.Failed, int64(seq-h.endSessions+1)+st.Retries; got != want { // +1: the call after Close
		t.Errorf("seed %d: Stats counts %d calls + %d failed, want %d (%d calls and one after Close, %d session closes, %d retries)", seed, st.Calls, st.Failed, want, seq, h.endSessions, st.Retries)
	}
	if st.Workers != 0 || st.Idle != 0 || st.Busy != 0 || st.Waiting != 0 || st.Healthy {
		t.Errorf("seed %d: Stats after Close: %+v, want no workers, none waiting, not healthy", seed, st)
	}
	if testing.Verbose() {
		t.Logf("seed %d: %d calls, outcomes %v, %d workers started", seed, seq, h.outcomes, len(h.workers))
	}
}

// waitCallers waits for the callers, which every deadline, cancel or
// Close bounds, for at most a minute of virtual time.
func waitCallers(t *testing.T, seed uint64, p *Pool, callers *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { callers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("seed %d: callers still running a minute later\n%s", seed, p.dump())
	}
}

// dump describes the pool's workers, for failure messages.
func (p *Pool) dump() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "closed=%v starting=%d inflight=%d waiters=%d idle=%d failStreak=%d\n", p.closed, p.starting, p.inflight, p.waiters.Len(), len(p.idle), p.failStreak)
	for m := range p.members {
		fmt.Fprintf(&b, "  %s active=%d inIdle=%v replacing=%v retiring=%v calls=%d dead=%v\n", m.id, m.active, m.inIdle, m.replacing, m.retiring, m.calls, dead(m))
	}
	return b.String()
}
