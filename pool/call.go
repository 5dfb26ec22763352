package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// WithCorrelationID returns a context whose calls carry id as their
// correlation id (ctx.correlation_id in Python, in log records and errors).
// It is worker.WithCorrelationID.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return worker.WithCorrelationID(ctx, id)
}

// CorrelationID returns the correlation id ctx carries, or "" (a host
// function's context carries its Python call's).
func CorrelationID(ctx context.Context) string { return worker.CorrelationID(ctx) }

// CallOption modifies one call.
type CallOption func(*callOptions)

type callOptions struct {
	idempotent  bool
	attachments [][]byte
	buffers     [][]byte // out-of-band payloads of Call's arguments
}

// Idempotent marks a call as safe to run twice: if its worker dies during
// the call, it is retried once on another worker. Other calls fail with
// worker.ErrWorkerDead (whether they ran is unknown).
func Idempotent() CallOption { return func(o *callOptions) { o.idempotent = true } }

// WithAttachments passes raw byte blobs to the handler as ctx.attachments,
// without conversion.
func WithAttachments(blobs ...[]byte) CallOption {
	return func(o *callOptions) { o.attachments = append(o.attachments, blobs...) }
}

// CallSettings is what a list of CallOptions asks for.
type CallSettings struct {
	Idempotent  bool     // Idempotent
	Attachments [][]byte // WithAttachments, in order
}

// Settings returns what opts ask for: for packages that make pool calls
// elsewhere (such as package remote) and take the same options.
func Settings(opts ...CallOption) CallSettings {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	return CallSettings{Idempotent: o.idempotent, Attachments: o.attachments}
}

// Caller is what code that makes calls needs: *Pool and *Session satisfy
// it, and so do package remote's Pool and Session, so the same code can
// call a local pool or one served over NATS.
type Caller interface {
	Call(ctx context.Context, command string, args any, out any, opts ...CallOption) error
	CallRaw(ctx context.Context, command string, args []byte, opts ...CallOption) ([]byte, error)
	Stream(ctx context.Context, command string, args any, opts ...CallOption) iter.Seq2[Chunk, error]
}

var (
	_ Caller = (*Pool)(nil)
	_ Caller = (*Session)(nil)
)

// Call runs command with args (a map with string keys or a struct, encoded
// as keyword arguments; nil for none) and decodes the result into out (a
// pointer; nil discards it). See package pymarshal for how Go and Python
// values correspond.
//
// A []byte (or pymarshal.Array) of 64 KiB or more in args reaches the
// handler as a read-only memoryview (an ndarray for an Array, with numpy):
// in the thread profile (3.12+) a view of your memory, not a copy. Do not
// modify it until Call returns; if Call returned at its context's end, the
// handler may still read it until it stops. A large bytes result decoded
// into a []byte shares the result's buffer rather than being copied again.
func (p *Pool) Call(ctx context.Context, command string, args any, out any, opts ...CallOption) error {
	return p.call(ctx, command, args, out, "", Hint, opts)
}

// CallRaw is Call with marshalled arguments (a dict, see pymarshal) and
// result.
func (p *Pool) CallRaw(ctx context.Context, command string, args []byte, opts ...CallOption) ([]byte, error) {
	return p.callRaw(ctx, command, args, "", Hint, opts)
}

func (p *Pool) call(ctx context.Context, command string, args, out any, session string, mode Affinity, opts []CallOption) error {
	buf := getArgBuffer()
	raw, oob, checked, err := encodeArgs((*buf)[:0], args)
	if err != nil {
		putArgBuffer(buf)
		p.stats.failed.Add(1)
		return err
	}
	if cap(raw) > cap(*buf) {
		*buf = raw[:0] // keep the grown buffer
	}
	if n := int64(len(raw)); n != argSizeHint.Load() {
		argSizeHint.Store(n)
	}
	if len(oob) > 0 {
		opts = append(opts[:len(opts):len(opts)], func(o *callOptions) { o.buffers = oob })
	}
	res, err := p.callArgs(ctx, command, raw, checked, session, mode, opts)
	if err != nil {
		// A call abandoned on its context goes on in the background, and
		// a worker may still read the arguments: the buffer is not reused.
		return err
	}
	// The worker is done with the arguments (it keeps no Request.Args past
	// a call that returned without error).
	defer putArgBuffer(buf)
	if out == nil {
		return nil
	}
	// res is this call's own: large bytes in out may share it.
	if err := pymarshal.UnmarshalNoCopy(res, out); err != nil {
		return &worker.NotSerializableError{What: "result", Detail: err.Error(), Err: err}
	}
	return nil
}

// Buffers calls encode their arguments into, reused from call to call. A
// new one is sized after the latest call's arguments rather than grown
// from nothing; one grown past maxPooledArgs is left to the collector.
var (
	argBuffers  sync.Pool // *[]byte
	argSizeHint atomic.Int64
)

const (
	minArgBuffer  = 256
	maxPooledArgs = 1 << 20
)

func getArgBuffer() *[]byte {
	if b, ok := argBuffers.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, max(int(argSizeHint.Load()), minArgBuffer))
	return &b
}

