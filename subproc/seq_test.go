package subproc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// seqConfig is a worker in the sequential pipelined mode: one call at a
// time, two more requests queued in the child.
func seqConfig() Config {
	return Config{Concurrency: 1, PipelineDepth: 2, InterruptGrace: 10 * time.Second}
}

// sentCalls makes the concurrent mode report each CALL frame it sent on
// the channel it returns.
func sentCalls(t *testing.T) chan uint64 {
	t.Helper()
	sent := make(chan uint64, 16)
	muxSentHook = func(typ byte, id uint64) {
		if typ == frameCall {
			sent <- id
		}
	}
	t.Cleanup(func() { muxSentHook = nil })
	return sent
}

// seqCall runs command in the background with ctx; the outcome comes on
// the channel it returns.
func seqCall(t *testing.T, w *Worker, ctx context.Context, command, tag string, args map[string]any) chan seqOutcome {
	t.Helper()
	req := concReq(t, command, args)
	req.CorrelationID = "cid-" + command + "-" + tag
	out := make(chan seqOutcome, 1)
	go func() {
		resp, err := w.Call(ctx, req)
		var o seqOutcome
		o.err = err
		if err == nil {
			o.err = pymarshal.Unmarshal(resp.Result, &o.result)
		}
		out <- o
	}()
	return out
}

type seqOutcome struct {
	result any
	err    error
}

// TestSeqMode: Concurrency 1 with a pipeline uses the sequential mode,
// and Concurrency above 1 the concurrent one.
func TestSeqMode(t *testing.T) {
	mustEqual(t, true, (&Config{Concurrency: 1, PipelineDepth: 2}).sequential())
	mustEqual(t, false, (&Config{Concurrency: 1}).sequential())
	mustEqual(t, false, (&Config{Concurrency: 2, PipelineDepth: 2}).sequential())
	fx := startConc(t, seqConfig())
	mustEqual(t, true, fx.w.mux != nil && fx.w.mux.seq)
	var tag string
	mustOK(t, concCall(t, fx.w, "noop", map[string]any{"tag": "x"}, &tag))
	mustEqual(t, "x", tag)
}

// TestSeqRandomized is TestConcRandomized in the sequential pipelined
// mode.
func TestSeqRandomized(t *testing.T) { concRandomized(t, seqConfig()) }

// TestSeqRandomizedDeep: the same at the pool's deepest pipeline (16),
// where every caller's request can wait in the child at once.
func TestSeqRandomizedDeep(t *testing.T) {
	cfg := seqConfig()
	cfg.PipelineDepth = 16
	concRandomized(t, cfg)
}

