package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

// Profile selects the kind of worker a pool runs.
type Profile int

const (
	// Thread runs each worker as a CPython sub-interpreter in this process
	// (package gil): the fastest calls, own GIL per worker on Python 3.12+.
	Thread Profile = iota
	// Process runs each worker as a Python child process (package subproc):
	// full isolation, and extensions that refuse sub-interpreters (numpy).
	Process
	// Auto starts thread workers when it can and process workers when it
	// cannot: the decision is made once, by the pool's first worker start,
	// and every later worker (replacements, recycles) runs the profile it
	// decided (Stats.Effective, the poolprom metric
	// snakepit_pool_effective_profile). It falls back to the process
	// profile only when thread workers cannot start at all:
	//
	//   - the adapter (or a module it imports) refuses sub-interpreters:
	//     the start fails with an error matching
	//     worker.ErrNotSubinterpreterSafe (numpy on every version,
	//     single-phase-init extensions);
	//   - the thread runtime cannot be loaded while no libpython is named
	//     (Config.LibPython and SNAKEPIT_LIBPYTHON empty): the Python found
	//     has no shared libpython or is a free-threaded build, or no Python
	//     with a shared libpython was found.
	//
	// A module that loads in one interpreter per process only lets the
	// first thread worker start and refuses the next (numpy did on CPython
	// 3.11, which thread workers now refuse at once): such a refusal after thread workers were decided
	// switches the pool to process workers, once, from that start on (the
	// thread workers already running serve until they are recycled or die).
	//
	// Thread workers load Config.LibPython, else the libpython of the
	// Python package locate finds; process workers run Config.Python, else
	// SNAKEPIT_PYTHON when set (so a SNAKEPIT_PYTHON that does not work
	// fails the pool instead of starting another interpreter), else the
	// interpreter package locate finds. A Python that runs sub-interpreters
	// under one shared GIL (3.11) runs thread workers: they are correct,
	// only serial. Every other start-up error (a module that does not
	// exist, an adapter that raises on import or in setup(), a named
	// libpython that does not load, a start that times out) is returned as
	// it is, without a fallback. The first worker starts alone; the others
	// start after it, StartConcurrency at a time. The fallback is logged
	// once, at warning level, with the reason. PipelineDepth and ForkServer
	// are refused with Auto (they need Process); MaxMemory applies when the
	// process profile was chosen.
	Auto
)

func (p Profile) String() string {
	switch p {
	case Thread:
		return "thread"
	case Process:
		return "process"
	case Auto:
		return "auto"
	}
	return fmt.Sprintf("Profile(%d)", int(p))
}

