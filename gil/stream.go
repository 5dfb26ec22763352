package gil

import (
	"context"
	"io"
	"sync"

	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// Stream starts a streaming command. See [worker.Worker.Stream]. The worker
// runs nothing else until the stream is exhausted or closed.
func (w *Worker) Stream(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	sctx, cancel := req.WithDeadline(ctx)
	deadline, _ := sctx.Deadline()
	args, err := python.EncodeCall(nil, req, deadline)
	if err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(sctx); err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	s := &stream{w: w, ctx: sctx, cancel: cancel, command: req.Command, cid: req.CorrelationID}
	_, abandoned, err := w.run(sctx, w.fns.streamOpen, args, req.Command, req.CorrelationID, s.closeAbandoned)
	if err != nil {
		if !abandoned {
			w.release()
		}
		cancel()
		return nil, err
	}
	w.openStream.Store(s)
	return s, nil
}

type stream struct {
	w       *Worker
	ctx     context.Context // bounds the whole stream
	cancel  context.CancelFunc
	command string
	cid     string

	mu   sync.Mutex // guards done; serialises Next and Close
	done bool       // the slot is released (or handed to an abandon)
}

// Next returns the next chunk, io.EOF at the end, or the generator's error
// (which also ends the stream).
func (s *stream) Next(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil, io.EOF
	}
	// Bounded by both the stream's context and this call's.
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(s.ctx, func() { cancel(context.Cause(s.ctx)) })
	defer stop()
	r, abandoned, err := s.w.run(cctx, s.w.fns.streamNext, nil, s.command, s.cid, s.closeAbandoned)
	switch {
	case abandoned:
		s.finish(false)
		return nil, err
	case err != nil:
		// The generator raised: the dispatcher has dropped it.
		s.finish(true)
		return nil, err
	case r.End:
		s.finish(true)
		return nil, io.EOF
	}
	return r.Payload, nil
}

// Close closes the generator (its finally blocks run) and frees the worker.
func (s *stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil
	}
	_, _, err := s.w.run(context.Background(), s.w.fns.streamClose, nil, s.command, s.cid, nil)
	s.finish(true)
	return err
}

// finish marks the stream done, releasing the slot unless an abandon owns it.
func (s *stream) finish(release bool) {
	s.done = true
	s.cancel()
	s.w.openStream.CompareAndSwap(s, nil)
	if release {
		s.w.release()
	}
}

// closeAbandoned runs after an interrupted open or next has ended in
// Python: it closes the generator and frees the worker.
func (s *stream) closeAbandoned() {
	_, _, _ = s.w.run(context.Background(), s.w.fns.streamClose, nil, s.command, s.cid, nil)
	s.w.release()
}