// TestSeqHostCallsWhilePipelined: requests sent while the running one
// waits in a host call are kept for later (not taken for protocol
// errors); the ones queued make host calls of their own when they run,
// each under its own correlation id, and all run in the order sent.
func TestSeqHostCallsWhilePipelined(t *testing.T) {
	sent := sentCalls(t)
	fx := startConc(t, seqConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hold := seqCall(t, fx.w, ctx, "hold", "hold", map[string]any{"tag": "hold"})
	<-sent
	mustEqual(t, "hold", <-fx.started) // it waits in its gate host call
	who := seqCall(t, fx.w, ctx, "who_sync", "a", map[string]any{"i": 1})
	<-sent
	awho := seqCall(t, fx.w, ctx, "who", "b", map[string]any{"i": 2})
	<-sent
	close(fx.gate)
	o := <-hold
	mustOK(t, o.err)
	mustEqual(t, "hold", o.result)
	o = <-who
	mustOK(t, o.err)
	mustEqual(t, []any{int64(1), "cid-who_sync-a"}, o.result)
	o = <-awho
	mustOK(t, o.err)
	mustEqual(t, []any{int64(2), "cid-who-b"}, o.result)
	mustOK(t, fx.w.Err())
}

// TestSeqReplyRoutedBeforeReading: a caller whose reply another caller
// routed just before it took the reading role takes the outcome, instead
// of reading for a frame that never comes (it hung when the outcome was
// looked for before the lock: found with 64 callers on a pipeline of 16).
func TestSeqReplyRoutedBeforeReading(t *testing.T) {
	sent := sentCalls(t)
	fx := startConc(t, seqConfig())
	type stallKey struct{}
	release := make(chan struct{})
	var once sync.Once
	seqWaitHook = func(ctx context.Context) {
		if ctx.Value(stallKey{}) != nil {
			once.Do(func() { <-release })
		}
	}
	t.Cleanup(func() { seqWaitHook = nil })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// x is sent first and stalls before it takes the reading role; y
	// reads, routes x's reply (the child answers in order), then its own.
	x := seqCall(t, fx.w, context.WithValue(ctx, stallKey{}, true), "noop", "x", map[string]any{"tag": "x"})
	<-sent
	y := seqCall(t, fx.w, ctx, "noop", "y", map[string]any{"tag": "y"})
	<-sent
	o := <-y
	mustOK(t, o.err)
	mustEqual(t, "y", o.result)
	close(release)
	select {
	case o = <-x:
		mustOK(t, o.err)
		mustEqual(t, "x", o.result)
	case <-time.After(10 * time.Second):
		t.Fatal("x did not return: it reads for a reply another caller routed")
	}
}

// TestSeqCancelReadBeforeStart: a request the child read while the one
// before it waited in a host call, and whose CANCEL arrives while that one
// runs on without reading, never runs: the child reads what arrived before
// it starts the next request (the CANCEL came long before).
func TestSeqCancelReadBeforeStart(t *testing.T) {
	sent := sentCalls(t)
	fx := startConc(t, seqConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	head := seqCall(t, fx.w, ctx, "hold_then_sleep", "head", map[string]any{"tag": "head", "sleep": 0.2})
	<-sent
	mustEqual(t, "head", <-fx.started)
	queuedCtx, cancelQueued := context.WithCancel(ctx)
	defer cancelQueued()
	queued := seqCall(t, fx.w, queuedCtx, "mark", "queued", map[string]any{"tag": "queued"})
	<-sent
	// The gate's reply follows the queued request: the child reads that
	// request while it waits for the reply.
	close(fx.gate)
	mustEqual(t, "head-past", <-fx.started)
	cancelQueued()
	mustIs(t, (<-queued).err, context.Canceled)
	o := <-head
	mustOK(t, o.err)
	mustEqual(t, "head", o.result)
	var tag string
	mustOK(t, concCall(t, fx.w, "nap", map[string]any{"tag": "after"}, &tag))
	s := fx.stats(t)
	mustEqual(t, []string{"head", "after"}, s.Runs)
	mustOK(t, fx.w.Err())
}

// TestSeqDeadlines: a request queued behind a running one whose context
// ends never runs; the running one whose context ends is interrupted
// alone: the request queued behind it runs to its end. A deadline that
// passes while a request runs interrupts it too.
func TestSeqDeadlines(t *testing.T) {
	sent := sentCalls(t)
	fx := startConc(t, seqConfig())
	long, cancelLong := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelLong()
	headCtx, cancelHead := context.WithCancel(long)
	defer cancelHead()
	head := seqCall(t, fx.w, headCtx, "spin_started", "head", map[string]any{"tag": "head"})
	<-sent
	mustEqual(t, "head", <-fx.started)
	after := seqCall(t, fx.w, long, "nap", "after", map[string]any{"tag": "after"})
	<-sent
	queuedCtx, cancelQueued := context.WithCancel(long)
	defer cancelQueued()
	queued := seqCall(t, fx.w, queuedCtx, "nap", "queued", map[string]any{"tag": "queued"})
	<-sent
	cancelQueued()
	mustIs(t, (<-queued).err, context.Canceled)
	cancelHead()
	mustIs(t, (<-head).err, context.Canceled)
	o := <-after
	mustOK(t, o.err)
	mustEqual(t, "after", o.result)
	s := fx.stats(t)
	mustEqual(t, []string{"head", "after"}, s.Runs)
	mustEqual(t, []string{"head"}, s.Cancelled)
	mustOK(t, fx.w.Err())

	// A deadline (not a cancel) on the running request.
	ctx, cancel := context.WithTimeout(long, 100*time.Millisecond)
	defer cancel()
	_, err := fx.w.Call(ctx, concReq(t, "spin", map[string]any{"tag": "timed"}))
	mustIs(t, err, context.DeadlineExceeded)
	var tag string
	mustOK(t, concCall(t, fx.w, "nap", map[string]any{"tag": "later"}, &tag))
	mustEqual(t, "later", tag)
	s = fx.stats(t)
	mustEqual(t, []string{"head", "timed"}, s.Cancelled)
	mustOK(t, fx.w.Err())
}

// TestSeqCrash: a crash with three requests outstanding (one running, two
// queued) fails each of them once with ErrWorkerDead.
func TestSeqCrash(t *testing.T) {
	sent := sentCalls(t)
	fx := startConc(t, seqConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	outs := []chan seqOutcome{seqCall(t, fx.w, ctx, "crash_at_gate", "crash", nil)}
	<-sent
	mustEqual(t, "crash", <-fx.started)
	for _, tag := range []string{"q1", "q2"} {
		outs = append(outs, seqCall(t, fx.w, ctx, "nap", tag, map[string]any{"tag": tag}))
		<-sent
	}
	close(fx.gate)
	var wg sync.WaitGroup
	for i, out := range outs {
		wg.Go(func() {
			o := <-out
			if !errors.Is(o.err, worker.ErrWorkerDead) {
				t.Errorf("request %d: got %v, want an error matching ErrWorkerDead", i, o.err)
			}
			select {
			case o := <-out:
				t.Errorf("request %d: a second outcome %v", i, o)
			default:
			}
		})
	}
	wg.Wait()
	mustIs(t, fx.w.Err(), worker.ErrWorkerDead)
}

// TestSeqLargeRequestsPipelined: requests larger than the child's read
// buffer, pipelined among small ones from several callers, each come back
// whole to their own caller, and the worker stays up.
func TestSeqLargeRequestsPipelined(t *testing.T) {
	cfg := seqConfig()
	cfg.PipelineDepth = 4
	fx := startConc(t, cfg)
	const callers, calls = 6, 12
	var wg sync.WaitGroup
	errs := make(chan error, callers*calls)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				size := 8
				if (c+i)%3 == 0 {
					size = 150_000 + c*1000 + i
				}
				tag := strings.Repeat(string(rune('a'+c)), size)
				var got string
				if err := concCall(t, fx.w, "noop", map[string]any{"tag": tag}, &got); err != nil {
					errs <- fmt.Errorf("caller %d call %d (%d bytes): %w", c, i, size, err)
					return
				}
				if got != tag {
					errs <- fmt.Errorf("caller %d call %d: got %d bytes, want its own %d", c, i, len(got), size)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mustOK(t, fx.w.Err())
}
