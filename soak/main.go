// Command soak runs snakepit under overload, worker recycling and a crash
// storm for a bounded time and prints what happened to every call.
//
//	go run ./soak                 # 5 minutes
//	go run ./soak -duration 30s
//
// Phases, each for a share of -duration:
//   - overload: callers offer about 10× what the pool can serve, every call
//     with a deadline; each call must end exactly once (a result,
//     ErrSaturated, a timeout or a worker error), the queue must stay
//     within its bound, and the host's memory flat;
//   - recycling (thread profile): the same overload while every worker is
//     replaced after 200 calls, so sub-interpreters start and end all the
//     time; the host's OS threads must stay flat;
//   - crash storm (process profile): while load continues, handlers kill
//     their own process (SIGKILL, abort, segfault), raise SystemExit, and the
//     soak kills random workers from outside; the pool must return to full
//     size, idempotent calls succeed, and no process may be left behind.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
	"golang.org/x/sys/unix"
)

//go:embed soak_adapter.py
var adapter []byte

func main() {
	d := flag.Duration("duration", 5*time.Minute, "total soak time (at most 10m is sensible)")
	flag.Parse()
	s, err := soak(*d)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	fmt.Print(s.table())
	if s.failed() {
		os.Exit(1)
	}
}

// summary counts what happened to the calls of one phase.
type summary struct {
	Phase                                       string
	Offered, Admitted, Completed, Rejected      int64
	Timeouts, WorkerDead, OtherErrors           int64
	Lost, Duplicated                            int64
	WorkersKilled, WorkersReplaced, OrphansLeft int64
	MaxQueue, QueueBound                        int
	P99                                         time.Duration // of completed calls
	StartRSS, PeakRSS                           int64
	StartThreads, PeakThreads                   int // the host's OS threads
}

type report []summary

func (r report) failed() bool {
	for _, s := range r {
		if s.Lost != 0 || s.Duplicated != 0 || s.OrphansLeft != 0 || s.OtherErrors != 0 || s.MaxQueue > s.QueueBound {
			return true
		}
	}
	return false
}

func (r report) table() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "phase\toffered\tadmitted\tcompleted\trejected\ttimeouts\tworker dead\tother errors\tlost\tduplicated\tkilled\treplaced\torphans\tmax queue\tp99 completed\thost RSS start→peak\thost threads start→peak")
	for _, s := range r {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d/%d\t%v\t%.0f→%.0f MiB\t%d→%d\n", s.Phase, s.Offered, s.Admitted,
			s.Completed, s.Rejected, s.Timeouts, s.WorkerDead, s.OtherErrors, s.Lost, s.Duplicated, s.WorkersKilled,
			s.WorkersReplaced, s.OrphansLeft, s.MaxQueue, s.QueueBound, s.P99.Round(time.Microsecond),
			float64(s.StartRSS)/(1<<20), float64(s.PeakRSS)/(1<<20), s.StartThreads, s.PeakThreads)
	}
	w.Flush()
	return b.String()
}

func soak(total time.Duration) (report, error) {
	dir, err := os.MkdirTemp("", "snakepit-soak-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "soak_adapter.py"), adapter, 0o644); err != nil {
		return nil, err
	}
	var r report
	for _, phase := range []struct {
		name    string
		profile pool.Profile
		storm   bool
		recycle int // MaxCalls
		share   float64
	}{
		{"overload thread", pool.Thread, false, 0, 0.2},
		{"recycling thread", pool.Thread, false, 200, 0.2},
		{"overload process", pool.Process, false, 0, 0.25},
		{"crash storm process", pool.Process, true, 0, 0.35},
	} {
		s, err := runPhase(dir, phase.name, phase.profile, phase.storm, phase.recycle, time.Duration(float64(total)*phase.share))
		if err != nil {
			return r, fmt.Errorf("%s: %w", phase.name, err)
		}
		r = append(r, s)
	}
	return r, nil
}

