package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/propagation"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// Options configures a Pool. The zero value of each field is documented.
type Options struct {
	// Heartbeat is how often the instance running a call tells the caller
	// that it still does, once the call has run this long. Zero: 250 ms.
	Heartbeat time.Duration
	// DeadAfter is how long a caller waits without a word from the
	// instance before it takes the instance for dead: the call fails with
	// an error matching worker.ErrWorkerDead and ErrInstanceGone (an
	// Idempotent call is made again on another instance). It is the time
	// it takes to notice an instance that died mid-call. Zero: four
	// heartbeats. It must exceed Heartbeat.
	DeadAfter time.Duration
	// StreamWindow is how many stream chunks the instance may send ahead
	// of the loop that consumes them (the caller grants more as the loop
	// goes). Zero: 16.
	StreamWindow int
	// CallTimeout bounds calls whose context has no deadline. Zero: none
	// (the serving pool's Config.CallTimeout still applies there).
	CallTimeout time.Duration
	// SessionIdleTimeout is how long the Pool remembers the instance of a
	// session unused for that long (the serving pool drops the session's
	// state after its own Config.SessionIdleTimeout). Zero: 10 minutes.
	SessionIdleTimeout time.Duration
	// SaturatedRetries is how many times a call that an instance refused
	// with pool.ErrSaturated is sent again to the queue group at once
	// (nothing ran; another instance may have room). Zero: 1. Negative:
	// none. Session calls are not sent again.
	SaturatedRetries int
}

func (o Options) withDefaults() (Options, error) {
	if o.Heartbeat == 0 {
		o.Heartbeat = 250 * time.Millisecond
	}
	if o.DeadAfter == 0 {
		o.DeadAfter = 4 * o.Heartbeat
	}
	if o.StreamWindow == 0 {
		o.StreamWindow = 16
	}
	if o.SessionIdleTimeout == 0 {
		o.SessionIdleTimeout = 10 * time.Minute
	}
	if o.SaturatedRetries == 0 {
		o.SaturatedRetries = 1
	}
	var errs []error
	if o.Heartbeat < 0 {
		errs = append(errs, errors.New("remote: Heartbeat must not be negative"))
	}
	if o.DeadAfter <= o.Heartbeat {
		errs = append(errs, fmt.Errorf("remote: DeadAfter (%v) must exceed Heartbeat (%v)", o.DeadAfter, o.Heartbeat))
	}
	if o.StreamWindow < 0 || o.StreamWindow > 4096 {
		errs = append(errs, fmt.Errorf("remote: StreamWindow must be in [0, 4096], got %d", o.StreamWindow))
	}
	if o.SessionIdleTimeout < 0 {
		errs = append(errs, errors.New("remote: SessionIdleTimeout must not be negative"))
	}
	if o.CallTimeout < 0 {
		errs = append(errs, errors.New("remote: CallTimeout must not be negative"))
	}
	return o, errors.Join(errs...)
}

// Pool calls a pool served by Serve on other processes or machines,
// through NATS, with the methods of a local *pool.Pool. It is safe for
// concurrent use.
type Pool struct {
	nc    *nats.Conn
	name  string
	opts  Options
	inbox string // reply subjects are inbox.<token>
	sub   *nats.Subscription

	cidPrefix string
	cidSeq    atomic.Uint64
	tokSeq    atomic.Uint64

	mu       sync.Mutex // guards the fields below
	closed   bool
	pending  map[string]*conv
	sessions map[string]*binding
	swept    time.Time      // when sessions were last swept of idle ones
	wg       sync.WaitGroup // calls and streams in progress

	closing   chan struct{}
	closeOnce sync.Once

	stats struct {
		calls, failed, retries, rejected, noResponders, gone atomic.Int64
		inflight                                             atomic.Int64
	}
}

// binding is where a session's state lives: the instance that served it.
type binding struct {
	inst string // "" : not bound (yet, or any more)
	lost bool   // its instance went away; reported once to a strict call
	used time.Time
}

