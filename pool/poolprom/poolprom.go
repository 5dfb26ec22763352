// Package poolprom exports a pool's Stats as Prometheus metrics: a
// prometheus.Collector the program registers with its own registry, the way
// collectors.NewDBStatsCollector does for sql.DB. Nothing is registered
// globally.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(poolprom.NewCollector(p))
package poolprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/snakepit-go/snakepit/pool"
)

// Collector collects one pool's metrics, labelled with its name and its
// configured profile (Config.Profile: "thread", "process" or "auto").
// snakepit_pool_effective_profile says which profile the workers run: it
// is 1 with the label effective="thread" or effective="process" (the one
// an Auto pool chose).
type Collector struct {
	p *pool.Pool

	workers, waiting, queueSize, sessions, healthy, inFlight, slots                   *prometheus.Desc
	calls, failed, rejected, retries, moved, started, deaths, recycled, startFailures *prometheus.Desc
	wait, call                                                                        *prometheus.Desc
	effective                                                                         *prometheus.Desc
}

// NewCollector returns a collector for p.
func NewCollector(p *pool.Pool) *Collector {
	s := p.Stats()
	labels := prometheus.Labels{"pool": s.Name, "profile": s.Profile.String()}
	d := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc("snakepit_pool_"+name, help, variable, labels)
	}
	return &Collector{
		p:             p,
		workers:       d("workers", "Workers by state.", "state"),
		waiting:       d("waiting_calls", "Calls waiting for a worker."),
		queueSize:     d("queue_size", "The bound on waiting calls."),
		sessions:      d("sessions", "Sessions the pool tracks."),
		inFlight:      d("calls_in_flight", "Calls and open streams holding a worker's slot."),
		slots:         d("worker_slots", "Calls one worker runs at once (WorkerConcurrency)."),
		healthy:       d("healthy", "1 unless the pool is closed or in a crash loop."),
		calls:         d("calls_total", "Calls and streams that succeeded."),
		failed:        d("calls_failed_total", "Calls and streams that failed, for any reason."),
		rejected:      d("calls_rejected_total", "Calls rejected because the pool was saturated."),
		retries:       d("calls_retried_total", "Idempotent calls retried after their worker died."),
		moved:         d("calls_moved_total", "Pipelined calls withdrawn from behind a long call to a worker that freed up."),
		started:       d("workers_started_total", "Workers put in service."),
		deaths:        d("worker_deaths_total", "Workers that died."),
		recycled:      d("workers_recycled_total", "Workers replaced on a lifetime, call-count or memory limit."),
		startFailures: d("worker_start_failures_total", "Replacement workers that failed to start."),
		wait:          d("wait_seconds", "Time calls waited for a worker."),
		call:          d("call_seconds", "Time calls spent in a worker."),
		effective:     d("effective_profile", "1 for the profile the workers run (the one chosen for profile auto).", "effective"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.workers, c.waiting, c.queueSize, c.sessions, c.healthy, c.inFlight, c.slots, c.calls, c.failed,
		c.rejected, c.retries, c.moved, c.started, c.deaths, c.recycled, c.startFailures, c.wait, c.call, c.effective} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge(c.workers, float64(s.Idle), "idle")
	gauge(c.workers, float64(s.Busy), "busy")
	gauge(c.workers, float64(s.Starting), "starting")
	gauge(c.waiting, float64(s.Waiting))
	gauge(c.queueSize, float64(s.QueueSize))
	gauge(c.sessions, float64(s.Sessions))
	gauge(c.inFlight, float64(s.InFlight))
	gauge(c.slots, float64(s.SlotsPerWorker))
	healthy := 0.0
	if s.Healthy {
		healthy = 1
	}
	gauge(c.healthy, healthy)
	gauge(c.effective, 1, s.Effective.String())
	counter(c.calls, s.Calls)
	counter(c.failed, s.Failed)
	counter(c.rejected, s.Rejected)
	counter(c.retries, s.Retries)
	counter(c.moved, s.Moved)
	counter(c.started, s.Started)
	counter(c.deaths, s.Deaths)
	counter(c.recycled, s.Recycled)
	counter(c.startFailures, s.StartFailures)
	ch <- histogram(c.wait, s.Wait)
	ch <- histogram(c.call, s.Call)
}

// histogram turns a pool.Histogram into a constant Prometheus histogram
// (cumulative buckets, in seconds).
func histogram(d *prometheus.Desc, h pool.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(pool.HistogramBounds))
	var cum uint64
	for i, bound := range pool.HistogramBounds {
		cum += h.Counts[i]
		buckets[bound.Seconds()] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets)
}