func runPhase(dir, name string, profile pool.Profile, storm bool, maxCalls int, d time.Duration) (summary, error) {
	s := summary{Phase: name}
	ctx := context.Background()
	const size, queue = 2, 16
	p, err := pool.New(ctx, pool.Config{
		Name: strings.ReplaceAll(name, " ", "-"), Profile: profile, Module: "soak_adapter", Paths: []string{dir},
		Size: size, QueueSize: queue, RestartBackoff: 20 * time.Millisecond, MaxRestartBackoff: time.Second,
		CrashLoopThreshold: 1 << 20, StopGrace: 2 * time.Second, MaxCalls: int64(maxCalls),
	})
	if err != nil {
		return s, err
	}
	s.QueueBound = queue
	s.StartRSS = rss()
	s.StartThreads = threads()
	var peakThreads atomic.Int64
	peakThreads.Store(int64(s.StartThreads))
	var latMu sync.Mutex
	var lats []time.Duration
	// Capacity: each call works 2 ms, so 2 workers serve ~1000 calls/s.
	var seen sync.Map // correlation id -> true, for completed calls
	var maxQueue atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	count := func(err error) {
		switch {
		case err == nil:
			atomic.AddInt64(&s.Completed, 1)
		case errors.Is(err, pool.ErrSaturated):
			atomic.AddInt64(&s.Rejected, 1)
		case errors.Is(err, context.DeadlineExceeded):
			atomic.AddInt64(&s.Timeouts, 1)
		case errors.Is(err, worker.ErrWorkerDead):
			atomic.AddInt64(&s.WorkerDead, 1)
		default:
			atomic.AddInt64(&s.OtherErrors, 1)
			fmt.Fprintln(os.Stderr, "unexpected error:", err)
		}
	}
	// Open-loop arrivals: 100 calls every 10 ms (10 000/s), whatever
	// happened to earlier ones — about 10× what the pool can serve.
	one := func(cid string) {
		defer wg.Done()
		cctx, cancel := context.WithTimeout(pool.WithCorrelationID(ctx, cid), 200*time.Millisecond)
		defer cancel()
		var out struct {
			CID string `json:"cid"`
		}
		var err error
		start := time.Now()
		if storm && rand.IntN(50) == 0 {
			how := []string{"sigkill", "abort", "segfault", "exit"}[rand.IntN(4)]
			err = p.Call(cctx, "crash", map[string]any{"how": how}, nil)
			if how == "exit" && errors.Is(err, worker.ErrPython) {
				err = nil // SystemExit is an exception: the worker lives
			}
		} else {
			var opts []pool.CallOption
			if rand.IntN(2) == 0 {
				opts = append(opts, pool.Idempotent())
			}
			err = p.Call(cctx, "work", map[string]any{"ms": 2}, &out, opts...)
			if err == nil {
				latMu.Lock()
				lats = append(lats, time.Since(start))
				latMu.Unlock()
				if _, dup := seen.LoadOrStore(out.CID, true); dup || out.CID != cid {
					atomic.AddInt64(&s.Duplicated, 1)
				}
			}
		}
		count(err)
		if q := int64(p.Stats().Waiting); q > maxQueue.Load() {
			maxQueue.Store(q)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for range 100 {
				i++
				atomic.AddInt64(&s.Offered, 1)
				wg.Add(1)
				go one(name + "-" + strconv.Itoa(i))
			}
		}
	}()
	every(&wg, stop, 50*time.Millisecond, func() { // sample the host's threads
		if n := int64(threads()); n > peakThreads.Load() {
			peakThreads.Store(n)
		}
	})
	if storm {
		// Kill random workers from outside as well.
		every(&wg, stop, 300*time.Millisecond, func() {
			if kids := children(); len(kids) > 0 {
				unix.Kill(kids[rand.IntN(len(kids))], unix.SIGKILL)
				atomic.AddInt64(&s.WorkersKilled, 1)
			}
		})
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	st := p.Stats()
	s.WorkersReplaced = st.Deaths + st.Recycled
	s.PeakThreads = int(peakThreads.Load())
	if storm {
		s.WorkersKilled = st.Deaths // from inside and outside
	}
	deadline := time.Now().Add(30 * time.Second)
	for p.Stats().Workers < size && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p.Stats().Workers < size {
		return s, fmt.Errorf("pool did not return to %d workers: %+v", size, p.Stats())
	}
	closeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.Close(closeCtx); err != nil {
		return s, err
	}
	s.Admitted = s.Completed + s.Timeouts + s.WorkerDead + s.OtherErrors
	s.Lost = s.Offered - s.Completed - s.Rejected - s.Timeouts - s.WorkerDead - s.OtherErrors
	s.MaxQueue = int(maxQueue.Load())
	if len(lats) > 0 {
		slices.Sort(lats)
		s.P99 = lats[len(lats)*99/100]
	}
	s.PeakRSS = peakRSS()
	s.OrphansLeft = int64(len(children()))
	if rep, err := subproc.Sweep(subproc.DefaultRegistryDir()); err == nil {
		s.OrphansLeft += int64(len(rep.Killed))
	}
	return s, nil
}

// every runs fn every d in a goroutine counted in wg, until stop closes.
func every(wg *sync.WaitGroup, stop <-chan struct{}, d time.Duration, fn func()) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			fn()
		}
	}()
}

// children lists this process's child processes.
func children() []int {
	var out []int
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// threads counts this process's OS threads.
func threads() int {
	tasks, _ := os.ReadDir("/proc/self/task")
	return len(tasks)
}

// peakRSS is this process's peak resident memory (VmHWM).
func peakRSS() int64 { return statusKB("VmHWM:") }

// rss is this process's resident memory now (VmRSS).
func rss() int64 { return statusKB("VmRSS:") }

func statusKB(field string) int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
