// Package wstream is the stream state machine both worker kinds share: one
// open generator, its chunks pulled one request at a time, closed early or
// at its end, and the worker's call slot freed exactly once.
package wstream

import (
	"context"
	"io"

	"github.com/snakepit-go/snakepit/python"
)

// Ops are a worker kind's operations on its open stream.
type Ops struct {
	// Next asks for the next chunk, bounded by ctx. abandoned reports that
	// ctx ended first and the worker now owns the request (it frees the
	// slot itself once the request is done).
	Next func(ctx context.Context) (r python.Reply, abandoned bool, err error)
	// CloseGen closes the generator in the worker, bounded by ctx (and
	// by the worker's own grace period). abandoned reports that it did
	// not finish in time and the worker now owns the close (it frees the
	// slot itself once the generator is closed, or the worker died).
	CloseGen func(ctx context.Context) (abandoned bool, err error)
	// Release frees the worker's call slot.
	Release func()
	// Forget tells the worker the stream is over.
	Forget func()
}

// Stream implements worker.Stream over Ops.
type Stream struct {
	ops    Ops
	ctx    context.Context // bounds the whole stream
	cancel context.CancelFunc

	// lock is held (a token in it) by Next and Close: a channel, so that
	// CloseContext can give up waiting for a Next in progress.
	lock chan struct{}
	done bool // guarded by lock; the slot is released (or owned by an abandoned request)
}

// New returns the stream; ctx bounds it as a whole and cancel is called
// when it ends.
func New(ctx context.Context, cancel context.CancelFunc, ops Ops) *Stream {
	return &Stream{ops: ops, ctx: ctx, cancel: cancel, lock: make(chan struct{}, 1)}
}

func (s *Stream) unlock() { <-s.lock }

// Next returns the next chunk, io.EOF at the end, or the generator's error
// (which also ends the stream). It is bounded by ctx and the stream's own
// context.
func (s *Stream) Next(ctx context.Context) ([]byte, error) {
	s.lock <- struct{}{}
	defer s.unlock()
	if s.done {
		return nil, io.EOF
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(s.ctx, func() { cancel(context.Cause(s.ctx)) })
	defer stop()
	if d, ok := s.ctx.Deadline(); ok {
		var cancelDeadline context.CancelFunc
		cctx, cancelDeadline = context.WithDeadline(cctx, d)
		defer cancelDeadline()
	}
	if cctx.Err() != nil {
		// Ended before the request: nothing reaches the generator, so
		// close it here (its finally blocks run) like Close would.
		abandoned, _ := s.ops.CloseGen(context.Background())
		s.finish(!abandoned)
		return nil, context.Cause(cctx)
	}
	r, abandoned, err := s.ops.Next(cctx)
	switch {
	case abandoned:
		s.finish(false)
		return nil, err
	case err != nil:
		release := true
		if cctx.Err() != nil {
			// It may have ended just before the request went out; closing
			// a stream the worker already dropped is harmless.
			abandoned, _ := s.ops.CloseGen(context.Background())
			release = !abandoned
		}
		s.finish(release) // the generator raised: the worker dropped it
		return nil, err
	case r.End:
		s.finish(true)
		return nil, io.EOF
	}
	return r.Payload, nil
}

// Close closes the generator (its finally blocks run) and frees the worker.
// Closing an ended stream is a no-op. It waits for a Next in progress.
func (s *Stream) Close() error { return s.CloseContext(context.Background()) }

// CloseContext is Close bounded by ctx: it stops waiting for a Next in
// progress when ctx ends (returning ctx's cause, the stream left as it
// is), and the generator's close is bounded by ctx too (the worker then
// finishes or kills it in the background).
func (s *Stream) CloseContext(ctx context.Context) error {
	if ctx.Err() != nil {
		return context.Cause(ctx) // an ended context closes nothing, even with the lock free
	}
	select {
	case s.lock <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer s.unlock()
	if s.done {
		return nil
	}
	abandoned, err := s.ops.CloseGen(ctx)
	s.finish(!abandoned)
	return err
}

func (s *Stream) finish(release bool) {
	s.done = true
	s.cancel()
	s.ops.Forget()
	if release {
		s.ops.Release()
	}
}
