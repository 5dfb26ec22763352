package pool

import (
	"container/list"
	"context"
	"slices"
	"time"

	"github.com/snakepit-go/snakepit/worker"
)

// Pipelining (Config.PipelineDepth): when every worker's slots are taken,
// a call may take one of a busy worker's pipeline places instead of
// waiting in the pool's queue; the worker holds it until a slot frees.
// The pool keeps such calls in p.pipes, oldest first. When a worker gets
// a free slot with no caller waiting, the oldest call pipelined elsewhere
// is withdrawn from its worker (if it has not started: worker.Withdrawer)
// and, its Call having failed with worker.ErrNotStarted, is made again, on
// the worker that freed up. Under load callers wait whenever a slot frees,
// so this happens only when load drops, where a call may otherwise wait
// behind a long one while a worker idles.

// pipeEntry is a call that may be pipelined; el is set while it is.
type pipeEntry struct {
	req    *worker.Request
	m      *member
	el     *list.Element
	moving bool // a withdrawal was asked for
}

// withdrawTimeout bounds one withdrawal.
const withdrawTimeout = 5 * time.Second

// pipeLocked records that pe (nil: nothing) took a place of m; it is
// pipelined if m's slots were all taken before.
func (p *Pool) pipeLocked(pe *pipeEntry, m *member) {
	if pe == nil || m.active <= p.slots {
		return
	}
	pe.m, pe.moving = m, false
	pe.el = p.pipes.PushBack(pe)
}

// unpipe forgets pe (nil: nothing) once its call has returned. Only the
// call's own goroutine clears pe.el, and it was set (under mu) before the
// call got its worker: a call that was not pipelined takes no lock here.
func (p *Pool) unpipe(pe *pipeEntry) {
	if pe == nil || pe.el == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pe.el != nil {
		p.pipes.Remove(pe.el)
		pe.el, pe.m = nil, nil
	}
}

// pickPipelineLocked returns a worker in service with a free pipeline
// place, for a strict session's call its worker (or, unbound, any), the one
// holding the fewest calls; not one of excl.
func (p *Pool) pickPipelineLocked(sess *sessionEntry, excl []*member) *member {
	var best *member
	for m := range p.members {
		if m.retiring || m.gone || m.active >= p.slots+p.depth || slices.Contains(excl, m) {
			continue
		}
		if sess != nil && sess.m != nil && sess.m != m {
			continue
		}
		if dead(m) {
			continue // its watcher removes it
		}
		if best == nil || m.active < best.active {
			best = m
		}
	}
	return best
}

// moveLocked is called when free, which is in service, has a free slot
// and no caller waits for it: the oldest call pipelined to another worker
// is withdrawn from there, to be made again.
func (p *Pool) moveLocked(free *member) {
	if p.depth == 0 || p.closed {
		return
	}
	for el := p.pipes.Front(); el != nil; el = el.Next() {
		pe := el.Value.(*pipeEntry)
		if pe.moving || pe.m == free {
			continue
		}
		wd, ok := pe.m.w.(worker.Withdrawer)
		if !ok {
			continue
		}
		pe.moving = true
		req := pe.req
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.ctx, withdrawTimeout)
			defer cancel()
			_, _ = wd.Withdraw(ctx, req) // false: it started; it runs where it is
		}()
		return
	}
}