// New returns a Pool calling the pool called name (its Config.Name on the
// serving side) through nc. nc carries the credentials; it stays the
// caller's (Close does not close it).
func New(nc *nats.Conn, name string, opts Options) (*Pool, error) {
	if nc == nil {
		return nil, errors.New("remote: New needs a connection")
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Pool{nc: nc, name: name, opts: opts, inbox: nc.NewInbox(), pending: map[string]*conv{},
		sessions: map[string]*binding{}, closing: make(chan struct{})}
	p.cidPrefix = name + "-" + p.inbox[strings.LastIndexByte(p.inbox, '.')+1:]
	p.sub, err = nc.Subscribe(p.inbox+".*", p.onReply)
	if err != nil {
		return nil, fmt.Errorf("remote: subscribe: %w", err)
	}
	_ = p.sub.SetPendingLimits(-1, -1)
	return p, nil
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// onReply hands an answer to its call.
func (p *Pool) onReply(m *nats.Msg) {
	tok := m.Subject[len(p.inbox)+1:]
	p.mu.Lock()
	c := p.pending[tok]
	p.mu.Unlock()
	if c == nil {
		return // a call that has returned: a late heartbeat or answer
	}
	select {
	case c.ch <- m:
	default:
		if header(m.Header, hKind) != kindHeartbeat {
			// More than the window allows: the instance misbehaves.
			c.overflow.Store(true)
		}
	}
}

// conv is one attempt of a call or stream: its reply subject and what
// came back on it.
type conv struct {
	p        *Pool
	tok      string
	reply    string
	ch       chan *nats.Msg
	inst     string    // the instance answering, once known
	last     time.Time // when the latest message came
	timer    *time.Timer
	overflow atomic.Bool
}

func (p *Pool) open(buf int) *conv {
	tok := strconv.FormatUint(p.tokSeq.Add(1), 36)
	c := &conv{p: p, tok: tok, reply: p.inbox + "." + tok, ch: make(chan *nats.Msg, buf)}
	p.mu.Lock()
	p.pending[tok] = c
	p.mu.Unlock()
	return c
}

func (c *conv) close() {
	c.p.mu.Lock()
	delete(c.p.pending, c.tok)
	c.p.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
}

// send publishes a request whose answers come to c.
func (c *conv) send(subj string, hdr nats.Header, body []byte) error {
	msg := &nats.Msg{Subject: subj, Reply: c.reply, Header: hdr, Data: body}
	if size, limit := len(body)+headerSize(hdr), c.p.nc.MaxPayload(); int64(size) > limit {
		return &PayloadError{What: "request", Size: size, Max: limit}
	}
	c.last = time.Now()
	if err := c.p.nc.PublishMsg(msg); err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			return &PayloadError{What: "request", Size: len(body) + headerSize(hdr), Max: c.p.nc.MaxPayload()}
		}
		return fmt.Errorf("remote: publish: %w", err)
	}
	return nil
}

// control sends a control message about c's call: to its instance when
// known, else to every instance of the pool.
func (c *conv) control(kind string, credit int) {
	subj := subject(c.p.name, epControl)
	if c.inst != "" {
		subj = instanceSubject(c.p.name, c.inst, epControl)
	}
	h := nats.Header{hControl: {kind}, hCall: {c.reply}}
	if credit > 0 {
		h[hCredit] = []string{strconv.Itoa(credit)}
	}
	_ = c.p.nc.PublishMsg(&nats.Msg{Subject: subj, Header: h})
}

