// Command bench measures snakepit's thread and process profiles side by
// side, and against what a Go program would otherwise use to run Python:
// Python's own concurrent.futures executors (InterpreterPoolExecutor and
// ProcessPoolExecutor, driven from Python), a long-lived child speaking JSON
// lines on stdin/stdout, and os/exec of the interpreter per call. Everything
// runs on the same interpreter (the hermetic CPython 3.14 by default).
//
//	go run ./bench                         # every scenario (a few minutes)
//	go run ./bench -quick                  # a smaller sweep (under a minute)
//	go run ./bench -quick -format json
//	go run ./bench -out bench/results      # what make bench runs
//
// It prints a table (or JSON lines) and, with -out DIR, writes
// results.md, results.json and SVG charts to DIR. Without -out it writes
// nothing, so a trial run never replaces the committed bench/results/.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/python/locate"
)

//go:embed bench_adapter.py
var adapterSrc []byte

//go:embed baselines.py
var baselinesSrc []byte

// Result is one measurement.
type Result struct {
	Scenario    string  `json:"scenario"`
	Profile     string  `json:"profile"`
	Workers     int     `json:"workers"`
	Concurrency int     `json:"concurrency"`
	Param       string  `json:"param,omitempty"` // payload size, kind...
	OpsPerS     float64 `json:"ops_per_s"`
	OpsSpread   float64 `json:"ops_spread,omitempty"` // (max-min)/median over repetitions
	P50         int64   `json:"p50_ns"`               // latency percentiles; 0 where not measured
	P90         int64   `json:"p90_ns,omitempty"`
	P99         int64   `json:"p99_ns"`
	P999        int64   `json:"p999_ns,omitempty"`
	RSSBytes    int64   `json:"rss_bytes,omitempty"`
	Speedup     float64 `json:"speedup,omitempty"`
	MBPerS      float64 `json:"mb_per_s,omitempty"`
	StartupNS   int64   `json:"startup_ns,omitempty"`
}

type options struct {
	scenarios []string
	profiles  []string
	workers   int
	duration  time.Duration
	reps      int
	quick     bool
	format    string
	out       string
	python    string // interpreter executable (process profile, baselines)
	libpython string // shared library (thread profile)
}

var allScenarios = []string{"latency", "throughput", "cpu", "payload", "startup", "stream", "io", "pipeline", "remote"}
var allProfiles = []string{"thread", "process", "baselines"}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fatalf("%v", err)
	}
	if err := run(o); err != nil {
		fatalf("%v", err)
	}
}

// parseFlags reads the command line. Results are written only where -out
// says: a run without it (a quick look, -quick) leaves the committed
// bench/results/ alone.
func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run: "+strings.Join(allScenarios, ","))
	prof := fs.String("profiles", strings.Join(allProfiles, ","), "profiles: thread,process,baselines")
	fs.IntVar(&o.workers, "workers", runtime.NumCPU(), "workers per pool (and the most for CPU scaling)")
	fs.DurationVar(&o.duration, "duration", time.Second, "measuring time per point")
	fs.IntVar(&o.reps, "reps", 3, "repetitions per point (the median is reported)")
	fs.BoolVar(&o.quick, "quick", false, "a smaller, faster sweep")
	fs.StringVar(&o.format, "format", "table", "output: table or json (one object per line)")
	fs.StringVar(&o.out, "out", "", "directory to write results.md, results.json and the charts to (make bench: bench/results); empty: write nothing")
	fs.StringVar(&o.python, "python", "", "Python executable (default: the hermetic CPython 3.14)")
	fs.StringVar(&o.libpython, "libpython", "", "libpython for the thread profile (default: the hermetic CPython 3.14)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q (flags only; see -help)", fs.Args())
	}
	o.scenarios = strings.Split(*scen, ",")
	o.profiles = strings.Split(*prof, ",")
	if o.quick {
		o.duration = min(o.duration, 300*time.Millisecond)
		o.reps = 1
	}
	if o.format != "table" && o.format != "json" {
		return options{}, errors.New("-format must be table or json")
	}
	return o, nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// env is what every scenario needs.
type env struct {
	o        options
	dir      string // adapter and baseline scripts
	exe      string
	version  string
	progress func(string)
}

func run(o options) error {
	py, err := dist.Default()
	if err != nil {
		return err
	}
	if o.python != "" {
		if py, err = locate.Query(o.python); err != nil {
			return err
		}
	}
	if o.libpython == "" {
		o.libpython = py.LibPython
	}
	dir, err := os.MkdirTemp("", "snakepit-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "bench_adapter.py"), adapterSrc, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "baselines.py"), baselinesSrc, 0o644); err != nil {
		return err
	}
	e := &env{o: o, dir: dir, exe: py.Executable, version: py.Version}
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	e.progress = func(s string) {
		if tty {
			fmt.Fprintf(os.Stderr, "\r\033[K%s", s)
		}
	}
	facts := machineFacts(py.Version, py.Executable)
	var results []Result
	emit := func(rs ...Result) {
		for _, r := range rs {
			results = append(results, r)
			if o.format == "json" {
				b, _ := json.Marshal(r)
				fmt.Println(string(b))
			}
		}
	}
	ctx := context.Background()
	for _, s := range o.scenarios {
		var rs []Result
		var err error
		switch s {
		case "latency":
			rs, err = e.latency(ctx)
		case "throughput":
			rs, err = e.throughput(ctx)
		case "cpu":
			rs, err = e.cpu(ctx)
		case "payload":
			rs, err = e.payload(ctx)
		case "startup":
			rs, err = e.startup(ctx)
		case "stream":
			rs, err = e.stream(ctx)
		case "io":
			rs, err = e.io(ctx)
		case "pipeline":
			rs, err = e.pipeline(ctx)
		case "remote":
			rs, err = e.remoteBench(ctx)
		default:
			return fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(allScenarios, ","))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		emit(rs...)
	}
	e.progress("")
	if o.format == "table" {
		fmt.Print(facts.String())
		fmt.Print(table(results))
	}
	if o.out != "" {
		if err := writeReport(o.out, facts, results); err != nil {
			return err
		}
		if o.format == "table" {
			fmt.Printf("\nwrote %s\n", o.out)
		}
	} else if o.format == "table" {
		fmt.Println("\nresults not written (-out DIR writes them)")
	}
	return nil
}

func (e *env) has(profile string) bool { return slices.Contains(e.o.profiles, profile) }

// newPool starts a pool of the profile on the benchmark adapter.
func (e *env) newPool(ctx context.Context, profile string, workers int) (*pool.Pool, error) {
	return e.newPoolWith(ctx, profile, workers, nil)
}

// newPoolWith is newPool with the config changed by edit (nil: as is).
func (e *env) newPoolWith(ctx context.Context, profile string, workers int, edit func(*pool.Config)) (*pool.Pool, error) {
	cfg := pool.Config{Name: profile, Module: "bench_adapter", Paths: []string{e.dir}, Size: workers, QueueSize: 4096}
	if edit != nil {
		edit(&cfg)
	}
	if profile == "process" {
		cfg.Profile = pool.Process
		cfg.Python = e.exe
	} else {
		cfg.LibPython = e.o.libpython
	}
	return pool.New(ctx, cfg)
}
