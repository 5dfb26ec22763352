package pool

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a pool's state and counters.
type Stats struct {
	Name string
	// Profile is Config.Profile; Effective is the profile the workers run:
	// Thread or Process, the one Auto chose (Config.Profile with
	// Config.NewWorker).
	Profile   Profile
	Effective Profile
	// Workers by state.
	Workers  int // in service (idle or busy)
	Idle     int // running no call
	Busy     int // running at least one call (Workers - Idle)
	Starting int // being started or replaced
	// InFlight is the number of calls and open streams holding a worker's
	// slot; SlotsPerWorker is Config.WorkerConcurrency.
	InFlight       int
	SlotsPerWorker int
	// Waiting is the number of callers queued for a worker; QueueSize its bound.
	Waiting   int
	QueueSize int
	// Sessions is the number of sessions the pool tracks.
	Sessions int
	// Counters since the pool started.
	Calls         int64 // calls and streams that succeeded
	Failed        int64 // calls and streams that failed (any reason, including rejections)
	Rejected      int64 // ErrSaturated
	Retries       int64 // idempotent calls retried after a worker died
	Moved         int64 // pipelined calls withdrawn from behind a long call to run on a worker that freed up
	Started       int64 // workers put in service
	Deaths        int64 // workers that died
	Recycled      int64 // workers replaced on a lifetime, call-count or memory limit
	StartFailures int64 // replacement workers that failed to start
	// Time spent waiting for a worker and in calls, as histograms.
	Wait Histogram
	Call Histogram
	// Healthy is false during a crash loop (see Pool.Health).
	Healthy bool
}

// HistogramBounds are the upper bounds of the histogram buckets.
var HistogramBounds = []time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram counts durations: Counts[i] observations at most
// HistogramBounds[i] (not cumulative), the last one above every bound.
type Histogram struct {
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

type histogram struct {
	counts [18]atomic.Uint64
	sum    atomic.Int64
	count  atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(HistogramBounds) && d > HistogramBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
	h.count.Add(1)
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Counts: make([]uint64, len(h.counts)), Count: h.count.Load(), Sum: time.Duration(h.sum.Load())}
	for i := range h.counts {
		out.Counts[i] = h.counts[i].Load()
	}
	return out
}

type counters struct {
	calls, failed, rejected, retries, started, deaths, recycled, startFailures, moved atomic.Int64
	wait, call                                                                        histogram
}

// estimateWait guesses how long the n-th waiter waits for one of k workers,
// from the mean call time so far.
func (c *counters) estimateWait(n, k int) time.Duration {
	cnt := c.call.count.Load()
	if cnt == 0 {
		return 0
	}
	mean := time.Duration(c.call.sum.Load() / int64(cnt))
	return mean * time.Duration((n+k-1)/k)
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{
		Name:      p.cfg.Name,
		Profile:   p.cfg.Profile,
		Effective: p.cfg.Profile,
		Workers:   len(p.members),
		Starting:  p.starting,
		Waiting:   p.waiters.Len(),
		QueueSize: p.cfg.QueueSize,
		Sessions:  len(p.sessions),
		Healthy:   !p.closed && !p.degradedLocked(),
	}
	for m := range p.members {
		if m.active == 0 && !m.retiring {
			s.Idle++
		}
	}
	if p.effective != nil {
		s.Effective = p.effective()
	}
	s.Busy = s.Workers - s.Idle
	s.InFlight, s.SlotsPerWorker = p.inflight, p.slots
	p.mu.Unlock()
	s.Calls = p.stats.calls.Load()
	s.Failed = p.stats.failed.Load()
	s.Rejected = p.stats.rejected.Load()
	s.Retries = p.stats.retries.Load()
	s.Moved = p.stats.moved.Load()
	s.Started = p.stats.started.Load()
	s.Deaths = p.stats.deaths.Load()
	s.Recycled = p.stats.recycled.Load()
	s.StartFailures = p.stats.startFailures.Load()
	s.Wait = p.stats.wait.snapshot()
	s.Call = p.stats.call.snapshot()
	return s
}
