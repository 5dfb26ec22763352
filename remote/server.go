package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.opentelemetry.io/otel/propagation"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
)

// ServeOptions configures Serve. The zero value serves with the defaults.
type ServeOptions struct {
	// QueueGroup is the queue group the pool's instances share. Zero:
	// DefaultQueueGroup. Callers need not know it.
	QueueGroup string
	// Description and Metadata describe the micro service ($SRV.INFO).
	Description string
	Metadata    map[string]string
	// StreamIdleTimeout ends a stream whose caller granted no chunk for
	// this long (a caller that went away without a word). Zero: 1 minute.
	StreamIdleTimeout time.Duration
	// MinHeartbeat bounds from below the heartbeat interval callers may
	// ask for. Zero: 10 ms.
	MinHeartbeat time.Duration
	// Logger receives the server's events. Nil discards them.
	Logger *slog.Logger
}

// Server serves one pool over NATS; see Serve.
type Server struct {
	nc       *nats.Conn
	p        *pool.Pool
	name     string
	svc      micro.Service
	inst     string
	opts     ServeOptions
	log      *slog.Logger
	maxBytes int64

	ctx    context.Context // calls' parent: ends when Shutdown gives up waiting
	cancel context.CancelFunc

	reqSubs []*nats.Subscription // call, stream, end: drained first on Shutdown
	ctlSubs []*nats.Subscription // control: kept until the calls are done

	mu       sync.Mutex // guards the fields below
	leaving  bool       // Shutdown drained the request subscriptions: no new call
	inflight map[string]*served
	early    map[string]time.Time // cancels that came before their call, until when they are kept
	wg       sync.WaitGroup       // one per call or stream being served

	shutOnce sync.Once
	shutErr  error
	done     chan struct{} // closed when Shutdown has finished
}

// served is a call or stream in progress, by its reply subject.
type served struct {
	cancel context.CancelFunc
	credit chan int      // streams: chunks granted
	stop   chan struct{} // streams: closed when the caller stops iterating
	once   sync.Once
}

func (s *served) stopped() { s.once.Do(func() { close(s.stop) }) }

// earlyKeep is how long a cancel that came before its call is kept.
const earlyKeep = time.Minute

// Serve exposes p on nc as the NATS micro service "snakepit-<name>"
// (name: p's Config.Name), one instance of it: calls and streams come
// on snakepit.v1.<name>.call and snakepit.v1.<name>.stream in the queue
// group every instance of the pool joins, so requests spread over them;
// each instance also answers on snakepit.v1.<name>.i.<id>.* (the session
// calls bound to it, control messages: cancels and stream credit).
// $SRV.PING, $SRV.INFO and $SRV.STATS answer for the instance, STATS
// with p.Stats() as the "stats" endpoint's data.
//
// Each call runs on p as the caller made it: with its correlation id,
// idempotence, attachments and session, bounded by the caller's
// remaining deadline, and interrupted when the caller cancels. Access
// control is the NATS server's: nc carries the credentials (user and
// password, nkey, JWT, TLS), and the server's permissions say who may
// publish to snakepit.v1.<name>.>.
//
// ctx is the parent of every call's context. Serve does not close p or
// nc; call Shutdown before closing p.
func Serve(ctx context.Context, nc *nats.Conn, p *pool.Pool, opts ServeOptions) (*Server, error) {
	if nc == nil || p == nil {
		return nil, errors.New("remote: Serve needs a connection and a pool")
	}
	st := p.Stats()
	if err := checkName(st.Name); err != nil {
		return nil, err
	}
	if opts.QueueGroup == "" {
		opts.QueueGroup = DefaultQueueGroup
	}
	if opts.StreamIdleTimeout <= 0 {
		opts.StreamIdleTimeout = time.Minute
	}
	if opts.MinHeartbeat <= 0 {
		opts.MinHeartbeat = 10 * time.Millisecond
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{nc: nc, p: p, name: st.Name, opts: opts, log: log, maxBytes: nc.MaxPayload(),
		inflight: map[string]*served{}, early: map[string]time.Time{}, done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(ctx)
	md := maps.Clone(opts.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	md["pool"] = st.Name
	md["profile"] = st.Profile.String()
	md["protocol"] = "v1"
	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName(st.Name),
		Version:     Version,
		Description: opts.Description,
		Metadata:    md,
		QueueGroup:  opts.QueueGroup,
		StatsHandler: func(*micro.Endpoint) any {
			return p.Stats()
		},
	})
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("remote: add service: %w", err)
	}
	s.svc = svc
	s.inst = svc.Info().ID
	if err := s.subscribe(); err != nil {
		s.unsubscribe()
		_ = svc.Stop()
		s.cancel()
		return nil, err
	}
	if err := nc.Flush(); err != nil { // the subscriptions are in place when Serve returns
		s.unsubscribe()
		_ = svc.Stop()
		s.cancel()
		return nil, fmt.Errorf("remote: flush: %w", err)
	}
	return s, nil
}