// next returns the next answer that is not a heartbeat. It fails with
// ErrNoResponders, with an error matching ErrInstanceGone when the
// instance stays silent past DeadAfter, and with ctx's error when ctx
// ends (the instance is then told to cancel the call).
func (c *conv) next(ctx context.Context) (*nats.Msg, error) {
	dead := c.p.opts.DeadAfter
	// Silence counts while the caller waits: not while a stream's loop
	// body ran.
	c.last = time.Now()
	for {
		wait := dead - time.Since(c.last)
		if c.timer == nil {
			c.timer = time.NewTimer(wait)
		} else {
			c.timer.Reset(wait)
		}
		select {
		case m := <-c.ch:
			c.last = time.Now()
			if c.overflow.Load() {
				return nil, fmt.Errorf("%w: more stream chunks than granted", ErrProtocol)
			}
			if header(m.Header, hStatus) == "503" && len(m.Data) == 0 {
				return nil, ErrNoResponders
			}
			if inst := header(m.Header, hInstance); inst != "" {
				c.inst = inst
			}
			if header(m.Header, hKind) == kindHeartbeat {
				continue
			}
			return m, nil
		case <-c.timer.C:
			if time.Since(c.last) < dead || len(c.ch) > 0 {
				continue
			}
			inst := c.inst
			if inst == "" {
				inst = "(unknown instance)"
			}
			return nil, &worker.DeadError{WorkerID: inst,
				Reason: fmt.Sprintf("no word from it for %v", dead), Err: ErrInstanceGone}
		case <-ctx.Done():
			c.control(ctlCancel, 0)
			return nil, context.Cause(ctx)
		case <-c.p.closing:
			return nil, pool.ErrClosed
		}
	}
}

// enter registers a call in progress; ErrClosed once Close began.
func (p *Pool) enter() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return pool.ErrClosed
	}
	p.wg.Add(1)
	p.stats.inflight.Add(1)
	return nil
}

func (p *Pool) leave() {
	p.stats.inflight.Add(-1)
	p.wg.Done()
}

// CallOption modifies one call: the pool's own options (pool.Idempotent,
// pool.WithAttachments), so code written against pool.Caller calls a
// remote pool as it calls a local one.
type CallOption = pool.CallOption

// Idempotent marks a call as safe to run twice: if the instance running
// it dies during the call (or its worker there dies), it is made once
// more, on another instance (or worker). It is pool.Idempotent.
func Idempotent() CallOption { return pool.Idempotent() }

// WithAttachments passes raw byte blobs to the handler as
// ctx.attachments. It is pool.WithAttachments.
func WithAttachments(blobs ...[]byte) CallOption { return pool.WithAttachments(blobs...) }

var (
	_ pool.Caller = (*Pool)(nil)
	_ pool.Caller = (*Session)(nil)
)

// CorrelationID returns the correlation id ctx carries, or "" (see
// pool.WithCorrelationID, which sets it for remote calls too).
func CorrelationID(ctx context.Context) string { return worker.CorrelationID(ctx) }

// Call runs command on an instance of the pool with args (a map with
// string keys or a struct; nil for none) and decodes the result into out
// (a pointer; nil discards it), as pool.Pool.Call does. Errors match what
// a local call returns (errors.Is and errors.As), plus ErrNoResponders
// when no instance serves the pool, ErrPayloadTooLarge, and
// ErrInstanceGone (with worker.ErrWorkerDead) when the instance died
// during the call. A call whose ctx has ended already is not sent: it
// fails with ctx's error, as a local one does.
func (p *Pool) Call(ctx context.Context, command string, args, out any, opts ...CallOption) error {
	return p.callDecode(ctx, command, args, out, "", pool.Hint, opts)
}

// CallRaw is Call with marshalled arguments (a dict, see pymarshal) and
// result.
func (p *Pool) CallRaw(ctx context.Context, command string, args []byte, opts ...CallOption) ([]byte, error) {
	return p.call(ctx, command, args, "", pool.Hint, opts)
}

func encodeArgs(args any) ([]byte, error) {
	if args == nil {
		return nil, nil
	}
	raw, err := pymarshal.Marshal(args)
	if err != nil {
		return nil, &worker.NotSerializableError{What: "argument", Detail: err.Error(), Err: err}
	}
	if len(raw) == 0 || raw[0]&^0x80 != '{' {
		return nil, &worker.NotSerializableError{What: "argument", Detail: fmt.Sprintf("args must be a map with string keys or a struct (keyword arguments), got %T", args)}
	}
	return raw, nil
}

