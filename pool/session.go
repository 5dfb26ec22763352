package pool

import (
	"context"
	"iter"
	"time"

	"github.com/snakepit-go/snakepit/worker"
)

// Affinity says how strictly a session's calls stick to the worker that
// holds its state.
type Affinity int

const (
	// Hint prefers the session's worker when it is idle, else takes any
	// worker (the session then moves there; state kept on the old worker is
	// dropped). For sessions whose state is a cache.
	Hint Affinity = iota
	// StrictQueue waits for the session's worker.
	StrictQueue
	// StrictFailFast fails at once with ErrSessionBusy when the session's
	// worker is busy.
	StrictFailFast
)

// sessionEntry is a session's binding; its fields are guarded by Pool.mu.
type sessionEntry struct {
	m        *member // nil: not bound (yet, or any more)
	lost     bool    // its worker died or was recycled; reported once
	lastUsed time.Time
	active   int // calls of the session in progress: it does not expire meanwhile
}

// Session is a handle for calls that share Python-side state (ctx.session)
// on one worker. It is cheap: create one per session id as needed.
type Session struct {
	p    *Pool
	id   string
	mode Affinity
}

// Session returns the session id with the given affinity. The first call
// binds it to the worker that serves it. If that worker dies or is
// recycled, the next strict call fails with ErrSessionLost and the one
// after starts the session afresh. Sessions unused for
// Config.SessionIdleTimeout end by themselves.
func (p *Pool) Session(id string, mode Affinity) *Session {
	return &Session{p: p, id: id, mode: mode}
}

// ID returns the session id.
func (s *Session) ID() string { return s.id }

// Call is Pool.Call within the session.
func (s *Session) Call(ctx context.Context, command string, args, out any, opts ...CallOption) error {
	return s.p.call(ctx, command, args, out, s.id, s.mode, opts)
}

// CallRaw is Pool.CallRaw within the session.
func (s *Session) CallRaw(ctx context.Context, command string, args []byte, opts ...CallOption) ([]byte, error) {
	return s.p.callRaw(ctx, command, args, s.id, s.mode, opts)
}

// Stream is Pool.Stream within the session.
func (s *Session) Stream(ctx context.Context, command string, args any, opts ...CallOption) iter.Seq2[Chunk, error] {
	return s.p.stream(ctx, command, args, s.id, s.mode, opts)
}

// Close ends the session: its Python-side state is dropped on its worker.
// Calls of the session still running keep its binding (a strict call
// arriving meanwhile still goes to that worker, and starts with empty
// state); the pool forgets the session once none runs.
func (s *Session) Close(ctx context.Context) error {
	p := s.p
	p.mu.Lock()
	e := p.sessions[s.id]
	var m *member
	if e != nil {
		m = e.m
		if e.active == 0 {
			delete(p.sessions, s.id)
		}
	}
	p.mu.Unlock()
	if m == nil {
		return nil
	}
	return endSession(ctx, m, s.id)
}

func endSession(ctx context.Context, m *member, id string) error {
	if se, ok := m.w.(worker.SessionEnder); ok {
		return se.EndSession(ctx, id)
	}
	return nil
}

// acquireFor takes a worker for a call, honouring the session's affinity.
// It returns the session's entry (nil without a session), which the caller
// hands back to releaseFor with the worker.
func (p *Pool) acquireFor(ctx context.Context, session string, mode Affinity, pe *pipeEntry) (*member, *sessionEntry, error) {
	if session == "" {
		m, err := p.acquire(ctx, nil, false, false, pe)
		return m, nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, nil, ErrClosed
	}
	e := p.sessions[session]
	if e == nil {
		e = &sessionEntry{}
		p.sessions[session] = e
	}
	e.lastUsed = time.Now()
	if e.m != nil && !e.m.gone && dead(e.m) {
		p.removeLocked(e.m) // died; its watcher has not seen it yet
	}
	if e.lost {
		e.lost = false
		if mode != Hint {
			p.mu.Unlock()
			return nil, nil, ErrSessionLost
		}
	}
	e.active++
	p.mu.Unlock()
	if mode == StrictFailFast {
		pe = nil // busy means busy: it is never pipelined
	}
	m, err := p.acquire(ctx, e, mode != Hint, mode == StrictFailFast, pe)
	if err != nil {
		p.mu.Lock()
		e.active--
		p.mu.Unlock()
		return nil, nil, err
	}
	return m, e, nil
}

// releaseFor returns a worker after a call of a session (e may be nil):
// a hint session that succeeded moves to the worker that served it.
func (p *Pool) releaseFor(m *member, e *sessionEntry, session string, callErr error) {
	if e == nil {
		p.release(m, callErr)
		return
	}
	p.mu.Lock()
	e.active--
	e.lastUsed = time.Now()
	var left *member
	if callErr == nil && e.m != m && !m.gone && p.sessions[session] == e {
		// Only hint sessions move (strict ones are bound when they take
		// their worker); the state they kept elsewhere is dropped.
		left, e.m = e.m, m
	}
	p.mu.Unlock()
	p.release(m, callErr)
	if left != nil && !left.stopping.Load() {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
			defer cancel()
			_ = endSession(ctx, left, session)
		}()
	}
}

// expireSessions ends sessions idle longer than SessionIdleTimeout.
func (p *Pool) expireSessions() {
	type expired struct {
		id string
		m  *member
	}
	var ex []expired
	p.mu.Lock()
	now := time.Now()
	for id, e := range p.sessions {
		if e.active == 0 && now.Sub(e.lastUsed) > p.cfg.SessionIdleTimeout {
			delete(p.sessions, id)
			if e.m != nil && !e.m.gone {
				ex = append(ex, expired{id, e.m})
			}
		}
	}
	p.mu.Unlock()
	for _, x := range ex {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		_ = endSession(ctx, x.m, x.id)
		cancel()
	}
}