func (s *Server) subscribe() error {
	statsSubj := instanceSubject(s.name, s.inst, epStats)
	err := s.svc.AddEndpoint(epStats, micro.HandlerFunc(func(r micro.Request) {
		b, _ := json.Marshal(s.p.Stats())
		_ = r.Respond(b)
	}), micro.WithEndpointSubject(statsSubj), micro.WithEndpointQueueGroupDisabled(),
		micro.WithEndpointMetadata(map[string]string{
			"call":   subject(s.name, epCall),
			"stream": subject(s.name, epStream),
		}))
	if err != nil {
		return fmt.Errorf("remote: add endpoint: %w", err)
	}
	add := func(list *[]*nats.Subscription, subj, queue string, cb nats.MsgHandler) error {
		var sub *nats.Subscription
		var err error
		if queue != "" {
			sub, err = s.nc.QueueSubscribe(subj, queue, cb)
		} else {
			sub, err = s.nc.Subscribe(subj, cb)
		}
		if err != nil {
			return fmt.Errorf("remote: subscribe %s: %w", subj, err)
		}
		// A slow instance queues rather than drops: callers' deadlines
		// and heartbeats bound the wait.
		_ = sub.SetPendingLimits(-1, -1)
		*list = append(*list, sub)
		return nil
	}
	subs := []struct {
		list  *[]*nats.Subscription
		subj  string
		queue string
		cb    nats.MsgHandler
	}{
		{&s.reqSubs, subject(s.name, epCall), s.opts.QueueGroup, s.onCall},
		{&s.reqSubs, instanceSubject(s.name, s.inst, epCall), "", s.onCall},
		{&s.reqSubs, subject(s.name, epStream), s.opts.QueueGroup, s.onStream},
		{&s.reqSubs, instanceSubject(s.name, s.inst, epStream), "", s.onStream},
		{&s.reqSubs, instanceSubject(s.name, s.inst, epEnd), "", s.onEnd},
		{&s.ctlSubs, instanceSubject(s.name, s.inst, epControl), "", s.onControl},
		{&s.ctlSubs, subject(s.name, epControl), "", s.onControl},
	}
	for _, x := range subs {
		if err := add(x.list, x.subj, x.queue, x.cb); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) unsubscribe() {
	for _, sub := range append(s.reqSubs, s.ctlSubs...) {
		_ = sub.Unsubscribe()
	}
}

// Instance returns this instance's id (the micro service instance id).
func (s *Server) Instance() string { return s.inst }

// Shutdown leaves gracefully: it stops taking requests (the instance
// leaves the queue group and the service; callers' new requests go to
// other instances, and calls of sessions bound here find it gone),
// waits for the calls and streams in progress to finish, then stops
// listening for their control messages. If ctx ends first, the calls
// still running are cancelled (their callers get context.Canceled) and
// Shutdown returns ctx's error once they have returned. It does not close
// the pool or the connection. Calling it again returns the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		defer close(s.done)
		var errs []error
		// Every request subscription stops at once; those drained hand
		// the requests that reached the instance to their handlers.
		closed := make([]<-chan nats.SubStatus, len(s.reqSubs))
		for i, sub := range s.reqSubs {
			closed[i] = sub.StatusChanged(nats.SubscriptionClosed)
			if err := sub.Drain(); err != nil {
				_ = sub.Unsubscribe()
			}
		}
		for i, sub := range s.reqSubs {
			select {
			case <-closed[i]:
			case <-ctx.Done():
				_ = sub.Unsubscribe()
			}
		}
		// A handler the last drained request may still be on its way
		// to sees leaving: that request gets errLeaving (nothing ran;
		// the caller sends it elsewhere).
		s.mu.Lock()
		s.leaving = true
		s.mu.Unlock()
		// Discovery ends once no request reaches the instance any more.
		if err := s.svc.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("remote: stop service: %w", err))
		}
		idle := make(chan struct{})
		go func() {
			s.wg.Wait()
			close(idle)
		}()
		select {
		case <-idle:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("remote: shutdown: %w", ctx.Err()))
			s.cancel()
			<-idle
		}
		s.cancel()
		for _, sub := range s.ctlSubs {
			_ = sub.Unsubscribe()
		}
		s.shutErr = errors.Join(errs...)
	})
	<-s.done
	return s.shutErr
}