func (p *Pool) callDecode(ctx context.Context, command string, args, out any, session string, mode pool.Affinity, opts []CallOption) error {
	raw, err := encodeArgs(args)
	if err != nil {
		p.stats.failed.Add(1)
		return err
	}
	res, err := p.call(ctx, command, raw, session, mode, opts)
	if err != nil || out == nil {
		return err
	}
	if err := pymarshal.Unmarshal(res, out); err != nil {
		return &worker.NotSerializableError{What: "result", Detail: err.Error(), Err: err}
	}
	return nil
}

// request builds a request's headers and body.
func (p *Pool) request(ctx context.Context, command, cid, session string, mode pool.Affinity, o pool.CallSettings, args []byte) (nats.Header, []byte) {
	h := nats.Header{hCommand: {command}, hCorrelation: {cid},
		hHeartbeat: {strconv.FormatInt(int64(p.opts.Heartbeat), 10)}}
	if session != "" {
		h[hSession] = []string{session}
		h[hAffinity] = []string{strconv.Itoa(int(mode))}
	}
	if o.Idempotent {
		h[hIdempotent] = []string{"1"}
	}
	body := args
	if len(o.Attachments) > 0 {
		lens := make([]string, len(o.Attachments))
		n := len(args)
		for i, a := range o.Attachments {
			lens[i] = strconv.Itoa(len(a))
			n += len(a)
		}
		body = make([]byte, 0, n)
		body = append(body, args...)
		for _, a := range o.Attachments {
			body = append(body, a...)
		}
		h[hAttachments] = []string{strings.Join(lens, ",")}
	}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(http.Header(h)))
	return h, body
}

// setTimeout puts ctx's remaining time in h.
func setTimeout(ctx context.Context, h nats.Header) {
	if d, ok := ctx.Deadline(); ok {
		h[hTimeout] = []string{strconv.FormatInt(int64(max(time.Until(d), 1)), 10)}
	}
}

func (p *Pool) correlation(ctx context.Context) string {
	if cid := worker.CorrelationID(ctx); cid != "" {
		return cid
	}
	return p.cidPrefix + "-" + strconv.FormatUint(p.cidSeq.Add(1), 10)
}

