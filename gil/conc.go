package gil

import (
	"context"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/wstream"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// A worker with several slots (Config.Concurrency > 1) runs each call on
// the caller's goroutine's own OS thread, several at once in its
// interpreter: the dispatcher then runs async handlers as tasks on its
// event loop thread, and plain ones on the calling thread (one at a time
// unless the adapter is thread-safe). Each call is named to the dispatcher
// by a call id of its own (the call tuple's last element): its context,
// host calls, logs and cancellation follow that id. A call whose caller
// leaves is cancelled by id: an async task is cancelled on the loop, a
// plain handler interrupted in its thread.

// callConc is Call for a worker with several slots.
func (w *Worker) callConc(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	ctx, cancel := req.WithDeadline(ctx)
	defer cancel()
	deadline, _ := ctx.Deadline()
	id := embed.NewCallID()
	args, err := python.EncodeCallOutOfBandID(nil, req, deadline, id)
	if err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(ctx); err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	hc := w.newHostCall(ctx, req.CorrelationID)
	w.addHost(id, hc)
	r, abandoned, err := w.runConc(ctx, w.fns.call, args, req.Buffers, id, req.Command, req.CorrelationID, w.release)
	w.endHost(id, hc)
	if !abandoned {
		w.release()
	}
	if err != nil {
		return nil, err
	}
	return &worker.Response{Result: r.Payload}, nil
}

// runConc calls a dispatcher method for a worker with several slots, on a
// goroutine of its own, so that the caller can leave when ctx ends (the
// call is then cancelled in the background, which runs onAbandon, if not
// nil, once Python is done with it). pyID is the call id the dispatcher
// knows the call by (0: none, a call of the worker's own).
func (w *Worker) runConc(ctx context.Context, fn *embed.Func, args []byte, bufs [][]byte, pyID uint64, command, cid string, onAbandon func()) (r python.Reply, abandoned bool, err error) {
	if ctx.Err() != nil {
		// Ended already (say, while the call waited for a slot): the
		// handler does not run.
		return python.Reply{}, false, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
	}
	id := embed.NewCallID()
	resc := make(chan callResult, 1)
	go func() {
		out, err := w.callOnThread(id, fn, args, bufs)
		resc <- callResult{out, err}
	}()
	later := func() {
		if onAbandon != nil {
			onAbandon()
		}
	}
	select {
	case res := <-resc:
		r, err = w.reply(ctx, res, command, cid)
		return r, false, err
	case <-ctx.Done():
		w.bg.Add(1)
		go w.abandon(id, pyID, resc, command, cid, later)
		return python.Reply{}, true, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
	case <-w.done:
		// The worker died (another call is stuck) or is closing under
		// this call: it fails now, and is stopped as if its caller had
		// left; its slot is freed when Python is done with it.
		w.bg.Add(1)
		go w.abandon(id, pyID, resc, command, cid, later)
		return python.Reply{}, true, &worker.CallError{Command: command, CorrelationID: cid, Err: w.unavailable()}
	}
}

// cancelByID asks the dispatcher to cancel call pyID; it reports whether
// that cancelled an async task (which then ends by itself).
func (w *Worker) cancelByID(ctx context.Context, pyID uint64) (bool, error) {
	args, err := pymarshal.Marshal(pymarshal.Tuple{int64(pyID)})
	if err != nil {
		return false, err
	}
	out, err := w.in.CallRaw(ctx, w.fns.cancelID, args, nil, nil)
	if err != nil {
		return false, err
	}
	var ok bool
	if err := pymarshal.Unmarshal(out, &ok); err != nil {
		return false, err
	}
	return ok, nil
}

// addHost makes hc the host call of call id (nil: nothing).
func (w *Worker) addHost(id uint64, hc *hostCall) {
	if hc == nil {
		return
	}
	hc.token = id
	w.cmu.Lock()
	w.hosts[id] = hc
	w.cmu.Unlock()
}

// endHost ends hc, the host call of call id: its functions' contexts are
// done, and later host calls for it are refused.
func (w *Worker) endHost(id uint64, hc *hostCall) {
	if hc == nil {
		return
	}
	w.cmu.Lock()
	if w.hosts[id] == hc {
		delete(w.hosts, id)
	}
	w.cmu.Unlock()
	hc.end()
}

// streamConc is Stream for a worker with several slots: the stream holds
// a slot until it is closed or exhausted, and the dispatcher knows it by
// its call id.
func (w *Worker) streamConc(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	sctx, cancel := req.WithDeadline(ctx)
	deadline, _ := sctx.Deadline()
	sid := embed.NewCallID()
	args, err := python.EncodeCallID(nil, req, deadline, sid)
	if err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	idArgs, err := pymarshal.Marshal(pymarshal.Tuple{int64(sid)})
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
		_, _, err := w.runConc(context.Background(), w.fns.streamClose, idArgs, nil, sid, cmd, cid, nil)
		return false, err
	}
	closeAbandoned := func() {
		_, _ = closeGen(context.Background())
		w.release()
	}
	hc := w.newHostCall(sctx, cid)
	w.addHost(sid, hc)
	_, abandoned, err := w.runConc(sctx, w.fns.streamOpen, args, nil, sid, cmd, cid, closeAbandoned)
	if err != nil {
		w.endHost(sid, hc)
		if !abandoned {
			w.release()
		}
		cancel()
		return nil, err
	}
	var s *wstream.Stream
	s = wstream.New(sctx, cancel, wstream.Ops{
		Next: func(ctx context.Context) (python.Reply, bool, error) {
			return w.runConc(ctx, w.fns.streamNext, idArgs, nil, sid, cmd, cid, closeAbandoned)
		},
		CloseGen: closeGen,
		Release:  w.release,
		Forget: func() {
			w.endHost(sid, hc)
			w.cmu.Lock()
			delete(w.streams, s)
			w.cmu.Unlock()
		},
	})
	w.cmu.Lock()
	w.streams[s] = struct{}{}
	w.cmu.Unlock()
	return s, nil
}

// openStreams returns the streams open on the worker.
func (w *Worker) openStreams() []*wstream.Stream {
	if w.conc == 1 {
		if s := w.openStream.Load(); s != nil {
			return []*wstream.Stream{s}
		}
		return nil
	}
	w.cmu.Lock()
	defer w.cmu.Unlock()
	out := make([]*wstream.Stream, 0, len(w.streams))
	for s := range w.streams {
		out = append(out, s)
	}
	return out
}