// enter registers a request about to be served; false once the instance
// is leaving (the request then gets errLeaving: nothing ran).
func (s *Server) enter(m *nats.Msg) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leaving {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Server) onCall(m *nats.Msg)   { s.serveAsync(m, s.serveCall) }
func (s *Server) onStream(m *nats.Msg) { s.serveAsync(m, s.serveStream) }

// serveAsync serves request m with serve on a goroutine of its own, once
// the server has taken it in (a request with no reply subject is dropped;
// one that comes while the server leaves is refused).
func (s *Server) serveAsync(m *nats.Msg, serve func(*nats.Msg)) {
	if m.Reply == "" {
		return
	}
	if !s.enter(m) {
		s.replyError(m.Reply, errLeaving)
		return
	}
	go func() {
		defer s.wg.Done()
		serve(m)
	}()
}

func (s *Server) onEnd(m *nats.Msg) {
	if !s.enter(m) {
		if m.Reply != "" {
			s.replyError(m.Reply, errLeaving)
		}
		return
	}
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		defer cancel()
		err := s.p.Session(header(m.Header, hSession), pool.Hint).Close(ctx)
		if m.Reply == "" {
			return
		}
		if err != nil {
			s.replyError(m.Reply, err)
			return
		}
		s.send(m.Reply, kindResult, nil)
	}()
}

// onControl handles cancels, stream credit and stream stops.
func (s *Server) onControl(m *nats.Msg) {
	call := header(m.Header, hCall)
	if call == "" {
		return
	}
	s.mu.Lock()
	sv := s.inflight[call]
	kind := header(m.Header, hControl)
	if sv == nil && kind == ctlCancel {
		// The cancel overtook its call (they travel on different
		// subscriptions): the call, when it comes, does not run.
		now := time.Now()
		if len(s.early) >= 1024 {
			for k, until := range s.early {
				if now.After(until) {
					delete(s.early, k)
				}
			}
		}
		if len(s.early) < 1<<16 {
			s.early[call] = now.Add(earlyKeep)
		}
	}
	s.mu.Unlock()
	if sv == nil {
		return
	}
	switch kind {
	case ctlCancel:
		sv.cancel()
	case ctlStop:
		if sv.stop != nil {
			sv.stopped()
		}
	case ctlCredit:
		n, err := strconv.Atoi(header(m.Header, hCredit))
		if err != nil || n <= 0 || sv.credit == nil {
			return
		}
		select {
		case sv.credit <- n:
		default: // the server has enough credit queued: the caller misbehaves
		}
	}
}