// target returns the subject for a call of endpoint ep: the instance the
// session is bound to, or the queue group. lost reports a strict
// session whose instance went away (reported once).
func (p *Pool) target(session string, mode pool.Affinity, ep string) (subj, inst string, lost bool) {
	if session == "" {
		return subject(p.name, ep), "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.sessions[session]
	if b == nil {
		return subject(p.name, ep), "", false
	}
	if b.lost {
		b.lost = false
		if mode != pool.Hint {
			return "", "", true
		}
	}
	if b.inst == "" {
		return subject(p.name, ep), "", false
	}
	return instanceSubject(p.name, b.inst, ep), b.inst, false
}

// bind records that inst served the session.
func (p *Pool) bind(session, inst string) {
	if session == "" || inst == "" {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.sessions[session]
	if b == nil {
		b = &binding{}
		p.sessions[session] = b
	}
	b.inst, b.used = inst, now
	if idle := p.opts.SessionIdleTimeout; now.Sub(p.swept) > idle/10 {
		p.swept = now
		for id, b := range p.sessions {
			if now.Sub(b.used) > idle {
				delete(p.sessions, id)
			}
		}
	}
}

// unbind forgets that the session lives on inst (it went away); lost
// marks the state lost for the next strict call.
func (p *Pool) unbind(session, inst string, lost bool) {
	if session == "" {
		return
	}
	p.mu.Lock()
	if b := p.sessions[session]; b != nil && (inst == "" || b.inst == inst) {
		b.inst, b.lost, b.used = "", lost, time.Now()
	}
	p.mu.Unlock()
}

func (p *Pool) call(ctx context.Context, command string, args []byte, session string, mode pool.Affinity, opts []CallOption) (_ []byte, err error) {
	o := pool.Settings(opts...)
	cid := p.correlation(ctx)
	defer func() {
		if err != nil {
			p.stats.failed.Add(1)
		} else {
			p.stats.calls.Add(1)
		}
	}()
	if err := p.enter(); err != nil {
		return nil, &worker.CallError{Command: command, CorrelationID: cid, Err: err}
	}
	defer p.leave()
	if ctx.Err() != nil {
		// Ended already: the call is not sent (an answer could otherwise
		// race the context's end and win).
		return nil, &worker.CallError{Command: command, CorrelationID: cid, Err: context.Cause(ctx)}
	}
	if _, ok := ctx.Deadline(); !ok && p.opts.CallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.CallTimeout)
		defer cancel()
	}
	h, body := p.request(ctx, command, cid, session, mode, o, args)
	saturated := p.opts.SaturatedRetries
	retried, leaving := false, 0
	for {
		subj, inst, lost := p.target(session, mode, epCall)
		if lost {
			return nil, &worker.CallError{Command: command, CorrelationID: cid, Err: pool.ErrSessionLost}
		}
		setTimeout(ctx, h)
		res, served, err := p.roundTrip(ctx, subj, h, body)
		if err == nil {
			p.bind(session, served)
			return res, nil
		}
		switch {
		case inst != "" && (errors.Is(err, ErrNoResponders) || errors.Is(err, errLeaving)):
			// The session's instance is gone: its state with it.
			p.unbind(session, inst, false)
			if mode != pool.Hint {
				return nil, &worker.CallError{Command: command, CorrelationID: cid, Err: errors.Join(pool.ErrSessionLost, err)}
			}
			continue
		case errors.Is(err, errLeaving) && leaving < 3 && ctx.Err() == nil:
			leaving++ // nothing ran: another instance takes it
			continue
		case errors.Is(err, ErrNoResponders):
			p.stats.noResponders.Add(1)
		case errors.Is(err, ErrInstanceGone):
			p.stats.gone.Add(1)
			p.unbind(session, served, true)
			if o.Idempotent && !retried && session == "" && ctx.Err() == nil {
				retried = true
				p.stats.retries.Add(1)
				continue
			}
		case errors.Is(err, pool.ErrSaturated):
			p.stats.rejected.Add(1)
			if session == "" && saturated > 0 && ctx.Err() == nil {
				saturated--
				continue
			}
		}
		var re *RemoteError
		if errors.As(err, &re) {
			return nil, err // the instance's error names the call already
		}
		return nil, &worker.CallError{Command: command, CorrelationID: cid, Err: err}
	}
}

// roundTrip sends one attempt of a call to subj and waits for its
// answer; served is the instance that answered (or was last heard of).
func (p *Pool) roundTrip(ctx context.Context, subj string, h nats.Header, body []byte) (res []byte, served string, err error) {
	c := p.open(4)
	defer c.close()
	if err := c.send(subj, h, body); err != nil {
		return nil, "", err
	}
	m, err := c.next(ctx)
	if err != nil {
		return nil, c.inst, err
	}
	switch header(m.Header, hKind) {
	case kindResult:
		return m.Data, c.inst, nil
	case kindError:
		return nil, c.inst, decodeError(c.inst, m.Data)
	}
	return nil, c.inst, fmt.Errorf("%w: unexpected answer %q", ErrProtocol, header(m.Header, hKind))
}

// Stream runs a command whose handler is a generator on an instance and
// yields its items as they come, as pool.Pool.Stream does. The instance
// sends at most Options.StreamWindow items ahead of the loop. Breaking
// out of the loop closes the generator there; an instance that dies ends
// the sequence with an error matching ErrInstanceGone and
// worker.ErrWorkerDead.
func (p *Pool) Stream(ctx context.Context, command string, args any, opts ...CallOption) iter.Seq2[pool.Chunk, error] {
	return p.stream(ctx, command, args, "", pool.Hint, opts)
}