// Config configures a pool. The zero value of each field is documented; New
// validates the whole Config at once, copies it and never modifies the
// caller's value.
type Config struct {
	// Name labels the pool in logs, errors and metrics. Zero: "default".
	Name string
	// Profile is the worker kind: Thread, Process or Auto (thread workers
	// when the adapter and the Python allow them, else process workers).
	// Zero: Thread.
	Profile Profile
	// Module is the adapter module (required unless NewWorker is set).
	Module string
	// Paths are added to the workers' sys.path (the adapter's directory).
	Paths []string
	// Python and LibPython choose the Python explicitly. Python is an
	// interpreter: the process profile runs it, the thread profile loads
	// its installation's libpython. A virtual environment's interpreter
	// (<venv>/bin/python) works in both: the process profile runs it, the
	// thread profile loads the base installation's library and starts it
	// as the environment's interpreter (sys.prefix, sys.executable, its
	// site-packages with their .pth files). LibPython is a libpython
	// shared library for the thread profile. Either may name the
	// directory of an environment or installation (a venv, a conda
	// environment, a python-build-standalone or uv CPython), meaning its
	// bin/python3. A Python without a shared library runs the process
	// profile only: the thread profile fails with an error matching
	// embed.ErrNoLibPython. Zero: the search of package locate — the
	// SNAKEPIT_LIBPYTHON/SNAKEPIT_PYTHON environment, then the hermetic
	// CPython 3.14 when the program imports python/dist, then python3 on
	// PATH.
	LibPython string
	Python    string
	// Env is extra environment for process-profile workers ("KEY=value").
	Env []string
	// BLASThreads bounds the threads of the native math libraries
	// (OpenBLAS, MKL, OpenMP, Accelerate, numexpr) in each process-profile
	// worker: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS,
	// VECLIB_MAXIMUM_THREADS and NUMEXPR_NUM_THREADS are set to it in the
	// worker, each unless the host's environment (whose value then passes
	// to the workers) or Env sets it. Left alone, each worker's numpy would
	// start a thread per core: Size workers would oversubscribe the machine
	// Size times over. Zero: 1. Negative: none is set. See
	// subproc.Config.BLASThreads. Thread-profile workers share the host
	// process's libraries, configured by its own environment.
	BLASThreads int
	// Host are the Go functions handlers may call (ctx.host in Python):
	//
	//	Host: []host.Func{host.New("lookup", func(ctx context.Context, a LookupArgs) (User, error) { ... })}
	//
	// Each function's ctx is the calling Python call's (deadline,
	// cancellation, correlation id). See package host. Names must be
	// unique Python identifiers. A NewWorker factory gets its own (see
	// gil.Config.Host, subproc.Config.Host).
	Host []host.Func

	// Size is the number of workers. Zero: runtime.GOMAXPROCS(0).
	Size int
	// WorkerConcurrency is how many calls (and open streams) one worker
	// runs at once: its slots. Zero or one: one at a time. Above one,
	// async def handlers (and async generators) run concurrently on the
	// worker's event loop, and plain def handlers run concurrently only
	// when the adapter declares itself thread-safe
	// (snakepit.configure(thread_safe=True), or @command(thread_safe=True));
	// otherwise they still run one at a time. The pool counts capacity in
	// slots: a worker is busy when all its slots are taken, and a call goes
	// to the worker running the fewest calls. A NewWorker factory's workers
	// must accept that many concurrent calls. At most MaxWorkerConcurrency.
	WorkerConcurrency int
	// PipelineDepth (process profile) lets the pool give a worker whose
	// slots are all taken up to this many more calls while every worker is
	// busy: they wait in the worker process, which starts each the moment
	// a slot frees, with no wake-up in between (under load, the worker never
	// idles between calls). A pipelined call whose context ends before it
	// starts never runs (only a cancel that reaches the worker less than
	// 50µs before the call starts may come too late); one waiting behind a
	// call that runs long moves to the first worker that frees up (it is
	// withdrawn before it starts, Stats.Moved). Streams and StrictFailFast
	// calls are never pipelined. Zero: none. At most MaxPipelineDepth.
	PipelineDepth int
	// QueueSize bounds the callers waiting for a worker; a call beyond it
	// fails at once with ErrSaturated. Zero: 16 × Size. Negative: no queue
	// (a call fails at once when every worker is busy).
	QueueSize int
	// RejectEarly fails a call at once with ErrSaturated when the estimated
	// wait for a worker (from recent call times) exceeds its remaining
	// deadline.
	RejectEarly bool
	// CallTimeout bounds calls whose context has no deadline. Zero: none.
	CallTimeout time.Duration

	// StartConcurrency bounds how many workers start at once. Zero: 4.
	StartConcurrency int
	// StartTimeout bounds one worker's start. Zero: 60 s.
	StartTimeout time.Duration

	// MaxLifetime recycles a worker after this long (each worker's limit is
	// jittered down by up to LifetimeJitter, so workers do not all recycle
	// at once). Zero: no limit.
	MaxLifetime time.Duration
	// LifetimeJitter is the fraction of MaxLifetime to jitter by, in [0, 1).
	// Zero: 0.1.
	LifetimeJitter float64
	// MaxCalls recycles a worker after this many calls. Zero: no limit.
	MaxCalls int64
	// MaxMemory recycles a worker whose memory exceeds it (process profile,
	// and Auto when it chose process workers: resident memory of its
	// process group). Zero: no limit.
	MaxMemory int64
	// MemoryCheckInterval is how often memory is sampled. Zero: 10 s.
	MemoryCheckInterval time.Duration

	// SessionIdleTimeout ends sessions unused for this long (their Python
	// state is dropped). Zero: 10 minutes.
	SessionIdleTimeout time.Duration

	// RestartBackoff is the first delay before replacing a worker that died
	// or failed to start; it doubles per consecutive failure up to
	// MaxRestartBackoff. Zero: 100 ms and 30 s.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// CrashLoopThreshold deaths within CrashLoopWindow mark the pool
	// degraded (see Health). Zero: 5 within 1 minute.
	CrashLoopThreshold int
	CrashLoopWindow    time.Duration

	// InterruptGrace and StopGrace are passed to the workers (see gil.Config
	// and subproc.Config). Zero: their defaults.
	InterruptGrace time.Duration
	StopGrace      time.Duration

	// SharedThreshold and MaxSharedMemory are passed to process-profile
	// workers (see subproc.Config): payloads of at least SharedThreshold
	// bytes (zero: 256 KiB; negative: none) travel through a memory region
	// the worker shares, grown on demand up to MaxSharedMemory (zero:
	// subproc's MaxFrame) and counted in MaxMemory; with Host functions,
	// host calls' large arguments and results go through a second one.
	SharedThreshold int
	MaxSharedMemory int

	// ForkServer, for the process profile, starts workers by forking them
	// from a template process instead of starting an interpreter for each
	// (see subproc.ForkServer): start and recycle take milliseconds, not
	// the tens of milliseconds of an interpreter start-up plus the
	// adapter's imports, and the pages of what the template imported are
	// shared between the workers. New starts the template before the
	// workers, every start and recycle uses it, a template that dies is
	// replaced at the next start, and Close stops it after the workers.
	// Each forked worker still has its own process group, lifeline,
	// registry entry and explicit environment (Env). MaxMemory still
	// compares each worker's resident memory, the pages it shares with
	// the template included.
	//
	// Forking is unsafe in a process that runs threads, so the template
	// refuses to serve when its imports started one (New then fails with
	// an error matching subproc.ErrForkUnsafe). Set
	// ForkServerOptions.ImportAdapter only when the adapter's imports are
	// fork-safe: they start no thread (torch and gRPC clients do, numpy
	// with a threaded BLAS does unless BLASThreads keeps it at one thread,
	// the default; Env can ask others not to) and open no connection or
	// file the workers
	// must not share. setup() runs in each worker, after the fork: open
	// connections and start threads there. Workers forked from one
	// template share its hash seed and whatever else the imports
	// initialised.
	//
	// Nil: off, each worker is a new interpreter. An error with the thread
	// profile or NewWorker.
	ForkServer *ForkServerOptions

	// Logger receives pool events and the workers' Python logs. Nil
	// discards them. A Python log record is logged with its call's
	// context: handlers that read the trace from the context (an
	// OpenTelemetry bridge) see the call's span; the record also carries
	// trace_id and span_id attributes when the call is traced.
	Logger *slog.Logger

	// TracerProvider, when set, gives every Call and Stream a span (an
	// OpenTelemetry client span named "<pool>/<command>", with the pool,
	// command, profile, worker, correlation id and outcome as attributes
	// and the wait for a worker as an event); the span's W3C traceparent
	// reaches Python as ctx.traceparent, and host functions the handler
	// calls run with the span in their ctx. Nil: no spans of the pool's
	// own, and a call made under a span of the caller's passes that span's
	// traceparent on.
	TracerProvider trace.TracerProvider

	// NewWorker, when set, replaces the profile: the pool starts its workers
	// with it. For tests (workertest.Fake) and custom worker kinds.
	NewWorker func(ctx context.Context, id string) (worker.Worker, error)
}