// request is a call or stream request, parsed.
type request struct {
	reply     string
	command   string
	args      []byte
	att       [][]byte
	session   string
	mode      pool.Affinity
	idem      bool
	heartbeat time.Duration
	credit    int
}

func (s *Server) parse(m *nats.Msg, stream bool) (request, context.Context, *served, error) {
	r := request{reply: m.Reply, command: header(m.Header, hCommand), session: header(m.Header, hSession)}
	var err error
	if r.args, r.att, err = splitAttachments(m.Data, header(m.Header, hAttachments)); err != nil {
		return r, nil, nil, errors.Join(ErrProtocol, err)
	}
	if a := header(m.Header, hAffinity); a != "" {
		n, err := strconv.Atoi(a)
		if err != nil || n < int(pool.Hint) || n > int(pool.StrictFailFast) {
			return r, nil, nil, fmt.Errorf("%w: affinity %q", ErrProtocol, a)
		}
		r.mode = pool.Affinity(n)
	}
	r.idem = header(m.Header, hIdempotent) == "1"
	if hb := header(m.Header, hHeartbeat); hb != "" {
		n, err := strconv.ParseInt(hb, 10, 64)
		if err != nil || n <= 0 {
			return r, nil, nil, fmt.Errorf("%w: heartbeat %q", ErrProtocol, hb)
		}
		r.heartbeat = max(time.Duration(n), s.opts.MinHeartbeat)
	}
	if c := header(m.Header, hCredit); c != "" {
		n, err := strconv.Atoi(c)
		if err != nil || n <= 0 {
			return r, nil, nil, fmt.Errorf("%w: credit %q", ErrProtocol, c)
		}
		r.credit = n
	}
	ctx, cancel := context.WithCancel(s.ctx)
	if t := header(m.Header, hTimeout); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			cancel()
			return r, nil, nil, fmt.Errorf("%w: timeout %q", ErrProtocol, t)
		}
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, time.Duration(n))
		c1 := cancel
		cancel = func() { c2(); c1() }
	}
	if cid := header(m.Header, hCorrelation); cid != "" {
		ctx = pool.WithCorrelationID(ctx, cid)
	}
	if _, ok := m.Header["Traceparent"]; ok {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(http.Header(m.Header)))
	}
	sv := &served{cancel: cancel}
	if stream {
		sv.credit = make(chan int, 64)
		sv.stop = make(chan struct{})
	}
	s.mu.Lock()
	if _, ok := s.early[r.reply]; ok {
		delete(s.early, r.reply)
		cancel()
	}
	s.inflight[r.reply] = sv
	s.mu.Unlock()
	return r, ctx, sv, nil
}

func (s *Server) forget(r request, sv *served) {
	s.mu.Lock()
	delete(s.inflight, r.reply)
	s.mu.Unlock()
	sv.cancel()
}

func (r request) callOptions() []pool.CallOption {
	var opts []pool.CallOption
	if r.idem {
		opts = append(opts, pool.Idempotent())
	}
	if len(r.att) > 0 {
		opts = append(opts, pool.WithAttachments(r.att...))
	}
	return opts
}

// heartbeats sends a heartbeat to reply every interval until the
// returned function is called (which waits for a heartbeat being sent).
func (s *Server) heartbeats(reply string, interval time.Duration) (stop func()) {
	if interval <= 0 {
		return func() {}
	}
	var mu sync.Mutex // guards stopped and t
	stopped := false
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(interval, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		s.send(reply, kindHeartbeat, nil)
		t.Reset(interval)
	})
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