func putArgBuffer(b *[]byte) {
	if cap(*b) > maxPooledArgs {
		return
	}
	argBuffers.Put(b)
}

// oobMin is the size from which a []byte or Array argument travels out of
// band (worker.Request.Buffers): without a copy in the thread profile.
const oobMin = 64 << 10

// encodeArgs appends the marshalled keyword arguments to dst; nil args are
// none (nil). checked reports that the bytes are known to be one dict with
// str keys (worker.Request.ArgsChecked): args held no RawValue.
func encodeArgs(dst []byte, args any) (raw []byte, oob [][]byte, checked bool, err error) {
	if args == nil {
		return nil, nil, true, nil
	}
	raw, oob, checked, err = pymarshal.AppendMarshalOOBChecked(dst, args, oobMin, nil)
	if err != nil {
		return nil, nil, false, &worker.NotSerializableError{What: "argument", Detail: err.Error(), Err: err}
	}
	if len(raw) == 0 || raw[0]&^0x80 != '{' {
		return nil, nil, false, &worker.NotSerializableError{What: "argument", Detail: fmt.Sprintf("args must be a map with string keys or a struct (keyword arguments), got %T", args)}
	}
	return raw, oob, checked, nil
}

func (p *Pool) newRequest(ctx context.Context, command string, args []byte, checked bool, session string, o callOptions) *worker.Request {
	cid := CorrelationID(ctx)
	if cid == "" {
		cid = p.cidPrefix + "-" + strconv.FormatUint(p.cidSeq.Add(1), 10)
	}
	return &worker.Request{Command: command, Args: args, ArgsChecked: checked, CorrelationID: cid, SessionID: session,
		Attachments: o.attachments, Buffers: o.buffers, TraceParent: traceParent(ctx)}
}

// again returns the request for another attempt of req: a copy, so that
// nothing still aimed at the earlier attempt (a withdrawal, see
// pipeline.go) can reach it, and its pipeline entry.
func (p *Pool) again(req *worker.Request) (*worker.Request, *pipeEntry) {
	r := *req
	if p.depth == 0 {
		return &r, nil
	}
	return &r, &pipeEntry{req: &r}
}

// callRaw calls with arguments from the caller, which the worker checks.
func (p *Pool) callRaw(ctx context.Context, command string, args []byte, session string, mode Affinity, opts []CallOption) ([]byte, error) {
	return p.callArgs(ctx, command, args, false, session, mode, opts)
}

// callArgs calls with marshalled arguments; checked is
// worker.Request.ArgsChecked.
func (p *Pool) callArgs(ctx context.Context, command string, args []byte, checked bool, session string, mode Affinity, opts []CallOption) (_ []byte, err error) {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if _, ok := ctx.Deadline(); !ok && p.cfg.CallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.CallTimeout)
		defer cancel()
	}
	ctx, span := p.startSpan(ctx, command, session, false)
	req := p.newRequest(ctx, command, args, checked, session, o)
	if span != nil {
		defer func() { endSpan(span, req.CorrelationID, err) }()
	}
	var pe *pipeEntry
	if p.depth > 0 {
		pe = &pipeEntry{req: req}
	}
	for attempt := 0; ; attempt++ {
		start := time.Now()
		m, e, err := p.acquireFor(ctx, session, mode, pe)
		if err != nil {
			p.stats.failed.Add(1)
			return nil, &worker.CallError{Command: command, CorrelationID: req.CorrelationID, Err: err}
		}
		waited := time.Now()
		p.stats.wait.observe(waited.Sub(start))
		p.spanAcquired(span, m, waited.Sub(start))
		resp, err := m.w.Call(p.hostCallContext(ctx, m), req)
		// A call the worker took back before it started never ran: it is
		// made again, whether the pool gave it a pipeline place or a slot
		// (a pipelined call that reached the worker first may have queued
		// it there).
		p.unpipe(pe)
		if err != nil && errors.Is(err, worker.ErrNotStarted) {
			// One look at ctx: it may end between two.
			if ctx.Err() != nil {
				// Withdrawn as its context ended: it ends with its context.
				err = &worker.CallError{Command: command, CorrelationID: req.CorrelationID,
					Err: fmt.Errorf("%w (%w)", context.Cause(ctx), worker.ErrNotStarted)}
			} else {
				// Withdrawn from behind a long call before it started: it
				// goes to the worker that freed up (or waits again).
				p.releaseFor(m, e, session, nil)
				p.stats.moved.Add(1)
				spanAgain(span, "withdrawn before it started")
				attempt--
				req, pe = p.again(req)
				continue
			}
		}
		p.stats.call.observe(time.Since(waited))
		p.releaseFor(m, e, session, err)
		if err == nil {
			p.stats.calls.Add(1)
			return resp.Result, nil
		}
		p.stats.failed.Add(1)
		if o.idempotent && attempt == 0 && errors.Is(err, worker.ErrWorkerDead) && ctx.Err() == nil && session == "" {
			p.stats.retries.Add(1)
			spanAgain(span, "idempotent, its worker died")
			req, pe = p.again(req)
			continue
		}
		return nil, err
	}
}