func (p *Pool) stream(ctx context.Context, command string, args any, session string, mode pool.Affinity, opts []CallOption) iter.Seq2[pool.Chunk, error] {
	return func(yield func(pool.Chunk, error) bool) {
		raw, err := encodeArgs(args)
		if err != nil {
			p.stats.failed.Add(1)
			yield(pool.Chunk{}, err)
			return
		}
		o := pool.Settings(opts...)
		cid := p.correlation(ctx)
		fail := func(err error) {
			p.stats.failed.Add(1)
			var re *RemoteError
			if !errors.As(err, &re) {
				err = &worker.CallError{Command: command, CorrelationID: cid, Err: err}
			}
			yield(pool.Chunk{}, err)
		}
		if err := p.enter(); err != nil {
			fail(err)
			return
		}
		defer p.leave()
		if ctx.Err() != nil {
			fail(context.Cause(ctx)) // ended already: not sent
			return
		}
		h, body := p.request(ctx, command, cid, session, mode, o, raw)
		window := p.opts.StreamWindow
		h[hCredit] = []string{strconv.Itoa(window)}
		var c *conv
		var m *nats.Msg
		for {
			subj, inst, lost := p.target(session, mode, epStream)
			if lost {
				fail(pool.ErrSessionLost)
				return
			}
			setTimeout(ctx, h)
			c = p.open(window + 8)
			defer c.close()
			if err := c.send(subj, h, body); err != nil {
				fail(err)
				return
			}
			m, err = c.next(ctx)
			if err == nil {
				break
			}
			if inst != "" && (errors.Is(err, ErrNoResponders) || errors.Is(err, errLeaving)) {
				p.unbind(session, inst, false)
				if mode != pool.Hint {
					fail(errors.Join(pool.ErrSessionLost, err))
					return
				}
				continue
			}
			if errors.Is(err, ErrNoResponders) {
				p.stats.noResponders.Add(1)
			}
			if errors.Is(err, ErrInstanceGone) {
				p.stats.gone.Add(1)
				p.unbind(session, c.inst, true)
			}
			fail(err)
			return
		}
		consumed := 0
		for {
			switch header(m.Header, hKind) {
			case kindChunk:
				if !yield(pool.Chunk{Raw: m.Data}, nil) {
					c.control(ctlStop, 0)
					p.stats.calls.Add(1)
					p.bind(session, c.inst)
					return
				}
				if consumed++; consumed >= max(window/2, 1) {
					c.control(ctlCredit, consumed)
					consumed = 0
				}
			case kindEnd:
				p.stats.calls.Add(1)
				p.bind(session, c.inst)
				return
			case kindError:
				fail(decodeError(c.inst, m.Data))
				return
			default:
				fail(fmt.Errorf("%w: unexpected answer %q", ErrProtocol, header(m.Header, hKind)))
				return
			}
			if m, err = c.next(ctx); err != nil {
				if errors.Is(err, ErrInstanceGone) {
					p.stats.gone.Add(1)
					p.unbind(session, c.inst, true)
				}
				fail(err)
				return
			}
		}
	}
}

// Session is a handle for calls that share Python-side state on one
// instance (and there, one worker). The first call binds it to the
// instance that serves it; later calls go to that instance. If the
// instance goes away, the next strict call fails with
// pool.ErrSessionLost and the one after starts the session afresh on
// any instance; a Hint session moves on at once.
type Session struct {
	p    *Pool
	id   string
	mode pool.Affinity
}

// Session returns the session id with the given affinity (see
// pool.Pool.Session; the affinity applies on the instance as well).
func (p *Pool) Session(id string, mode pool.Affinity) *Session {
	return &Session{p: p, id: id, mode: mode}
}

// ID returns the session id.
func (s *Session) ID() string { return s.id }

// Instance returns the instance the session is bound to, "" if none.
func (s *Session) Instance() string {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	if b := s.p.sessions[s.id]; b != nil {
		return b.inst
	}
	return ""
}

// Call is Pool.Call within the session.
func (s *Session) Call(ctx context.Context, command string, args, out any, opts ...CallOption) error {
	return s.p.callDecode(ctx, command, args, out, s.id, s.mode, opts)
}

