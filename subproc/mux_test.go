package subproc

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/worker"
)

const concAdapter = `
import asyncio, os, threading, time
import snakepit

_lock = threading.Lock()
S = {"in": 0, "max": 0, "runs": [], "cancelled": []}
_events = {}


def _enter(tag):
    with _lock:
        S["in"] += 1
        S["max"] = max(S["max"], S["in"])
        S["runs"].append(tag)
        return S["in"]


def _leave():
    with _lock:
        S["in"] -= 1


def _event(key):
    with _lock:
        ev = _events.get(key)
        if ev is None:
            ev = _events[key] = asyncio.Event()
        return ev


@snakepit.command
async def rendezvous(n, tag="", sleep=0.05, timeout=30.0):
    """In flight until n of it are at once (or timeout), then sleeps."""
    now = _enter(tag)
    ev = _event(("rv", n))
    try:
        if now >= n:
            ev.set()
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(sleep)
        return S["max"]
    finally:
        _leave()


@snakepit.command
async def nap(tag="", sleep=0.0):
    _enter(tag)
    try:
        await asyncio.sleep(sleep)
        return tag
    finally:
        _leave()


@snakepit.command
def noop(tag=""):
    return tag


@snakepit.command
async def hang(tag=""):
    _enter(tag)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        with _lock:
            S["cancelled"].append(tag)
        raise
    finally:
        _leave()


@snakepit.command(thread_safe=True)
def spin(tag=""):
    """A plain handler that runs until interrupted."""
    _enter(tag)
    try:
        while True:
            time.sleep(0.001)
    except snakepit.Cancelled:
        with _lock:
            S["cancelled"].append(tag)
        raise
    finally:
        _leave()


@snakepit.command
async def crash_when(n):
    """Exits the process once n calls are in flight."""
    now = _enter("crash")
    ev = _event(("crash", n))
    if now >= n:
        ev.set()
    await ev.wait()
    os._exit(3)


@snakepit.command
async def crash_wait(n):
    now = _enter("wait")
    ev = _event(("crash", n))
    if now >= n:
        ev.set()
    await asyncio.sleep(3600)


@snakepit.command
def hold(ctx, tag=""):
    """Tells the host it started, then waits for its gate."""
    _enter(tag)
    try:
        ctx.host.call("started", tag=tag)
        ctx.host.call("gate")
        return tag
    finally:
        _leave()


@snakepit.command
def mark(tag=""):
    """A plain handler that records that it ran."""
    _enter(tag)
    _leave()
    return tag

@snakepit.command
def hold_then_sleep(ctx, tag="", sleep=0.0):
    """hold, then tells the host it passed its gate (tag + "-past") and
    sleeps without reading the connection."""
    _enter(tag)
    try:
        ctx.host.call("started", tag=tag)
        ctx.host.call("gate")
        ctx.host.call("started", tag=tag + "-past")
        time.sleep(sleep)
        return tag
    finally:
        _leave()


@snakepit.command
async def who(ctx, i):
    """A host call from an async handler: the correlation id Go saw."""
    return await ctx.host.acall("who", i=i)


@snakepit.command
def who_sync(ctx, i):
    return ctx.host.call("who", i=i)


@snakepit.command
def spin_started(ctx, tag=""):
    """Tells the host it started, then runs until interrupted."""
    _enter(tag)
    try:
        ctx.host.call("started", tag=tag)
        while True:
            time.sleep(0.001)
    except snakepit.Cancelled:
        with _lock:
            S["cancelled"].append(tag)
        raise
    finally:
        _leave()


@snakepit.command
def crash_at_gate(ctx):
    """Tells the host it started; exits the process once its gate opens."""
    ctx.host.call("started", tag="crash")
    ctx.host.call("gate")
    os._exit(3)


@snakepit.command
def stats():
    with _lock:
        return {"max": S["max"], "runs": list(S["runs"]), "cancelled": list(S["cancelled"]), "in": S["in"]}


@snakepit.command
async def agen(n, tag=""):
    for i in range(n):
        await asyncio.sleep(0)
        yield [tag, i]


@snakepit.command
def gen(n, tag=""):
    for i in range(n):
        yield [tag, i]
`

