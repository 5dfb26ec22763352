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

type sessionEntry struct {
	m        *member // nil: not bound (yet, or any more)
	lost     bool    // its worker died or was recycled; reported once
	lastUsed time.Time
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
func (s *Session) Close(ctx context.Context) error {
	p := s.p
	p.mu.Lock()
	e := p.sessions[s.id]
	delete(p.sessions, s.id)
	p.mu.Unlock()
	if e == nil || e.m == nil {
		return nil
	}
	return endSession(ctx, e.m, s.id)
}

func endSession(ctx context.Context, m *member, id string) error {
	if se, ok := m.w.(worker.SessionEnder); ok {
		return se.EndSession(ctx, id)
	}
	return nil
}

// acquireFor takes a worker for a call, honouring the session's affinity.
func (p *Pool) acquireFor(ctx context.Context, session string, mode Affinity) (*member, error) {
	if session == "" {
		return p.acquire(ctx, nil, nil, false)
	}
	p.mu.Lock()
	e := p.sessions[session]
	var bound *member
	if e != nil {
		e.lastUsed = time.Now()
		if e.m != nil && dead(e.m) {
			p.removeLocked(e.m) // died; its watcher has not seen it yet
		}
		if e.lost {
			e.lost = false
			if mode != Hint {
				p.mu.Unlock()
				return nil, ErrSessionLost
			}
		}
		bound = e.m
	}
	p.mu.Unlock()
	switch {
	case bound == nil:
		return p.acquire(ctx, nil, nil, false)
	case mode == Hint:
		return p.acquire(ctx, nil, bound, false)
	default:
		return p.acquire(ctx, bound, nil, mode == StrictFailFast)
	}
}

// bindSession records that m served the session (and holds its state).
func (p *Pool) bindSession(session string, m *member) {
	p.mu.Lock()
	e := p.sessions[session]
	if e == nil {
		e = &sessionEntry{}
		p.sessions[session] = e
	}
	old := e.m
	if !m.gone {
		e.m = m
	}
	e.lastUsed = time.Now()
	p.mu.Unlock()
	if old != nil && old != m && !old.gone {
		// A hint session moved: drop its state on the worker it left.
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
			defer cancel()
			_ = endSession(ctx, old, session)
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
		if now.Sub(e.lastUsed) > p.cfg.SessionIdleTimeout {
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
