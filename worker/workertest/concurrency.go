package workertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// testConcurrency checks a worker with 8 slots: calls really overlap (each
// handler waits until the others are in: run one at a time, the first
// would wait for ever), each keeps its own correlation id, host calls and
// log records, plain handlers that are not thread-safe never overlap and
// thread-safe ones do, a deadline interrupts only its own call, and two
// streams run side by side.
func testConcurrency(t *testing.T, s *suite) {
	const n = 8
	// Each part's hang guard: a worker that runs the calls one at a time
	// fails there.
	var ctx context.Context
	guard := func(t *testing.T) {
		c, cancel := context.WithTimeout(ctxBG, time.Minute)
		t.Cleanup(cancel)
		ctx = c
	}
	type out struct {
		v   any
		err error
	}
	parallel := func(k int, mk func(i int) *worker.Request) []out {
		res := make([]out, k)
		var wg sync.WaitGroup
		for i := range k {
			wg.Go(func() {
				resp, err := s.w.Call(ctx, mk(i))
				if err == nil {
					res[i].v, err = pymarshal.Decode(resp.Result)
				}
				res[i].err = err
			})
		}
		wg.Wait()
		return res
	}

	t.Run("AsyncOverlap", func(t *testing.T) {
		guard(t)
		res := parallel(n, func(i int) *worker.Request {
			r := req("overlap_async", map[string]any{"group": "overlap", "n": n})
			r.CorrelationID = fmt.Sprintf("conc-%d", i)
			return r
		})
		for i, r := range res {
			if r.err != nil {
				t.Fatalf("call %d: %v", i, r.err)
			}
			m := r.v.(map[string]any)
			want := fmt.Sprintf("conc-%d", i)
			if m["cid"] != want || m["host_cid"] != want {
				t.Errorf("call %d: got correlation id %v, host function saw %v, want %s for both", i, m["cid"], m["host_cid"], want)
			}
			if m["max"] != int64(n) {
				t.Errorf("call %d: at most %v calls in at once, want %d", i, m["max"], n)
			}
			rec, ok := s.logs.find("overlap " + want)
			if !ok || rec.attrs["correlation_id"] != want {
				t.Errorf("log record of call %d: got %v (found %v), want it attached to %s", i, rec.attrs, ok, want)
			}
		}
	})

	t.Run("PlainOneAtATime", func(t *testing.T) {
		guard(t)
		for i, r := range parallel(4, func(int) *worker.Request {
			return req("plain_probe", map[string]any{"group": "plain", "ms": 30})
		}) {
			if r.err != nil || r.v != int64(1) {
				t.Errorf("call %d: got %v, %v; want 1 call in at a time (the adapter is not thread-safe)", i, r.v, r.err)
			}
		}
	})

	t.Run("PlainThreadSafe", func(t *testing.T) {
		guard(t)
		for i, r := range parallel(3, func(int) *worker.Request {
			return req("plain_barrier", map[string]any{"group": "barrier", "n": 3})
		}) {
			if r.err != nil || r.v != true {
				t.Errorf("call %d: got %v, %v; want all three in at once", i, r.v, r.err)
			}
		}
	})

	t.Run("InterruptIsolated", func(t *testing.T) {
		guard(t)
		s.mustCall(t, req("events", nil)) // clear
		errs := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := s.w.Call(ctx, req("wait_release", map[string]any{"group": "iso"}))
				errs <- err
			}()
		}
		short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancelShort()
		_, err := s.w.Call(short, req("wait_release", map[string]any{"group": "iso-short"}))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the call with a deadline: got %v, want DeadlineExceeded", err)
		}
		s.mustCall(t, req("release", map[string]any{"group": "iso"}))
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("a neighbour of the interrupted call: got %v, want it released normally", err)
			}
		}
	})

	t.Run("Streams", func(t *testing.T) {
		guard(t)
		a, err := s.w.Stream(ctx, req("count", map[string]any{"n": 3}))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := s.w.Stream(ctx, req("count", map[string]any{"n": 3}))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for i := range 3 {
			for name, st := range map[string]worker.Stream{"a": a, "b": b} {
				chunk, err := st.Next(ctx)
				if err != nil {
					t.Fatalf("stream %s, chunk %d: %v", name, i, err)
				}
				if v, _ := pymarshal.Decode(chunk); v != int64(i) {
					t.Fatalf("stream %s, chunk %d: got %v", name, i, v)
				}
			}
		}
	})
}

// testDeathInFlight: a worker with several slots whose handler is stuck
// past the grace period dies, and every other call in flight fails with
// ErrWorkerDead at once (not when its own handler would have ended).
func testDeathInFlight(t *testing.T, w worker.Worker) {
	ctx, cancel := context.WithTimeout(ctxBG, time.Minute)
	defer cancel()
	defer func() {
		closeCtx, cancel := context.WithTimeout(ctxBG, 30*time.Second)
		defer cancel()
		_ = w.Close(closeCtx)
	}()
	const k = 3
	errs := make(chan error, k)
	for range k {
		go func() {
			_, err := w.Call(ctx, req("wait_release", map[string]any{"group": "death", "timeout": 20}))
			errs <- err
		}()
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := w.Call(short, req("block_in_c", map[string]any{"seconds": 3})); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the stuck call: got %v, want DeadlineExceeded", err)
	}
	select {
	case <-w.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("a worker stuck past its grace period did not declare itself dead")
	}
	for i := range k {
		select {
		case err := <-errs:
			if !errors.Is(err, worker.ErrWorkerDead) {
				t.Errorf("call %d in flight: got %v, want ErrWorkerDead", i, err)
			}
		case <-time.After(10 * time.Second): // well before their handlers end (20 s)
			t.Fatalf("call %d in flight still waiting after the worker died", i)
		}
	}
}