// ForkServerOptions configures a process-profile pool's fork server (see
// [Config.ForkServer]).
type ForkServerOptions struct {
	// ImportAdapter imports the adapter module in the template, so the
	// workers share its pages and skip its import. Only for adapters whose
	// imports start no thread and open nothing the workers must not share.
	// False: the template imports snakepit only; each worker imports the
	// adapter after the fork.
	ImportAdapter bool
	// Server is a fork server the program started (subproc.StartForkServer,
	// for this pool's Module) and owns: the pool forks its workers from it
	// instead of starting a template of its own, so that a new pool (or
	// several pools, or a pool started again) skips the template's start
	// too. The pool neither replaces it when it dies (starts then fail with
	// subproc.ErrForkServerDead) nor stops it. ImportAdapter is then the
	// server's. Nil: the pool starts and owns its own.
	Server *subproc.ForkServer
}

// withDefaults validates c and returns a copy with defaults filled in; it
// reports every problem at once.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.Module == "" && c.NewWorker == nil {
		errs = append(errs, errors.New("Module is required"))
	}
	if c.Profile != Thread && c.Profile != Process && c.Profile != Auto {
		errs = append(errs, fmt.Errorf("unknown Profile %d", int(c.Profile)))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"CallTimeout", c.CallTimeout}, {"StartTimeout", c.StartTimeout}, {"MaxLifetime", c.MaxLifetime},
		{"MemoryCheckInterval", c.MemoryCheckInterval}, {"SessionIdleTimeout", c.SessionIdleTimeout},
		{"RestartBackoff", c.RestartBackoff}, {"MaxRestartBackoff", c.MaxRestartBackoff},
		{"CrashLoopWindow", c.CrashLoopWindow}, {"InterruptGrace", c.InterruptGrace}, {"StopGrace", c.StopGrace},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", f.name))
		}
	}
	if c.Size < 0 {
		errs = append(errs, errors.New("Size must not be negative"))
	}
	if c.WorkerConcurrency < 0 || c.WorkerConcurrency > MaxWorkerConcurrency {
		errs = append(errs, fmt.Errorf("WorkerConcurrency must be in [0, %d]", MaxWorkerConcurrency))
	}
	if c.PipelineDepth < 0 || c.PipelineDepth > MaxPipelineDepth {
		errs = append(errs, fmt.Errorf("PipelineDepth must be in [0, %d]", MaxPipelineDepth))
	}
	if c.PipelineDepth > 0 && c.NewWorker == nil && c.Profile == Auto {
		errs = append(errs, errors.New("PipelineDepth needs the process profile (Auto may choose thread workers, which have no queue of their own to fill)"))
	} else if c.PipelineDepth > 0 && c.NewWorker == nil && c.Profile != Process {
		errs = append(errs, errors.New("PipelineDepth needs the process profile (a thread-profile worker has no queue of its own to fill)"))
	}
	if c.StartConcurrency < 0 {
		errs = append(errs, errors.New("StartConcurrency must not be negative"))
	}
	if c.MaxSharedMemory < 0 {
		errs = append(errs, errors.New("MaxSharedMemory must not be negative"))
	}
	if c.MaxCalls < 0 || c.MaxMemory < 0 || c.CrashLoopThreshold < 0 {
		errs = append(errs, errors.New("MaxCalls, MaxMemory and CrashLoopThreshold must not be negative"))
	}
	if c.LifetimeJitter < 0 || c.LifetimeJitter >= 1 {
		errs = append(errs, errors.New("LifetimeJitter must be in [0, 1)"))
	}
	if c.MaxMemory > 0 && c.Profile == Thread && c.NewWorker == nil {
		errs = append(errs, errors.New("MaxMemory needs the process profile (a thread-profile worker's memory cannot be told apart)"))
	}
	if c.ForkServer != nil && c.NewWorker != nil {
		errs = append(errs, errors.New("ForkServer cannot be used with NewWorker"))
	} else if c.ForkServer != nil && c.Profile == Auto {
		errs = append(errs, errors.New("ForkServer needs the process profile (Auto may choose thread workers)"))
	} else if c.ForkServer != nil && c.Profile != Process {
		errs = append(errs, errors.New("ForkServer needs the process profile"))
	} else if c.ForkServer != nil && c.ForkServer.Server != nil {
		if m, _ := c.ForkServer.Server.Module(); m != c.Module {
			errs = append(errs, fmt.Errorf("ForkServer.Server was started for module %q, not %q", m, c.Module))
		}
	}
	if len(errs) > 0 {
		return c, &ConfigError{Errs: errs}
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.Size == 0 {
		c.Size = runtime.GOMAXPROCS(0)
	}
	if c.WorkerConcurrency == 0 {
		c.WorkerConcurrency = 1
	}
	if c.QueueSize == 0 {
		c.QueueSize = 16 * c.Size
	} else if c.QueueSize < 0 {
		c.QueueSize = 0
	}
	if c.StartConcurrency == 0 {
		c.StartConcurrency = 4
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	if c.LifetimeJitter == 0 {
		c.LifetimeJitter = 0.1
	}
	if c.MemoryCheckInterval == 0 {
		c.MemoryCheckInterval = 10 * time.Second
	}
	if c.SessionIdleTimeout == 0 {
		c.SessionIdleTimeout = 10 * time.Minute
	}
	if c.RestartBackoff == 0 {
		c.RestartBackoff = 100 * time.Millisecond
	}
	if c.MaxRestartBackoff == 0 {
		c.MaxRestartBackoff = 30 * time.Second
	}
	if c.CrashLoopThreshold == 0 {
		c.CrashLoopThreshold = 5
	}
	if c.CrashLoopWindow == 0 {
		c.CrashLoopWindow = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Paths = append([]string(nil), c.Paths...)
	c.Env = append([]string(nil), c.Env...)
	if c.ForkServer != nil {
		fs := *c.ForkServer
		c.ForkServer = &fs
	}
	return c, nil
}

// MaxWorkerConcurrency bounds Config.WorkerConcurrency.
const MaxWorkerConcurrency = 1024

// MaxPipelineDepth bounds Config.PipelineDepth.
const MaxPipelineDepth = 16

// ConfigError lists every problem New found in a Config.
type ConfigError struct {
	Errs []error
}

func (e *ConfigError) Error() string {
	msg := "pool: invalid config:"
	for _, err := range e.Errs {
		msg += " " + err.Error() + ";"
	}
	return msg[:len(msg)-1]
}

func (e *ConfigError) Unwrap() []error { return e.Errs }
