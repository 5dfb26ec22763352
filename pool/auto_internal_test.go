package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

// scriptedAuto is an autoProfile over fake profiles: the thread one fails
// with threadErr(n) on its n-th start (nil: starts).
func scriptedAuto(threadErr func(n int64) error) (a *autoProfile, threadStarts, processStarts *atomic.Int64) {
	threadStarts, processStarts = new(atomic.Int64), new(atomic.Int64)
	a = &autoProfile{
		log:     slog.New(slog.DiscardHandler),
		lead:    make(chan struct{}, 1),
		decided: make(chan struct{}),
		eff:     Auto,
		thread: profile{newWorker: func(_ context.Context, id string) (worker.Worker, error) {
			if err := threadErr(threadStarts.Add(1)); err != nil {
				return nil, err
			}
			return &workertest.Fake{WorkerID: id}, nil
		}},
		process: profile{newWorker: func(_ context.Context, id string) (worker.Worker, error) {
			processStarts.Add(1)
			return &workertest.Fake{WorkerID: id}, nil
		}},
	}
	return a, threadStarts, processStarts
}

var errRefused = &worker.SetupError{Stage: "import", Err: &worker.PythonError{Type: "ImportError",
	Message: "module _testsinglephase does not support loading in subinterpreters"}}

func TestAutoRefusalTriesThreadOnce(t *testing.T) {
	a, threads, procs := scriptedAuto(func(int64) error { return errRefused })
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			w, err := a.newWorker(context.Background(), fmt.Sprint("w", i))
			assert.NoError(t, err)
			assert.NotNil(t, w)
		})
	}
	wg.Wait()
	assert.Equal(t, int64(1), threads.Load(), "thread starts")
	assert.Equal(t, int64(8), procs.Load(), "process starts")
	assert.Equal(t, Process, a.effective())
	assert.ErrorIs(t, a.reason, worker.ErrNotSubinterpreterSafe)
}

func TestAutoOtherErrorLeavesUndecided(t *testing.T) {
	boom := errors.New("syntax error")
	a, threads, procs := scriptedAuto(func(n int64) error {
		if n == 1 {
			return boom
		}
		return nil
	})
	_, err := a.newWorker(context.Background(), "w1")
	require.ErrorIs(t, err, boom)
	assert.Equal(t, Auto, a.effective(), "after a failed first start")
	_, err = a.newWorker(context.Background(), "w2")
	require.NoError(t, err)
	assert.Equal(t, Thread, a.effective(), "after a thread worker started")
	_, err = a.newWorker(context.Background(), "w3")
	require.NoError(t, err)
	assert.Equal(t, int64(3), threads.Load(), "thread starts")
	assert.Equal(t, int64(0), procs.Load(), "process starts")
}

func TestAutoWaitingStartHonoursContext(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	a, _, _ := scriptedAuto(nil)
	a.thread.newWorker = func(context.Context, string) (worker.Worker, error) {
		close(entered)
		<-release
		return &workertest.Fake{WorkerID: "w1"}, nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.newWorker(context.Background(), "w1")
		done <- err
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := a.newWorker(ctx, "w2")
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, worker.ErrSetup)
	close(release)
	require.NoError(t, <-done)
	assert.Equal(t, Thread, a.effective())
}

func TestAutoProcessStartFailureSaysWhy(t *testing.T) {
	a, _, _ := scriptedAuto(func(int64) error { return errRefused })
	startErr := errors.New("exec: python3: not found")
	a.process.newWorker = func(context.Context, string) (worker.Worker, error) { return nil, startErr }
	_, err := a.newWorker(context.Background(), "w1")
	require.ErrorIs(t, err, startErr)
	assert.Contains(t, err.Error(), "does not support loading in subinterpreters")
}

func TestAutoLaterRefusalSwitchesToProcess(t *testing.T) {
	// The first sub-interpreter imports the module, the next ones are
	// refused (numpy before 2 on 3.11).
	a, threads, procs := scriptedAuto(func(n int64) error {
		if n > 1 {
			return errRefused
		}
		return nil
	})
	rec := &countingHandler{}
	a.log = slog.New(rec)
	_, err := a.newWorker(context.Background(), "w1")
	require.NoError(t, err)
	assert.Equal(t, Thread, a.effective(), "after the first start")
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			_, err := a.newWorker(context.Background(), fmt.Sprint("w", i+2))
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	assert.Equal(t, Process, a.effective(), "after a refused thread start")
	assert.Equal(t, int64(4), procs.Load(), "process starts")
	_, err = a.newWorker(context.Background(), "w6")
	require.NoError(t, err)
	assert.Equal(t, int64(5), procs.Load(), "process starts")
	assert.LessOrEqual(t, threads.Load(), int64(5), "thread starts")
	assert.Equal(t, int64(1), rec.warnings.Load(), "warnings logged")
}

// countingHandler counts the warnings logged.
type countingHandler struct{ warnings atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		h.warnings.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
