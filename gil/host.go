package gil

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// Host functions (Config.Host) are called from Python through the
// interpreter's host_call builtin (see embed.HostHandler): the Go function
// runs on the calling Python thread's own OS thread with the
// interpreter's GIL released, so a host call wakes no other thread, and
// several of a handler's threads may call at once. Bytes-like keyword
// arguments of embed.HostBufferMin bytes or more reach a *host.Set's
// functions as the Python objects' own memory, valid until the function
// returns (host.Set.AppendInvokeBuffers); large []byte and Array results
// are copied once, into the bytes objects Python gets.
//
// Each Call and each Stream (open to close) is a hostCall, identified by
// the id of the call that started it: before every call the interpreter
// sets the dispatcher's host_token to the call's id (embed TagCalls), and
// each handler context keeps the token current when it was made. A host
// call whose token is not the current call's, or that arrives after its
// call ended on the Go side, is refused.

// hostCall is the call in flight whose handler may call host functions.
type hostCall struct {
	token  uint64          // the id of the call that made the handler's context; set before it is current
	parent context.Context // the Call's or Stream's context
	cid    string

	mu     sync.Mutex // guards the fields below
	ctx    context.Context
	cancel context.CancelFunc
	ended  bool
	cause  error // why the call ended early (its context's cause), if it did
}

// context returns the context host functions of c get: the call's, with
// its correlation id, done when c ends. Once c ended it returns the error
// to reply with instead.
func (c *hostCall) context(name string) (context.Context, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		if c.cause != nil {
			// Ended at its deadline (or cancelled): a handler still running
			// gets TimeoutError (snakepit.Cancelled) from its host calls.
			return nil, fmt.Errorf("gil: host function %q: %s: %w", name, errCallEnded, c.cause)
		}
		return nil, fmt.Errorf("gil: host function %q: %s", name, errCallEnded)
	}
	if c.ctx == nil { // made on the first host call: most calls make none
		ctx, cancel := context.WithCancel(c.parent)
		c.ctx, c.cancel = worker.WithCorrelationID(ctx, c.cid), cancel
	}
	return c.ctx, nil
}

// end ends c: the context its host functions got is done, and later host
// calls for it are refused.
func (c *hostCall) end() {
	c.mu.Lock()
	c.ended = true
	if c.parent.Err() != nil {
		c.cause = context.Cause(c.parent)
	}
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// newHostCall returns the hostCall for a call with ctx and correlation id
// cid, or nil when the worker has no host functions.
func (w *Worker) newHostCall(ctx context.Context, cid string) *hostCall {
	if w.host == nil {
		return nil
	}
	return &hostCall{parent: ctx, cid: cid}
}

// endHostCall ends hc (nil: nothing). It stays the current one, ended,
// until the next call replaces it, so that a late host call for it is told
// why it ended.
func (w *Worker) endHostCall(hc *hostCall) {
	if hc != nil {
		hc.end()
	}
}

// hostNames returns h's names, sorted; none for a nil h.
func hostNames(h worker.Host) []string {
	if h == nil {
		return []string{}
	}
	names := slices.Clone(h.Names())
	slices.Sort(names)
	if names == nil {
		names = []string{}
	}
	return names
}

// installHost makes the interpreter serve host_call with this worker's
// functions and tag each call with its id (only with functions: the tag
// costs a little on every call).
func (w *Worker) installHost(ctx context.Context) error {
	w.in.SetHostHandler(w.serveHost)
	if w.host == nil || w.conc > 1 { // several slots: each call passes its id
		return nil
	}
	disp, err := w.in.Func(ctx, "__main__", "_spk")
	if err != nil {
		return err
	}
	return w.in.TagCalls(ctx, disp, "host_token")
}

// errCallEnded is the message of a host call refused because its call has
// ended.
const errCallEnded = "the call it was made for has ended"

// serveHost serves a host call from Python (an embed.HostHandler). It
// never fails: errors are encoded in the reply, as host.Reply does.
func (w *Worker) serveHost(token uint64, name string, payload []byte, bufs [][]byte, reply []byte, replyBufs bool) ([]byte, [][]byte) {
	if w.host == nil {
		return host.Reply(nil, fmt.Errorf("%w %q: worker %s has no host functions", host.ErrUnknownFunction, name, w.id)), nil
	}
	var c *hostCall
	if w.conc > 1 {
		w.cmu.Lock()
		c = w.hosts[token]
		w.cmu.Unlock()
	} else if c = w.cur.Load(); c != nil && c.token != token {
		c = nil
	}
	if c == nil {
		return host.Reply(nil, fmt.Errorf("gil: host function %q: %s", name, errCallEnded)), nil
	}
	ctx, err := c.context(name)
	if err != nil {
		return host.Reply(nil, err), nil
	}
	// payload and bufs are Python's memory, valid during this call only,
	// which is all the host functions are promised (host.New documents
	// that its []byte arguments alias them).
	if b, ok := w.host.(host.BufferInvoker); ok {
		outMin := 0
		if replyBufs {
			outMin = embed.HostBufferMin
		}
		return b.AppendInvokeBuffers(reply, ctx, name, payload, bufs, outMin, nil)
	}
	if bufs != nil { // a Host that takes marshal bytes alone
		inline, err := pymarshal.AppendInline(nil, payload, bufs)
		if err != nil {
			return host.Reply(nil, fmt.Errorf("gil: host function %q: arguments: %w", name, err)), nil
		}
		payload = inline
	}
	if a, ok := w.host.(appendInvoker); ok {
		return a.AppendInvoke(reply, ctx, name, payload), nil
	}
	return w.host.Invoke(ctx, name, payload), nil
}

// appendInvoker is a worker.Host that can append its reply to a buffer
// (*host.Set does): the reply is then written straight into the memory
// the host_call builtin returns it from.
type appendInvoker interface {
	AppendInvoke(dst []byte, ctx context.Context, name string, args []byte) []byte
}
