package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
)

// measure runs call repeatedly for the scenario duration, one goroutine per
// caller, after a warm-up, and returns ops/s and latency percentiles.
func (e *env) measure(callers int, call func() error) (Result, error) {
	warm := time.Now().Add(e.o.duration / 5)
	for time.Now().Before(warm) {
		if err := call(); err != nil {
			return Result{}, err
		}
	}
	var (
		mu   sync.Mutex
		lats []int64
		ops  atomic.Int64
		wg   sync.WaitGroup
		ferr atomic.Value
	)
	stop := time.Now().Add(e.o.duration)
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]int64, 0, 4096)
			// Every caller measures at least one call, however late it
			// starts.
			for first := true; first || time.Now().Before(stop); first = false {
				t := time.Now()
				if err := call(); err != nil {
					ferr.Store(err)
					return
				}
				local = append(local, int64(time.Since(t)))
				ops.Add(1)
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err, ok := ferr.Load().(error); ok {
		return Result{}, err
	}
	elapsed := time.Since(start)
	slices.Sort(lats)
	q := func(p float64) int64 {
		if len(lats) == 0 {
			return 0
		}
		return lats[min(len(lats)-1, int(p*float64(len(lats))))]
	}
	return Result{Concurrency: callers, OpsPerS: float64(ops.Load()) / elapsed.Seconds(),
		P50: q(0.5), P90: q(0.9), P99: q(0.99), P999: q(0.999)}, nil
}

// repeat runs m e.o.reps times and keeps the run with the median ops/s,
// reporting the spread.
func (e *env) repeat(m func() (Result, error)) (Result, error) {
	var rs []Result
	for range e.o.reps {
		r, err := m()
		if err != nil {
			return r, err
		}
		rs = append(rs, r)
	}
	return median(rs), nil
}

// median returns the run with the median ops/s, with the spread of all.
func median(rs []Result) Result {
	slices.SortFunc(rs, func(a, b Result) int {
		switch {
		case a.OpsPerS < b.OpsPerS:
			return -1
		case a.OpsPerS > b.OpsPerS:
			return 1
		}
		return 0
	})
	med := rs[len(rs)/2]
	if len(rs) > 1 && med.OpsPerS > 0 {
		med.OpsSpread = (rs[len(rs)-1].OpsPerS - rs[0].OpsPerS) / med.OpsPerS
	}
	return med
}

var noopArgs = mustMarshal(map[string]any{"req": map[string]any{"id": 7, "name": "snake"}})

func mustMarshal(v any) []byte {
	b, err := pymarshal.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// latency: a no-op call at one caller, in each profile and baseline. The
// profiles' repetitions are interleaved, so drift in the machine affects
// both alike.
func (e *env) latency(ctx context.Context) ([]Result, error) {
	var out []Result
	var profiles []string
	pools := map[string]*pool.Pool{}
	defer func() {
		for _, p := range pools {
			p.Close(ctx)
		}
	}()
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		p, err := e.newPool(ctx, profile, 1)
		if err != nil {
			return nil, err
		}
		pools[profile] = p
		profiles = append(profiles, profile)
	}
	runs := map[string][]Result{}
	for rep := range e.o.reps {
		for _, profile := range profiles {
			e.progress(fmt.Sprintf("latency: %s (repetition %d/%d)", profile, rep+1, e.o.reps))
			p := pools[profile]
			r, err := e.measure(1, func() error { _, err := p.CallRaw(ctx, "noop", noopArgs); return err })
			if err != nil {
				return nil, err
			}
			runs[profile] = append(runs[profile], r)
		}
	}
	for _, profile := range profiles {
		r := median(runs[profile])
		r.Scenario, r.Profile, r.Workers = "latency", profile, 1
		out = append(out, r)
	}
	if !e.has("baselines") {
		return out, nil
	}
	e.progress("latency: JSON-lines child")
	r, err := e.repeat(e.jsonLines)
	if err != nil {
		return nil, err
	}
	r.Scenario, r.Profile, r.Workers = "latency", "jsonl-child", 1
	out = append(out, r)

	e.progress("latency: os/exec per call")
	r, err = e.execPerCall()
	if err != nil {
		return nil, err
	}
	r.Scenario, r.Profile, r.Workers = "latency", "exec-per-call", 1
	out = append(out, r)

	for _, kind := range []string{"interpreter", "process"} {
		e.progress("latency: " + kind + " pool executor")
		n := 2000
		if e.o.quick {
			n = 500
		}
		var res Result
		if err := e.baseline(&res, "latency", kind, strconv.Itoa(n)); err != nil {
			return nil, err
		}
		res.Scenario, res.Profile, res.Workers, res.Concurrency = "latency", kind+"-pool-executor", 1, 1
		out = append(out, res)
	}
	return out, nil
}

