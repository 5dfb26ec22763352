package gil

import (
	"context"

	"github.com/snakepit-go/snakepit/internal/wstream"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// Stream starts a streaming command. See [worker.Worker.Stream]. The worker
// runs nothing else until the stream is exhausted or closed.
func (w *Worker) Stream(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	if w.conc > 1 {
		return w.streamConc(ctx, req)
	}
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
	cmd, cid := req.Command, req.CorrelationID
	closeGen := func(context.Context) (bool, error) {
		_, _, err := w.run(context.Background(), w.fns.streamClose, nil, cmd, cid, nil)
		return false, err
	}
	// After an interrupted open or next has ended in Python: close the
	// generator and free the worker.
	closeAbandoned := func() {
		_, _ = closeGen(context.Background())
		w.release()
	}
	// The stream's host calls (during open and each next, and from threads
	// its handler started) run with the stream's context until it ends.
	hc := w.newHostCall(sctx, cid)
	_, abandoned, err := w.runBufs(sctx, w.fns.streamOpen, args, nil, cmd, cid, hc, closeAbandoned)
	if err != nil {
		w.endHostCall(hc)
		if !abandoned {
			w.release()
		}
		cancel()
		return nil, err
	}
	var s *wstream.Stream
	s = wstream.New(sctx, cancel, wstream.Ops{
		Next: func(ctx context.Context) (python.Reply, bool, error) {
			return w.run(ctx, w.fns.streamNext, nil, cmd, cid, closeAbandoned)
		},
		CloseGen: closeGen,
		Release:  w.release,
		Forget: func() {
			w.endHostCall(hc)
			w.openStream.CompareAndSwap(s, nil)
		},
	})
	w.openStream.Store(s)
	return s, nil
}