// Chunk is one item of a stream.
type Chunk struct {
	// Raw is the item, marshalled.
	Raw []byte
}

// Decode decodes the chunk into out (a pointer).
func (c Chunk) Decode(out any) error {
	if err := pymarshal.Unmarshal(c.Raw, out); err != nil {
		return &worker.NotSerializableError{What: "result", Detail: err.Error(), Err: err}
	}
	return nil
}

// Stream runs a command whose handler is a generator and yields its items
// as they come (the worker produces the next one when the loop asks for it).
// Breaking out of the loop closes the generator. An error ends the
// sequence. The worker is held until the loop ends.
//
//	for chunk, err := range p.Stream(ctx, "count", map[string]any{"n": 3}) {
//		if err != nil { ... }
//		var n int
//		_ = chunk.Decode(&n)
//	}
func (p *Pool) Stream(ctx context.Context, command string, args any, opts ...CallOption) iter.Seq2[Chunk, error] {
	return p.stream(ctx, command, args, "", Hint, opts)
}

func (p *Pool) stream(ctx context.Context, command string, args any, session string, mode Affinity, opts []CallOption) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		raw, oob, checked, err := encodeArgs(nil, args)
		if err != nil {
			yield(Chunk{}, err)
			return
		}
		var o callOptions
		for _, opt := range opts {
			opt(&o)
		}
		o.buffers = oob // a stream keeps them: they travel inline
		ctx, span := p.startSpan(ctx, command, session, true)
		req := p.newRequest(ctx, command, raw, checked, session, o)
		var streamErr error
		if span != nil {
			defer func() { endSpan(span, req.CorrelationID, streamErr) }()
		}
		start := time.Now()
		m, e, err := p.acquireFor(ctx, session, mode, nil) // a stream holds a slot: never pipelined
		if err != nil {
			streamErr = err
			p.stats.failed.Add(1)
			yield(Chunk{}, &worker.CallError{Command: command, CorrelationID: req.CorrelationID, Err: err})
			return
		}
		p.spanAcquired(span, m, time.Since(start))
		st, err := m.w.Stream(p.hostCallContext(ctx, m), req)
		if err != nil {
			streamErr = err
			p.releaseFor(m, e, session, err)
			p.stats.failed.Add(1)
			yield(Chunk{}, err)
			return
		}
		defer func() {
			st.Close()
			p.releaseFor(m, e, session, streamErr)
		}()
		for {
			b, err := st.Next(ctx)
			if err == io.EOF {
				p.stats.calls.Add(1)
				return
			}
			if err != nil {
				streamErr = err
				p.stats.failed.Add(1)
				yield(Chunk{}, err)
				return
			}
			if !yield(Chunk{Raw: b}, nil) {
				p.stats.calls.Add(1)
				return
			}
		}
	}
}

// hostCaller is a link of the chain of calls a host function runs in: the
// pool call whose handler called the host function (which may call a pool
// in turn), and the call that called that one.
type hostCaller struct {
	p      *Pool
	m      *member
	parent *hostCaller
}

type hostCallerKey struct{}

// hostCallContext returns the context for m's call: with the call added
// to the chain of host callers when the pool's handlers can call Go
// (their host functions get it, and a call they make back into this pool
// is checked against it).
func (p *Pool) hostCallContext(ctx context.Context, m *member) context.Context {
	if len(p.cfg.Host) == 0 {
		return ctx
	}
	parent, _ := ctx.Value(hostCallerKey{}).(*hostCaller)
	return context.WithValue(ctx, hostCallerKey{}, &hostCaller{p: p, m: m, parent: parent})
}

// chainLocked returns p's workers up ctx's chain of host callers: the
// workers whose handlers wait, through host functions, on the call ctx is
// for. Nil for most calls. p.mu held.
func (p *Pool) chainLocked(ctx context.Context) []*member {
	if len(p.cfg.Host) == 0 {
		return nil
	}
	var out []*member
	for c, _ := ctx.Value(hostCallerKey{}).(*hostCaller); c != nil; c = c.parent {
		if c.p == p {
			out = append(out, c.m)
		}
	}
	return out
}

// reentrantLocked reports whether a call with ctx could never get a worker
// of p: a strict session call whose worker waits, up ctx's chain of host
// callers, on this call; or a call for which every worker waits so.
// p.mu held.
func (p *Pool) reentrantLocked(ctx context.Context, sess *sessionEntry, strict bool) bool {
	if len(p.cfg.Host) == 0 {
		return false // no handler of p calls Go: p is in no chain
	}
	c, _ := ctx.Value(hostCallerKey{}).(*hostCaller)
	if c == nil {
		return false
	}
	waiting := 0
	for ; c != nil; c = c.parent {
		if c.p != p || c.m.gone {
			continue
		}
		if strict && sess != nil && sess.m == c.m {
			return true
		}
		waiting++
	}
	return waiting >= p.cfg.Size
}