// jsonLines drives a long-lived child that reads a JSON request per line
// on stdin and writes a JSON reply per line: the usual hand-written bridge.
func (e *env) jsonLines() (Result, error) {
	cmd := exec.Command(e.exe, "-c", `import json, sys
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.write(json.dumps(req["req"]) + "\n")
    sys.stdout.flush()
`)
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return Result{}, err
	}
	defer func() { in.Close(); cmd.Wait() }()
	rd := bufio.NewReader(outp)
	line := []byte(`{"req": {"id": 7, "name": "snake"}}` + "\n")
	return e.measure(1, func() error {
		if _, err := in.Write(line); err != nil {
			return err
		}
		reply, err := rd.ReadBytes('\n')
		if err != nil {
			return err
		}
		var v map[string]any
		return json.Unmarshal(reply, &v)
	})
}

// execPerCall starts the interpreter for every call.
func (e *env) execPerCall() (Result, error) {
	n := 30
	if e.o.quick {
		n = 10
	}
	var lats []int64
	start := time.Now()
	for range n {
		t := time.Now()
		out, err := exec.Command(e.exe, "-c", `import json, sys; print(json.dumps(json.loads(sys.argv[1])))`, `{"id": 7}`).Output()
		if err != nil {
			return Result{}, err
		}
		if !strings.Contains(string(out), "7") {
			return Result{}, fmt.Errorf("unexpected output %q", out)
		}
		lats = append(lats, int64(time.Since(t)))
	}
	elapsed := time.Since(start)
	slices.Sort(lats)
	q := func(p float64) int64 { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	return Result{Concurrency: 1, OpsPerS: float64(n) / elapsed.Seconds(), P50: q(0.5), P90: q(0.9), P99: q(0.99), P999: q(0.999)}, nil
}

// baseline runs baselines.py and decodes its JSON into r (and extra fields).
func (e *env) baseline(r *Result, args ...string) error {
	cmd := exec.Command(e.exe, append([]string{"baselines.py"}, args...)...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "PYTHONPATH="+e.dir)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return fmt.Errorf("baselines.py %v: %w: %s", args, err, ee.Stderr)
		}
		return err
	}
	var raw struct {
		OpsPerS float64 `json:"ops_per_s"`
		P50     int64   `json:"p50_ns"`
		P90     int64   `json:"p90_ns"`
		P99     int64   `json:"p99_ns"`
		P999    int64   `json:"p999_ns"`
		Speedup float64 `json:"speedup"`
		ManyS   float64 `json:"many_s"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return fmt.Errorf("baselines.py %v: %w", args, err)
	}
	r.OpsPerS, r.P50, r.P90, r.P99, r.P999, r.Speedup = raw.OpsPerS, raw.P50, raw.P90, raw.P99, raw.P999, raw.Speedup
	return nil
}

// throughput: no-op calls per second against callers, one pool of Workers.
func (e *env) throughput(ctx context.Context) ([]Result, error) {
	callers := []int{1, 2, 4, 8, 16, 32, 64}
	if e.o.quick {
		callers = []int{1, 4, 16}
	}
	var out []Result
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		p, err := e.newPool(ctx, profile, e.o.workers)
		if err != nil {
			return nil, err
		}
		for _, c := range callers {
			e.progress(fmt.Sprintf("throughput: %s, %d callers", profile, c))
			r, err := e.repeat(func() (Result, error) {
				return e.measure(c, func() error { _, err := p.CallRaw(ctx, "noop", noopArgs); return err })
			})
			if err != nil {
				p.Close(ctx)
				return nil, err
			}
			r.Scenario, r.Profile, r.Workers = "throughput", profile, e.o.workers
			out = append(out, r)
		}
		p.Close(ctx)
	}
	return out, nil
}

// cpu: a pure-Python task on 1..Workers workers at once; speedup over one.
func (e *env) cpu(ctx context.Context) ([]Result, error) {
	work := 400_000
	if e.o.quick {
		work = 200_000
	}
	var out []Result
	counts := []int{}
	for n := 1; n <= e.o.workers; n *= 2 {
		counts = append(counts, n)
	}
	if counts[len(counts)-1] != e.o.workers {
		counts = append(counts, e.o.workers)
	}
	args := mustMarshal(map[string]any{"n": work})
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		p, err := e.newPool(ctx, profile, e.o.workers)
		if err != nil {
			return nil, err
		}
		burst := func(k int) (time.Duration, error) {
			var wg sync.WaitGroup
			var ferr atomic.Value
			t := time.Now()
			for range k {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := p.CallRaw(ctx, "burn", args); err != nil {
						ferr.Store(err)
					}
				}()
			}
			wg.Wait()
			if err, ok := ferr.Load().(error); ok {
				return 0, err
			}
			return time.Since(t), nil
		}
		burst(e.o.workers) // warm every worker
		for _, n := range counts {
			e.progress(fmt.Sprintf("cpu: %s, %d workers busy", profile, n))
			// Interleaved: one task alone, then n at once; fastest of reps.
			one, many := time.Duration(1<<62), time.Duration(1<<62)
			for range max(e.o.reps, 2) {
				d1, err := burst(1)
				if err != nil {
					p.Close(ctx)
					return nil, err
				}
				dn, err := burst(n)
				if err != nil {
					p.Close(ctx)
					return nil, err
				}
				one, many = min(one, d1), min(many, dn)
			}
			out = append(out, Result{Scenario: "cpu", Profile: profile, Workers: n, Concurrency: n,
				OpsPerS: float64(n) / many.Seconds(), Speedup: float64(n) * one.Seconds() / many.Seconds()})
		}
		p.Close(ctx)
	}
	if e.has("baselines") {
		for _, kind := range []string{"interpreter", "process"} {
			for _, n := range counts {
				e.progress(fmt.Sprintf("cpu: %s pool executor, %d workers", kind, n))
				var r Result
				if err := e.baseline(&r, "cpu", kind, strconv.Itoa(n), strconv.Itoa(work)); err != nil {
					return nil, err
				}
				r.Scenario, r.Profile, r.Workers, r.Concurrency = "cpu", kind+"-pool-executor", n, n
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// payload: what crosses, and how fast, as a user sends it. For each
// profile: a 4-key dict through the typed Call (struct result) beside
// CallRaw with the same bytes pre-encoded; then []byte and float64 Array
// echoes of growing size through Call (decoded into a []byte / Array), and
// JSON-like records through CallRaw; beside each size, the copy floor: a Go
// allocate-and-copy of the same size, in the same run.
func (e *env) payload(ctx context.Context) ([]Result, error) {
	sizes := []int{1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20}
	if e.o.quick {
		sizes = []int{1 << 10, 1 << 20, 16 << 20}
	}
	var out []Result
	for _, size := range sizes {
		src := make([]byte, size)
		e.progress(fmt.Sprintf("payload: copy floor %d B", size))
		r, err := e.repeat(func() (Result, error) {
			return e.measure(1, func() error {
				dst := make([]byte, size)
				copy(dst, src)
				if size > 0 && dst[size-1] != src[size-1] {
					return errors.New("copy")
				}
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
		r.Scenario, r.Profile, r.Workers, r.Param = "payload", "go-copy", 0, "copy "+sizeName(size)
		r.MBPerS = r.OpsPerS * float64(size) / 1e6
		out = append(out, r)
	}
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		p, err := e.newPool(ctx, profile, 1)
		if err != nil {
			return nil, err
		}
		rs, err := e.payloadOn(ctx, p, profile, sizes)
		p.Close(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

func (e *env) payloadOn(ctx context.Context, p *pool.Pool, profile string, sizes []int) ([]Result, error) {
	var out []Result
	add := func(param string, bytes int, call func() error) error {
		e.progress(fmt.Sprintf("payload: %s, %s", profile, param))
		r, err := e.repeat(func() (Result, error) { return e.measure(1, call) })
		if err != nil {
			return fmt.Errorf("payload %s %s: %w", profile, param, err)
		}
		r.Scenario, r.Profile, r.Workers, r.Param = "payload", profile, 1, param
		if bytes > 0 {
			r.MBPerS = r.OpsPerS * float64(2*bytes) / 1e6 // there and back
		}
		out = append(out, r)
		return nil
	}
	// The typed path beside the raw one, with the same payload.
	type record struct {
		ID    int     `json:"id"`
		Name  string  `json:"name"`
		Score float64 `json:"score"`
		OK    bool    `json:"ok"`
	}
	dict := map[string]any{"id": 7, "name": "snake", "score": 1.5, "ok": true}
	raw := mustMarshal(map[string]any{"data": dict})
	if err := add("4-key dict, Call", 0, func() error {
		var res record
		return p.Call(ctx, "echo", map[string]any{"data": dict}, &res)
	}); err != nil {
		return nil, err
	}
	if err := add("4-key dict, CallRaw", 0, func() error { _, err := p.CallRaw(ctx, "echo", raw); return err }); err != nil {
		return nil, err
	}
	for _, size := range sizes {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i)
		}
		if err := add("bytes "+sizeName(size), size, func() error {
			var back []byte
			if err := p.Call(ctx, "echo", map[string]any{"data": data}, &back); err != nil {
				return err
			}
			if len(back) != size {
				return fmt.Errorf("echo: %d bytes back, want %d", len(back), size)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		floats := make([]float64, size/8)
		arr, err := pymarshal.NewArray(floats, len(floats)/8, 8)
		if err != nil {
			return nil, err
		}
		if err := add(fmt.Sprintf("array %dx8 f8 %s", len(floats)/8, sizeName(size)), size, func() error {
			var back pymarshal.Array
			if err := p.Call(ctx, "echo", map[string]any{"data": arr}, &back); err != nil {
				return err
			}
			if len(back.Data) != size {
				return fmt.Errorf("echo: %d array bytes back, want %d", len(back.Data), size)
			}
			return nil
		}); err != nil {
			return nil, err
		}
		if size <= 16<<20 {
			// A list of small records, about size bytes when marshalled.
			recs := make([]any, max(1, size/48))
			for i := range recs {
				recs[i] = map[string]any{"id": i, "name": "item", "score": 1.5}
			}
			args := mustMarshal(map[string]any{"data": recs})
			if err := add("json "+sizeName(size), len(args), func() error { _, err := p.CallRaw(ctx, "echo", args); return err }); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// startup: time to a ready pool of Workers, and memory per worker.
func (e *env) startup(ctx context.Context) ([]Result, error) {
	var out []Result
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		var best time.Duration = 1 << 62
		var rss int64
		for range max(e.o.reps, 1) {
			e.progress("startup: " + profile)
			before := selfRSS()
			t := time.Now()
			p, err := e.newPool(ctx, profile, e.o.workers)
			if err != nil {
				return nil, err
			}
			d := time.Since(t)
			if d < best {
				best = d
				if profile == "thread" {
					rss = (selfRSS() - before) / int64(e.o.workers)
				} else {
					rss = childrenRSS() / int64(e.o.workers)
				}
			}
			p.Close(ctx)
		}
		out = append(out, Result{Scenario: "startup", Profile: profile, Workers: e.o.workers, StartupNS: int64(best), RSSBytes: rss})
	}
	if e.has("process") {
		rs, err := e.startupForked(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// startupForked: the process pool's start-up with a fork server of its own
// (its template's start included) and with one the program started before
// (shared), and the time to recycle a worker with and without one.
func (e *env) startupForked(ctx context.Context) ([]Result, error) {
	fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{Module: "bench_adapter", ImportAdapter: true, Paths: []string{e.dir}, Python: e.exe})
	if err != nil {
		return nil, err
	}
	defer fs.Close(ctx)
	var out []Result
	for _, mode := range []string{"forkserver", "shared-forkserver"} {
		var best time.Duration = 1 << 62
		for range max(e.o.reps, 1) {
			e.progress("startup: process, " + mode)
			t := time.Now()
			p, err := e.newPoolWith(ctx, "process", e.o.workers, func(c *pool.Config) {
				c.ForkServer = &pool.ForkServerOptions{ImportAdapter: true}
				if mode == "shared-forkserver" {
					c.ForkServer.Server = fs
				}
			})
			if err != nil {
				return nil, err
			}
			best = min(best, time.Since(t))
			p.Close(ctx)
		}
		out = append(out, Result{Scenario: "startup", Profile: "process", Workers: e.o.workers, Param: mode, StartupNS: int64(best)})
	}
	// Recycling: a 1-worker pool whose worker leaves after each call; the
	// time from the call's return until the replacement is in service.
	for _, forked := range []bool{false, true} {
		param := "recycle"
		if forked {
			param = "recycle, forkserver"
		}
		e.progress("startup: process, " + param)
		p, err := e.newPoolWith(ctx, "process", 1, func(c *pool.Config) {
			c.MaxCalls = 1
			if forked {
				c.ForkServer = &pool.ForkServerOptions{ImportAdapter: true, Server: fs}
			}
		})
		if err != nil {
			return nil, err
		}
		n := 10
		var total time.Duration
		for range n {
			before := p.Stats().Recycled
			if _, err := p.CallRaw(ctx, "noop", noopArgs); err != nil {
				p.Close(ctx)
				return nil, err
			}
			t := time.Now()
			for p.Stats().Recycled == before || p.Stats().Idle == 0 {
				time.Sleep(100 * time.Microsecond)
			}
			total += time.Since(t)
		}
		p.Close(ctx)
		out = append(out, Result{Scenario: "startup", Profile: "process", Workers: 1, Param: param, StartupNS: int64(total) / int64(n)})
	}
	return out, nil
}

// stream: chunks per second from a generator.
func (e *env) stream(ctx context.Context) ([]Result, error) {
	n := 20000
	if e.o.quick {
		n = 2000
	}
	args := map[string]any{"n": n}
	var out []Result
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		e.progress("stream: " + profile)
		p, err := e.newPool(ctx, profile, 1)
		if err != nil {
			return nil, err
		}
		r, err := e.repeat(func() (Result, error) {
			t := time.Now()
			count := 0
			for _, err := range p.Stream(ctx, "chunks", args) {
				if err != nil {
					return Result{}, err
				}
				count++
			}
			return Result{OpsPerS: float64(count) / time.Since(t).Seconds()}, nil
		})
		p.Close(ctx)
		if err != nil {
			return nil, err
		}
		r.Scenario, r.Profile, r.Workers, r.Concurrency = "stream", profile, 1, 1
		out = append(out, r)
	}
	return out, nil
}

// io: an I/O-bound handler (await asyncio.sleep(0.1)) called by 100
// callers at once on one worker with 1, 10 and 100 slots: how long until
// all have their answer (P50 holds that time; ops/s is calls per second).
func (e *env) io(ctx context.Context) ([]Result, error) {
	const sleep = 0.1
	var out []Result
	for _, profile := range []string{"thread", "process"} {
		if !e.has(profile) {
			continue
		}
		for _, slots := range []int{1, 10, 100} {
			e.progress(fmt.Sprintf("io: %s, %d slots", profile, slots))
			p, err := e.newPoolWith(ctx, profile, 1, func(c *pool.Config) { c.WorkerConcurrency = slots })
			if err != nil {
				var ce *pool.ConfigError
				if errors.As(err, &ce) {
					fmt.Fprintf(os.Stderr, "io: %s profile skipped: %v\n", profile, err)
					break
				}
				return nil, err
			}
			callers := 100
			if slots == 1 && e.o.quick {
				callers = 10 // one at a time: a second for ten
			}
			args := mustMarshal(map[string]any{"s": sleep})
			if _, err := p.CallRaw(ctx, "sleep", args); err != nil { // warm: the event loop exists
				p.Close(ctx)
				return nil, err
			}
			errs := make(chan error, callers)
			t := time.Now()
			for range callers {
				go func() {
					_, err := p.CallRaw(ctx, "sleep", args)
					errs <- err
				}()
			}
			var first error
			for range callers {
				if err := <-errs; err != nil && first == nil {
					first = err
				}
			}
			d := time.Since(t)
			p.Close(ctx)
			if first != nil {
				return nil, first
			}
			out = append(out, Result{Scenario: "io", Profile: profile, Workers: 1, Concurrency: callers,
				Param: fmt.Sprintf("slots=%d", slots), OpsPerS: float64(callers) / d.Seconds(), P50: int64(d)})
		}
	}
	return out, nil
}

// pipeline: process-profile throughput of a no-op with 2 workers, one
// caller and 64, without pipelining and with a depth of 2, 4, 8 and 16
// (the calls a busy worker may hold besides the one it runs). Param names
// the depth; the speedup is over depth 0 at the same number of callers. The
// pools are started first and measured in turn, each repetition going
// through every depth, so a drift of the machine's speed during the run
// does not fall on one depth.
func (e *env) pipeline(ctx context.Context) ([]Result, error) {
	if !e.has("process") {
		return nil, nil
	}
	const workers = 2
	callers := []int{1, 64}
	depths := []int{0, 2, 4, 8, 16}
	pools := make([]*pool.Pool, 0, len(depths))
	defer func() {
		for _, p := range pools {
			p.Close(ctx)
		}
	}()
	for _, depth := range depths {
		p, err := e.newPoolWith(ctx, "process", workers, func(c *pool.Config) { c.PipelineDepth = depth })
		if err != nil {
			return nil, err
		}
		pools = append(pools, p)
	}
	runs := make(map[[2]int][]Result) // by depth and callers
	for rep := range e.o.reps {
		for i, depth := range depths {
			p := pools[i]
			for _, c := range callers {
				e.progress(fmt.Sprintf("pipeline: depth %d, %d callers (%d/%d)", depth, c, rep+1, e.o.reps))
				r, err := e.measure(c, func() error { _, err := p.CallRaw(ctx, "noop", noopArgs); return err })
				if err != nil {
					return nil, err
				}
				runs[[2]int{depth, c}] = append(runs[[2]int{depth, c}], r)
			}
		}
	}
	var out []Result
	base := map[int]float64{}
	for _, depth := range depths {
		for _, c := range callers {
			r := median(runs[[2]int{depth, c}])
			r.Scenario, r.Profile, r.Workers, r.Param = "pipeline", "process", workers, fmt.Sprintf("depth=%d", depth)
			if depth == 0 {
				base[c] = r.OpsPerS
			} else if base[c] > 0 {
				r.Speedup = r.OpsPerS / base[c]
			}
			out = append(out, r)
		}
	}
	return out, nil
}