// CallRaw is Pool.CallRaw within the session.
func (s *Session) CallRaw(ctx context.Context, command string, args []byte, opts ...CallOption) ([]byte, error) {
	return s.p.call(ctx, command, args, s.id, s.mode, opts)
}

// Stream is Pool.Stream within the session.
func (s *Session) Stream(ctx context.Context, command string, args any, opts ...CallOption) iter.Seq2[pool.Chunk, error] {
	return s.p.stream(ctx, command, args, s.id, s.mode, opts)
}

// Close ends the session: its state is dropped on its instance (if that
// is still there) and the binding forgotten.
func (s *Session) Close(ctx context.Context) error {
	p := s.p
	p.mu.Lock()
	b := p.sessions[s.id]
	delete(p.sessions, s.id)
	p.mu.Unlock()
	if b == nil || b.inst == "" {
		return nil
	}
	if err := p.enter(); err != nil {
		return err
	}
	defer p.leave()
	c := p.open(2)
	defer c.close()
	if err := c.send(instanceSubject(p.name, b.inst, epEnd), nats.Header{hSession: {s.id}}, nil); err != nil {
		return err
	}
	m, err := c.next(ctx)
	switch {
	case errors.Is(err, ErrNoResponders):
		return nil // the instance is gone, the state with it
	case err != nil:
		return err
	case header(m.Header, hKind) == kindError:
		return decodeError(c.inst, m.Data)
	}
	return nil
}

// Stats is a snapshot of a Pool's counters (this caller's view; see
// Pool.Instances for the serving pools').
type Stats struct {
	Name         string
	InFlight     int   // calls and streams in progress
	Sessions     int   // sessions bound or remembered
	Calls        int64 // calls and streams that succeeded
	Failed       int64 // calls and streams that failed (any reason)
	Retries      int64 // Idempotent calls made again after their instance died
	Rejected     int64 // pool.ErrSaturated answers (before any retry)
	NoResponders int64 // calls no instance was there for
	Gone         int64 // calls whose instance stopped answering
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	n := len(p.sessions)
	p.mu.Unlock()
	return Stats{Name: p.name, InFlight: int(p.stats.inflight.Load()), Sessions: n,
		Calls: p.stats.calls.Load(), Failed: p.stats.failed.Load(), Retries: p.stats.retries.Load(),
		Rejected: p.stats.rejected.Load(), NoResponders: p.stats.noResponders.Load(), Gone: p.stats.gone.Load()}
}

// InstanceStats is one serving instance's answer to $SRV.STATS.
type InstanceStats struct {
	ID    string
	Stats pool.Stats
}

// Instances asks every instance serving the pool for its pool's Stats
// ($SRV.STATS.snakepit-<name>) and returns the answers that came within
// wait (or before ctx ended).
func (p *Pool) Instances(ctx context.Context, wait time.Duration) ([]InstanceStats, error) {
	subj, err := micro.ControlSubject(micro.StatsVerb, ServiceName(p.name), "")
	if err != nil {
		return nil, fmt.Errorf("remote: %w", err)
	}
	inbox := p.nc.NewInbox()
	sub, err := p.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("remote: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	if err := p.nc.PublishRequest(subj, inbox, nil); err != nil {
		return nil, fmt.Errorf("remote: publish: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var out []InstanceStats
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return out, nil // the time to answer is up
		}
		var st micro.Stats
		if err := json.Unmarshal(m.Data, &st); err != nil {
			continue
		}
		is := InstanceStats{ID: st.ID}
		for _, e := range st.Endpoints {
			if e.Name == epStats && len(e.Data) > 0 {
				_ = json.Unmarshal(e.Data, &is.Stats)
			}
		}
		out = append(out, is)
	}
}

// Close stops the pool: new calls fail with pool.ErrClosed, calls in
// progress return pool.ErrClosed at once (their instances are not told;
// the calls end there with their deadlines), and Close waits for them to
// return, until ctx ends. It does not close the connection. Closing
// twice is a no-op.
func (p *Pool) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.closing)
		_ = p.sub.Unsubscribe()
	})
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("remote: close: %w", ctx.Err())
	}
}