func (s *Server) serveCall(m *nats.Msg) {
	r, ctx, sv, err := s.parse(m, false)
	if err != nil {
		s.replyError(m.Reply, err)
		return
	}
	defer s.forget(r, sv)
	stopHB := s.heartbeats(r.reply, r.heartbeat)
	var res []byte
	if r.session != "" {
		res, err = s.p.Session(r.session, r.mode).CallRaw(ctx, r.command, r.args, r.callOptions()...)
	} else {
		res, err = s.p.CallRaw(ctx, r.command, r.args, r.callOptions()...)
	}
	stopHB()
	if err != nil {
		s.replyError(r.reply, err)
		return
	}
	s.reply(r.reply, kindResult, res, "result")
}

func (s *Server) serveStream(m *nats.Msg) {
	r, ctx, sv, err := s.parse(m, true)
	if err != nil {
		s.replyError(m.Reply, err)
		return
	}
	defer s.forget(r, sv)
	credit := max(r.credit, 1)
	stopHB := s.heartbeats(r.reply, r.heartbeat)
	defer stopHB()
	var args any
	if len(r.args) > 0 {
		args = pymarshal.RawValue(r.args)
	}
	var seq iter.Seq2[pool.Chunk, error]
	if r.session != "" {
		seq = s.p.Session(r.session, r.mode).Stream(ctx, r.command, args, r.callOptions()...)
	} else {
		seq = s.p.Stream(ctx, r.command, args, r.callOptions()...)
	}
	next, stop := iter.Pull2(seq)
	defer stop() // closes the pool's stream, whichever way this ends
	idle := time.NewTimer(s.opts.StreamIdleTimeout)
	defer idle.Stop()
	for {
		for credit == 0 {
			idle.Reset(s.opts.StreamIdleTimeout)
			select {
			case n := <-sv.credit:
				credit += n
			case <-sv.stop:
				return
			case <-ctx.Done():
				s.replyError(r.reply, context.Cause(ctx))
				return
			case <-idle.C:
				s.log.Warn("remote: stream abandoned: no credit", "pool", s.name, "command", r.command)
				return
			}
		}
		select {
		case <-sv.stop:
			return
		default:
		}
		chunk, err, ok := next()
		if !ok {
			s.send(r.reply, kindEnd, nil)
			return
		}
		if err != nil {
			s.replyError(r.reply, err)
			return
		}
		if !s.reply(r.reply, kindChunk, chunk.Raw, "chunk") {
			return
		}
		credit--
	}
}

// reply sends the body as an answer of kind, or a payload error when it
// is too large; it reports whether the body went.
func (s *Server) reply(to, kind string, body []byte, what string) bool {
	if size := len(body) + 128; int64(size) > s.maxBytes {
		s.replyError(to, &PayloadError{What: what, Size: size, Max: s.maxBytes})
		return false
	}
	s.send(to, kind, body)
	return true
}

func (s *Server) replyError(to string, err error) {
	s.send(to, kindError, encodeError(err))
}

func (s *Server) send(to, kind string, body []byte) {
	msg := &nats.Msg{Subject: to, Data: body, Header: nats.Header{hKind: {kind}, hInstance: {s.inst}}}
	if err := s.nc.PublishMsg(msg); err != nil {
		s.log.Warn("remote: reply", "pool", s.name, "error", err)
	}
}

// Run serves p (see Serve) until ctx ends, then shuts down gracefully
// (see Server.Shutdown), giving the calls in progress up to grace to
// finish. Calls are not cancelled when ctx ends, only when grace runs
// out. It is the body of a serving program:
//
//	ctx, stop := signal.NotifyContext(ctx, unix.SIGTERM, unix.SIGINT)
//	defer stop()
//	err := remote.Run(ctx, nc, p, remote.ServeOptions{}, 30*time.Second)
func Run(ctx context.Context, nc *nats.Conn, p *pool.Pool, opts ServeOptions, grace time.Duration) error {
	srv, err := Serve(context.WithoutCancel(ctx), nc, p, opts)
	if err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	return srv.Shutdown(sctx)
}