// concPython is the interpreter this test process runs (the hermetic
// 3.14, or 3.11 in the re-executed child of TestVersions).
func concPython(t testing.TB) string {
	t.Helper()
	py, err := locate.Find(locate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if major, minor := py.MajorMinor(); major != 3 || minor != pymatrix.WantMinor() {
		t.Fatalf("found Python %s (%s), want 3.%d", py.Version, py.Executable, pymatrix.WantMinor())
	}
	return py.Executable
}

var (
	concRegOnce sync.Once
	concReg     *Registry
)

// concFixture is a concurrent-mode worker with host functions the tests
// steer: started (a hold handler began), gate (returns when released),
// who (returns the correlation id of its call).
type concFixture struct {
	w       *Worker
	started chan string
	gate    chan struct{}
}

func startConc(t *testing.T, cfg Config) *concFixture {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "conc_adapter.py"), []byte(concAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	concRegOnce.Do(func() {
		d, err := os.MkdirTemp("", "snakepit-conc-registry-")
		if err != nil {
			t.Fatal(err)
		}
		if concReg, _, err = OpenRegistry(d); err != nil {
			t.Fatal(err)
		}
	})
	fx := &concFixture{started: make(chan string, 16), gate: make(chan struct{})}
	set, err := host.NewSet(
		host.New("started", func(ctx context.Context, a struct{ Tag string }) (any, error) {
			fx.started <- a.Tag
			return nil, nil
		}),
		host.New("gate", func(ctx context.Context, a struct{}) (any, error) {
			select {
			case <-fx.gate:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}),
		host.New("who", func(ctx context.Context, a struct{ I int64 }) (any, error) {
			return []any{a.I, worker.CorrelationID(ctx)}, nil
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Module, cfg.Paths, cfg.Python, cfg.Registry, cfg.Host = "conc_adapter", []string{dir}, concPython(t), concReg, set
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	w, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fx.w = w
	t.Cleanup(func() { w.Close(context.Background()) })
	return fx
}

func concReq(t testing.TB, command string, args map[string]any) *worker.Request {
	t.Helper()
	raw, err := pymarshal.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	return &worker.Request{Command: command, Args: raw, CorrelationID: "cid-" + command}
}

func concCall(t testing.TB, w *Worker, command string, args map[string]any, out any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := w.Call(ctx, concReq(t, command, args))
	if err != nil {
		return err
	}
	if out != nil {
		return pymarshal.Unmarshal(resp.Result, out)
	}
	return nil
}

type concStats struct {
	Max, In   int64
	Runs      []string
	Cancelled []string
}

func (fx *concFixture) stats(t *testing.T) concStats {
	t.Helper()
	var s map[string]any
	mustOK(t, concCall(t, fx.w, "stats", nil, &s))
	var out concStats
	out.Max, out.In = s["max"].(int64), s["in"].(int64)
	for _, r := range s["runs"].([]any) {
		out.Runs = append(out.Runs, r.(string))
	}
	for _, r := range s["cancelled"].([]any) {
		out.Cancelled = append(out.Cancelled, r.(string))
	}
	return out
}

func TestConcConfigValidation(t *testing.T) {
	for _, cfg := range []Config{{Concurrency: -1}, {Concurrency: MaxConcurrency + 1}, {PipelineDepth: -1}, {PipelineDepth: MaxConcurrency + 1}} {
		cfg.Module = "x"
		_, err := Start(context.Background(), cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, ErrBadConfig) {
			t.Fatalf("Start(%+v): got %v, want a *ConfigError matching ErrBadConfig", cfg, err)
		}
	}
}

// TestConcOverlap: 100 calls of an async handler on one worker with
// concurrency 100 are all in flight at once.
func TestConcOverlap(t *testing.T) {
	fx := startConc(t, Config{Concurrency: 100})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			var max int64
			if err := concCall(t, fx.w, "rendezvous", map[string]any{"n": 100, "tag": string(rune('a' + i%26))}, &max); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := fx.stats(t).Max; got != 100 {
		t.Fatalf("got %d calls in flight at most, want 100", got)
	}
}

// TestConcCrashFailsEveryCallOnce: a handler exits the process while ten
// calls are in flight: each Call returns an error matching ErrWorkerDead,
// and nothing is left running.
func TestConcCrashFailsEveryCallOnce(t *testing.T) {
	before := runtime.NumGoroutine()
	fx := startConc(t, Config{Concurrency: 10})
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range 10 {
		wg.Go(func() {
			cmd := "crash_wait"
			if i == 0 {
				cmd = "crash_when"
			}
			errs[i] = concCall(t, fx.w, cmd, map[string]any{"n": 10}, nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("call %d: got %v, want ErrWorkerDead", i, err)
		}
	}
	<-fx.w.Done()
	mustIs(t, fx.w.Err(), worker.ErrWorkerDead)
	mustOK(t, fx.w.Close(context.Background()))
	// Every goroutine of the worker ends (the reader, host calls, cancels).
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("got %d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // hang guard: goroutines exit on their own
	}
}

// TestConcDeadlineHitsOnlyItsCall: of several concurrent calls, the one
// whose deadline passes is cancelled (an async task and a plain handler on
// a handler thread); the others go on.
func TestConcDeadlineHitsOnlyItsCall(t *testing.T) {
	fx := startConc(t, Config{Concurrency: 4})
	for _, cmd := range []string{"hang", "spin"} {
		t.Run(cmd, func(t *testing.T) {
			longCtx, cancelLong := context.WithCancel(context.Background())
			defer cancelLong()
			longErr := make(chan error, 1)
			go func() {
				_, err := fx.w.Call(longCtx, concReq(t, cmd, map[string]any{"tag": cmd + "-long"}))
				longErr <- err
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := fx.w.Call(ctx, concReq(t, cmd, map[string]any{"tag": cmd + "-short"}))
			mustIs(t, err, context.DeadlineExceeded)
			// A neighbour still answers while the long one runs.
			var tag string
			mustOK(t, concCall(t, fx.w, "nap", map[string]any{"tag": "neighbour"}, &tag))
			mustEqual(t, "neighbour", tag)
			// The short one's cancellation reached only it.
			for {
				s := fx.stats(t)
				if slices.Contains(s.Cancelled, cmd+"-short") {
					mustEqual(t, false, slices.Contains(s.Cancelled, cmd+"-long"))
					break
				}
			}
			select {
			case err := <-longErr:
				t.Fatalf("the long call ended: %v", err)
			default:
			}
			cancelLong()
			mustIs(t, <-longErr, context.Canceled)
		})
	}
	mustOK(t, fx.w.Err())
}

// TestConcStreams: several streams open at once on one worker, their
// chunks interleaved.
func TestConcStreams(t *testing.T) {
	fx := startConc(t, Config{Concurrency: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := fx.w.Stream(ctx, concReq(t, "agen", map[string]any{"n": 3, "tag": "a"}))
	mustOK(t, err)
	b, err := fx.w.Stream(ctx, concReq(t, "gen", map[string]any{"n": 3, "tag": "b"}))
	mustOK(t, err)
	next := func(s worker.Stream) []any {
		chunk, err := s.Next(ctx)
		mustOK(t, err)
		var v []any
		mustOK(t, pymarshal.Unmarshal(chunk, &v))
		return v
	}
	for i := range 3 {
		mustEqual(t, []any{"a", int64(i)}, next(a))
		mustEqual(t, []any{"b", int64(i)}, next(b))
	}
	_, err = a.Next(ctx)
	mustIs(t, err, io.EOF)
	// b is closed early; a call still runs beside another open stream.
	c, err := fx.w.Stream(ctx, concReq(t, "agen", map[string]any{"n": 100, "tag": "c"}))
	mustOK(t, err)
	mustEqual(t, []any{"c", int64(0)}, next(c))
	mustOK(t, b.Close())
	var tag string
	mustOK(t, concCall(t, fx.w, "nap", map[string]any{"tag": "x"}, &tag))
	mustOK(t, c.Close())
}

// TestConcHostCalls: host calls of concurrent calls each run with their
// own call's correlation id.
func TestConcHostCalls(t *testing.T) {
	fx := startConc(t, Config{Concurrency: 8})
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			cmd := "who"
			if i%2 == 1 {
				cmd = "who_sync"
			}
			req := concReq(t, cmd, map[string]any{"i": i})
			req.CorrelationID = "cid-" + string(rune('A'+i))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			resp, err := fx.w.Call(ctx, req)
			if err != nil {
				t.Error(err)
				return
			}
			var got []any
			if err := pymarshal.Unmarshal(resp.Result, &got); err != nil {
				t.Error(err)
				return
			}
			if want := []any{int64(i), req.CorrelationID}; !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
	wg.Wait()
}

// pipelined starts hold on a worker with concurrency 1 and depth 1 and,
// once it runs, sends nap "queued" behind it: it returns the fixture, the
// queued request, its Call's outcome and its context's cancel.
func pipelined(t *testing.T) (*concFixture, *worker.Request, chan error, context.CancelFunc, chan error) {
	t.Helper()
	sent := make(chan uint64, 4)
	muxSentHook = func(typ byte, id uint64) {
		if typ == frameCall {
			sent <- id
		}
	}
	t.Cleanup(func() { muxSentHook = nil })
	fx := startConc(t, Config{Concurrency: 1, PipelineDepth: 1})
	holdErr := make(chan error, 1)
	go func() { holdErr <- concCall(t, fx.w, "hold", map[string]any{"tag": "hold"}, nil) }()
	<-sent
	mustEqual(t, "hold", <-fx.started)
	req := concReq(t, "nap", map[string]any{"tag": "queued"})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	queuedErr := make(chan error, 1)
	go func() {
		_, err := fx.w.Call(ctx, req)
		queuedErr <- err
	}()
	<-sent // in the child's queue: its one handler thread is busy
	return fx, req, queuedErr, cancel, holdErr
}

// TestConcPipelinedCancelBeforeStart: a request queued in the child whose
// context ends never runs.
func TestConcPipelinedCancelBeforeStart(t *testing.T) {
	fx, _, queuedErr, cancel, holdErr := pipelined(t)
	cancel()
	mustIs(t, <-queuedErr, context.Canceled)
	close(fx.gate)
	mustOK(t, <-holdErr)
	// Its slot is free again once the child said it never started.
	var tag string
	mustOK(t, concCall(t, fx.w, "nap", map[string]any{"tag": "after"}, &tag))
	s := fx.stats(t)
	mustEqual(t, []string{"hold", "after"}, s.Runs)
}

// TestConcWithdraw: Withdraw takes back a queued request (its Call fails
// with ErrNotStarted, it never runs), and not a running or unknown one.
func TestConcWithdraw(t *testing.T) {
	fx, req, queuedErr, _, holdErr := pipelined(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ok, err := fx.w.Withdraw(ctx, &worker.Request{Command: "nap"})
	mustOK(t, err)
	mustEqual(t, false, ok)
	ok, err = fx.w.Withdraw(ctx, req)
	mustOK(t, err)
	mustEqual(t, true, ok)
	err = <-queuedErr
	mustIs(t, err, worker.ErrNotStarted)
	// The running one is not withdrawn.
	fx.w.mux.mu.Lock()
	var running *worker.Request
	for _, c := range fx.w.mux.calls {
		running = c.req
	}
	fx.w.mux.mu.Unlock()
	mustEqual(t, true, running != nil)
	ok, err = fx.w.Withdraw(ctx, running)
	mustOK(t, err)
	mustEqual(t, false, ok)
	close(fx.gate)
	mustOK(t, <-holdErr)
	mustEqual(t, []string{"hold"}, fx.stats(t).Runs)
	// One-call mode: nothing is ever queued.
	one := startConc(t, Config{})
	ok, err = one.w.Withdraw(ctx, req)
	mustOK(t, err)
	mustEqual(t, false, ok)
}

// TestConcClose: Close waits for the calls in flight, then stops the
// worker; a closed worker refuses calls.
func TestConcClose(t *testing.T) {
	fx := startConc(t, Config{Concurrency: 4, PipelineDepth: 2})
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			var tag string
			if err := concCall(t, fx.w, "nap", map[string]any{"tag": "c", "sleep": 0.2}, &tag); err != nil {
				t.Error(err)
			}
		})
	}
	// Some are in flight when Close begins; each finishes.
	mustOK(t, concCall(t, fx.w, "noop", nil, nil))
	mustOK(t, fx.w.Close(context.Background()))
	wg.Wait()
	mustIs(t, concCall(t, fx.w, "noop", nil, nil), worker.ErrClosed)
}

func mustOK(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got %v, want an error matching %v", err, target)
	}
}

func mustEqual(t testing.TB, want, got any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
}

var concSeed = flag.Uint64("conc.seed", 0, "seed of TestConcRandomized (0: from the clock)")

// TestConcRandomized: goroutines make random calls on one worker in the
// concurrent mode with a pipeline: quick ones that must return their own
// result, ones whose deadline passes while they run or wait in the
// child's queue (async and plain handlers), streams read to their end or
// closed early. The worker stays alive, every call gets its own outcome,
// and once all have returned no handler is left running.
func TestConcRandomized(t *testing.T) {
	concRandomized(t, Config{Concurrency: 3, PipelineDepth: 2, InterruptGrace: 10 * time.Second})
}

// concRandomized is TestConcRandomized on a worker started with cfg.
func concRandomized(t *testing.T, cfg Config) {
	seed := *concSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-conc.seed to replay)", seed)
	fx := startConc(t, cfg)
	const goroutines, steps = 8, 25
	var wg sync.WaitGroup
	for g := range goroutines {
		rng := rand.New(rand.NewPCG(seed, uint64(g)))
		wg.Go(func() {
			for i := range steps {
				if err := concStep(fx.w, rng, fmt.Sprintf("g%d-%d", g, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	mustOK(t, fx.w.Err())
	// Cancelled handlers unwind on their own: wait until none is left.
	for {
		s := fx.stats(t)
		if s.In == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond) // a hang guard bounds this: the test's timeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mustOK(t, fx.w.Close(ctx))
	mustOK(t, fx.w.Err())
}

// concStep makes one random call; an error says what went wrong.
func concStep(w *Worker, rng *rand.Rand, tag string) error {
	long, cancelLong := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelLong()
	short, cancelShort := context.WithTimeout(long, time.Duration(rng.IntN(40))*time.Millisecond)
	defer cancelShort()
	req := func(cmd string, args map[string]any) *worker.Request {
		raw, err := pymarshal.Marshal(args)
		if err != nil {
			panic(err)
		}
		return &worker.Request{Command: cmd, Args: raw, CorrelationID: tag}
	}
	switch op := rng.IntN(6); op {
	case 0, 1: // a quick call: its own result
		resp, err := w.Call(long, req("nap", map[string]any{"tag": tag, "sleep": float64(rng.IntN(10)) / 1000}))
		if err != nil {
			return fmt.Errorf("nap %s: %w", tag, err)
		}
		var got string
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || got != tag {
			return fmt.Errorf("nap %s: got %q (%v), want its own tag", tag, got, err)
		}
	case 2: // a deadline that may pass before, while or after it runs
		resp, err := w.Call(short, req("nap", map[string]any{"tag": tag, "sleep": float64(rng.IntN(30)) / 1000}))
		if err == nil {
			var got string
			if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || got != tag {
				return fmt.Errorf("nap %s: got %q (%v), want its own tag", tag, got, err)
			}
		} else if !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("nap %s with a deadline: got %w, want its result or DeadlineExceeded", tag, err)
		}
	case 3, 4: // runs until its deadline: cancelled
		cmd := "hang"
		if op == 4 {
			cmd = "spin"
		}
		if _, err := w.Call(short, req(cmd, map[string]any{"tag": tag})); !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s %s: got %v, want DeadlineExceeded", cmd, tag, err)
		}
	case 5: // a stream, read to its end or closed early
		n := rng.IntN(5)
		s, err := w.Stream(long, req("agen", map[string]any{"n": n, "tag": tag}))
		if err != nil {
			return fmt.Errorf("stream %s: %w", tag, err)
		}
		stop := rng.IntN(n + 2)
		for i := 0; ; i++ {
			if i == stop {
				return s.Close()
			}
			chunk, err := s.Next(long)
			if errors.Is(err, io.EOF) && i == n {
				return nil
			}
			if err != nil {
				return fmt.Errorf("stream %s item %d: %w", tag, i, err)
			}
			var got []any
			if err := pymarshal.Unmarshal(chunk, &got); err != nil || !reflect.DeepEqual(got, []any{tag, int64(i)}) {
				return fmt.Errorf("stream %s item %d: got %v (%v)", tag, i, got, err)
			}
		}
	}
	return nil
}
