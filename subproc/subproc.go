// Package subproc is the process profile: each worker is a Python child
// process in its own process group, talking to the host over an inherited
// socketpair. A segfault, a leak or an extension that refuses
// sub-interpreters (numpy, torch) only costs a worker. It implements
// [worker.Worker] and runs the same adapter and dispatcher as the thread
// profile.
//
// # Process model
//
//   - The child is started from a dedicated, permanently locked OS thread
//     with Setpgid (its own process group) and a parent-death signal
//     (SIGTERM, on which the child kills its group).
//   - fd 3 is the child's end of a socketpair(AF_UNIX, SOCK_STREAM); fd 4
//     is the read end of a pipe whose write end only the host holds: when
//     the host dies, even by SIGKILL, the child reads end of file and kills
//     its own process group. No TCP port, no socket path.
//   - The child announces itself with a versioned HELLO once the adapter is
//     imported and setup() ran; the host then checks it with a PING/PONG
//     before the worker is ready. stdout and stderr are plain logs,
//     forwarded line by line to the logger; the last few KiB of stderr go
//     into error reports.
//   - Frames are length-prefixed, typed, carry a request id and are capped
//     in size ([Config.MaxFrame]); a peer that sends garbage, an oversized
//     or a truncated frame is killed, never trusted.
//   - Payloads of at least [Config.SharedThreshold] bytes (256 KiB by
//     default), requests and replies alike, travel through a memory region
//     both sides map instead of through the socket: a memfd per worker,
//     inherited as fd 5 and sealed against shrinking before anything maps
//     it, grown on demand up to [Config.MaxSharedMemory] and counted in
//     [Worker.MemoryBytes]. The frame then carries the payload's
//     generation, offset and length, which the host checks against its
//     own mapping ([ErrBadRegion] otherwise: the worker is killed). The
//     child cannot shrink the region under the host's mapping, and the
//     host copies a reply out before the call returns: nothing handed to a
//     caller points into the region, which is unmapped on Close. A call's
//     [worker.Request.Buffers] are laid out in the region and reach the
//     handler as read-only views of it, not copies; the reply is written
//     after the request.
//   - A handler calls Go ([Config.Host], ctx.host in Python) with a
//     HOST_CALL frame naming the call it belongs to; the host answers with
//     a HOST_REPLY while the call is in flight. The Go function runs with
//     the call's context (the stream's, for a stream; with the correlation
//     id), which is done once the call ends — replied, or abandoned at its
//     deadline — so a handler interrupted at its deadline also cancels the
//     Go work it waits for. Several host calls of one call (threads, async
//     tasks) run at once. In the child, whichever thread waits for a frame
//     reads the socket, one at a time, and hands on what is not its own;
//     SIGUSR1 never leaves a frame half read or half sent. ctx.host used
//     once its call has ended raises snakepit.HostError (kind "ended")
//     without reaching the host. Host call payloads of at least
//     [Config.SharedThreshold] bytes go through a region of their own, the
//     host-call region (the child allocates it, in every mode; see
//     hostcall.go), never the request region; [Config.MaxFrame] caps them
//     either way.
//   - A call whose context ends (deadline or cancel) returns at once, even
//     from a request write blocked on a child that stopped reading; the
//     child gets SIGUSR1, which raises snakepit.Cancelled in the handler
//     (unless it has seen ctx.cancelled() return true: it stops by itself),
//     and the reply is read in the background — a frame begun before the
//     deadline is continued where it stopped, never parsed from its middle.
//     The next call waits for that. A handler that does not stop within
//     [Config.InterruptGrace] has its process group killed and the worker
//     reports itself dead; so does a request frame that was only partly
//     written (it cannot be taken back). Every deadline outcome matches
//     [context.DeadlineExceeded].
//   - Close sends SHUTDOWN (teardown() runs), then SIGTERM to the group,
//     then SIGKILL to the group after [Config.StopGrace], or at once when
//     its context ends; grandchildren in the group die too.
//   - Signals never reach a reaped pid: the reaper learns of the exit
//     without reaping (waitid WNOWAIT), kills the rest of the group while
//     the group id is still pinned by the zombie leader, and only then
//     reaps; SIGUSR1 goes through a pidfd (pidfd_open, Linux 5.3+; on
//     older kernels by pid, under the same lock that orders it before the
//     reap).
//   - Containment has limits: a descendant that leaves the process group
//     (setsid, setpgid) is not killed by the host's group kills. The Python
//     child is the subreaper of its descendants and kills those still
//     attached when it exits, but a process that escapes both (double fork
//     and setsid while the child lives on, or after the child is SIGKILLed)
//     survives the worker. Close does not wait for it: it closes its end of
//     the stdout and stderr pipes such a process may hold after a short
//     drain. Run workers in a container or a cgroup of their own where this
//     matters.
//   - A [Registry] records each group with its start time and a random run
//     token placed in the child's environment, so a later host can kill what
//     a host that died left behind, and never a reused pid.
//   - With [Config.ForkServer] the child is forked from a template process
//     ([StartForkServer]) that has imported snakepit (and the adapter, if
//     its imports are fork-safe) instead of starting an interpreter: it
//     starts in milliseconds and shares the template's pages. It gets the
//     same descriptors, its own session and process group, its explicit
//     environment and a registry entry; the host learns of its exit through
//     a pidfd, and the template reaps it when the host says so.
package subproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/internal/callslot"
	"github.com/snakepit-go/snakepit/internal/wstream"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/worker"
)

// Defaults for zero Config durations.
const (
	DefaultInterruptGrace = 2 * time.Second
	DefaultStopGrace      = 5 * time.Second
	DefaultStartTimeout   = 60 * time.Second
	DefaultSpin           = 50 * time.Microsecond
)

// Config configures one process-profile worker.
type Config struct {
	// Module is the adapter module to import (required).
	Module string
	// Host holds the Go functions handlers may call (ctx.host in Python;
	// see package host), e.g. a *host.Set. Nil: none. A function runs with
	// the context of the call (or stream) whose handler called it, done
	// once the call ends; it should return when that context is done
	// (Close waits for running functions until its own context ends). A
	// host call made between two items of a stream (by a thread its
	// generator started) is served when the next item, or the stream's
	// close, is asked for.
	Host worker.Host
	// Paths are put on the child's PYTHONPATH (after the snakepit package),
	// e.g. the directory holding the adapter.
	Paths []string
	// Python is the interpreter to run, as named (a virtual environment's
	// bin/python runs with the environment's packages), or the directory
	// of an environment or installation, meaning its bin/python3. It needs
	// no shared libpython. Zero value: SNAKEPIT_PYTHON when set (run as
	// named; one that does not work fails the start, never replaced by
	// another Python), else the executable found by package locate (the
	// hermetic CPython if the program imports python/dist, python3 on PATH).
	Python string
	// Command, when set, replaces the interpreter invocation: the child runs
	// Command followed by "-P -m snakepit._process <module> <flags>". Use it to
	// wrap the interpreter ("nice", "-n", "10", "python3").
	Command []string
	// Env is extra environment for the child ("KEY=value"). The child does
	// not inherit the host's environment: it gets PATH, HOME, USER, LANG,
	// LC_*, TZ and TMPDIR from the host, PYTHONPATH, PYTHONUNBUFFERED=1,
	// the run token, the thread counts of BLASThreads, then Env.
	Env []string
	// BLASThreads is how many threads the native math libraries a worker
	// loads (OpenBLAS, MKL, OpenMP, Accelerate, numexpr: numpy, scipy,
	// torch...) may each start: the child gets the variables of
	// BLASThreadVars set to it, each one unless the user set it, in the
	// host's environment (whose value then passes to the child) or in
	// Env. Left alone, these libraries start a thread per core in every
	// worker, so N workers oversubscribe the machine N times over. Zero:
	// 1. Negative: none is set (the host's values still pass).
	BLASThreads int
	// ID names the worker in logs and errors. Zero value: "proc-<pid>".
	ID string
	// Logger receives the adapter's log records and the child's stdout and
	// stderr lines. Nil discards them.
	Logger *slog.Logger
	// InterruptGrace is how long an interrupted handler may take to stop
	// before the worker's process group is killed. Closing a stream early
	// waits as long for the generator's cleanup before interrupting it,
	// then as long again. Zero: 2 s.
	InterruptGrace time.Duration
	// StopGrace is how long Close waits after SHUTDOWN, and again after
	// SIGTERM, before escalating. Zero: 5 s.
	StopGrace time.Duration
	// StartTimeout bounds start-up when the context has no deadline. Zero:
	// 60 s.
	StartTimeout time.Duration
	// MaxFrame caps a frame's payload in both directions. Zero: DefaultMaxFrame (128 MiB).
	MaxFrame int
	// Spin is how long the child polls for the next request after a reply
	// before it sleeps: back-to-back calls then skip the wake-up of a
	// sleeping process, at the cost of that much CPU after each call. Zero:
	// DefaultSpin; negative: never spin.
	Spin time.Duration
	// Registry records the worker for orphan cleanup. Nil: DefaultRegistry().
	Registry *Registry
	// SharedThreshold is the payload size (request or reply) from which a
	// frame's payload travels through a memory region the host and the
	// child both map, instead of through the socket: written once by the
	// sender, read (and copied out) once by the receiver. Zero:
	// DefaultSharedThreshold (256 KiB); negative: never (no region is
	// created). A worker with Host functions has a second region for host
	// calls, used in every mode (the request region only in the one-call
	// mode): their arguments and results of at least this size go through
	// it, several host calls at once each in a span of its own.
	SharedThreshold int
	// MaxSharedMemory caps each shared region; they grow on demand up to
	// this size and are counted in [Worker.MemoryBytes]. A payload that
	// does not fit goes through the socket. Zero: MaxFrame.
	MaxSharedMemory int
	// Concurrency is how many calls (and open streams) the worker runs at
	// once, up to MaxConcurrency. Zero: 1, one at a time. With more, the
	// child runs each request on one of Concurrency handler threads:
	// async handlers run concurrently on its event loop, plain handlers
	// one at a time unless the adapter or the command is thread-safe
	// (snakepit.configure(thread_safe=True), @command(thread_safe=True)).
	// A call whose context ends is cancelled alone (an async handler's
	// task is cancelled; a plain handler gets snakepit.Cancelled at its
	// next bytecode, not inside a blocking C call, unless it has seen
	// ctx.cancelled() return true); a crash fails every
	// call in flight with an error matching [worker.ErrWorkerDead]. The
	// shared region is not used (SharedThreshold is ignored), nor is Spin.
	// With one caller at a time the one-call mode is faster: each request
	// is handed from the child's reading thread to a handler thread.
	Concurrency int
	// PipelineDepth is how many requests beyond Concurrency may be sent
	// to the child, which queues them and starts each when a handler
	// thread frees up (the child then reads the next request while a call
	// runs). A queued request whose context ends, or that [Worker.Withdraw]
	// takes back, never runs. Zero: none; at most MaxConcurrency. With
	// Concurrency above 1, any value above zero uses the concurrent mode
	// (see Concurrency). With Concurrency 1 the worker uses the sequential
	// pipelined mode: the child runs requests one at a time on its main
	// thread, in the order they were sent, reading each pipelined request
	// without sleeping and without a hand-off between threads; replies come
	// back in request order. A request whose context ends while it runs is
	// interrupted as in the one-call mode (SIGUSR1, then InterruptGrace,
	// then the process group is killed); one still queued is removed before
	// it starts. A stream holds every slot while it is open. The shared
	// region is not used (SharedThreshold is ignored). Withdraw gets its
	// answer when the child is about to start its next request.
	PipelineDepth int
	// ForkServer, when set, starts the worker by forking it from that
	// template process instead of starting an interpreter (see
	// [StartForkServer]): the start costs milliseconds and the pages of
	// what the template imported are shared. The worker still gets its
	// own process group, lifeline, registry entry (in the fork server's
	// Registry, which replaces Registry) and explicit environment (Env
	// and the rest as above; the template's own is dropped). Python is
	// ignored (the template's interpreter runs the worker) and Command
	// must be empty. A fork server that has died makes Start fail with an
	// error matching [ErrForkServerDead]. Nil: the worker is a new
	// interpreter.
	ForkServer *ForkServer
}

// MaxConcurrency bounds Config.Concurrency and Config.PipelineDepth.
const MaxConcurrency = 1024

// ErrBadConfig: a Config field is out of range (see ConfigError).
var ErrBadConfig = errors.New("subproc: bad configuration")

// ConfigError names a Config field that is out of range. It matches
// [ErrBadConfig].
type ConfigError struct {
	Field string
	Value int
	Want  string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("subproc: Config.%s is %d, want %s", e.Field, e.Value, e.Want)
}

func (e *ConfigError) Unwrap() error { return ErrBadConfig }

// checkConcurrency validates and defaults Concurrency and PipelineDepth.
func (cfg *Config) checkConcurrency() error {
	if cfg.Concurrency < 0 || cfg.Concurrency > MaxConcurrency {
		return &ConfigError{Field: "Concurrency", Value: cfg.Concurrency, Want: fmt.Sprintf("0 to %d", MaxConcurrency)}
	}
	if cfg.PipelineDepth < 0 || cfg.PipelineDepth > MaxConcurrency {
		return &ConfigError{Field: "PipelineDepth", Value: cfg.PipelineDepth, Want: fmt.Sprintf("0 to %d", MaxConcurrency)}
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.concurrent() {
		cfg.SharedThreshold = -1 // requests overlap: no region
	}
	return nil
}

// concurrent reports whether the worker uses the concurrent mode (or its
// sequential variant).
func (cfg *Config) concurrent() bool { return cfg.Concurrency > 1 || cfg.PipelineDepth > 0 }

// sequential reports whether the worker uses the sequential pipelined
// mode: one call at a time, with requests queued behind it in the child.
func (cfg *Config) sequential() bool { return cfg.Concurrency <= 1 && cfg.PipelineDepth > 0 }

// ExitError reports a worker process that ended. It matches
// [worker.ErrWorkerDead].
type ExitError struct {
	PID   int
	State *os.ProcessState // nil if the process could not be reaped, or was forked (see Status)
	// Status says how a worker forked by a fork server ended ("exit status
	// 3", "signal: killed"), as its template reaped it; "" where State is
	// set or the template could not tell.
	Status string
	Stderr string // the last lines of its stderr
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("subproc: worker process %d ", e.PID)
	switch {
	case e.State != nil:
		msg += "exited: " + e.State.String()
	case e.Status != "":
		msg += "exited: " + e.Status
	default:
		msg += "is gone"
	}
	if e.Stderr != "" {
		msg += "; stderr: " + e.Stderr
	}
	return msg
}

func (e *ExitError) Unwrap() error { return worker.ErrWorkerDead }

// ProtocolError reports a child that broke the protocol. It matches
// [worker.ErrWorkerDead]: the child is killed.
type ProtocolError struct {
	PID    int
	Err    error
	Stderr string
}

func (e *ProtocolError) Error() string {
	msg := fmt.Sprintf("subproc: worker process %d broke the protocol: %v", e.PID, e.Err)
	if e.Stderr != "" {
		msg += "; stderr: " + e.Stderr
	}
	return msg
}

func (e *ProtocolError) Unwrap() []error { return []error{worker.ErrWorkerDead, e.Err} }

// Worker is a process-profile worker. It implements [worker.Worker],
// [worker.SessionEnder] and [worker.MemoryReporter].
type Worker struct {
	id       string
	cfg      Config
	log      *slog.Logger
	cmd      *exec.Cmd
	pid      int
	conn     *net.UnixConn
	lifeline *os.File // write end; closing it tells the child the host is gone
	rd       *frameReader
	shm      *region // the shared region; nil when Config.SharedThreshold is negative
	shmPeer  bool    // the child announced it reads and writes the shared region
	// hshm is the host-call region (see hostcall.go); nil when the worker
	// has no host functions or Config.SharedThreshold is negative.
	hshm          *region
	hshmPeer      bool // the child announced it uses the host-call region
	hostThreshold int  // a host call's payload from this size uses hshm; 0: never
	reg           *Registry
	fork          *ForkServer // the template that forked the process; nil for an exec'd one
	stderr        *tail
	outputs       sync.WaitGroup // stdout/stderr forwarders
	outR          *os.File       // read end of the child's stdout, closed by the forwarder or Close
	errR          *os.File       // read end of the child's stderr, closed by the forwarder or Close
	errDone       chan struct{}  // closed when the stderr forwarder has read everything

	// sigMu guards reaped and pidfd: a signal is sent with it read-held,
	// and the reaper sets reaped (and closes the pidfd) with it held before
	// it reaps, so no signal can reach a pid the kernel has handed on.
	sigMu  sync.RWMutex
	reaped bool
	pidfd  int // -1 where pidfd_open is unavailable (Linux < 5.3)

	slot       callslot.Slot                  // a token held while a request is outstanding (or a stream open); Concurrency+PipelineDepth of them
	openStream atomic.Pointer[wstream.Stream] // the open stream, closed by Close
	mux        *muxState                      // the concurrent mode's reader and calls in flight; nil in the one-call mode
	streamsMu  sync.Mutex                     // guards streams
	streams    map[*wstream.Stream]struct{}   // the open streams of the concurrent mode, closed by Close
	nextID     atomic.Uint64
	// wlock is held (a token in it) while a frame is written: requests and
	// the replies of host calls share the connection. A channel, so that a
	// request can stop waiting for it when its context ends.
	wlock chan struct{}
	wbuf  []byte // guarded by wlock: where writeFrame lays out a small frame
	// streamGate is held while a stream takes every token of the slot
	// (the sequential pipelined mode).
	streamGate chan struct{}
	hosts      hostCalls // host calls (ctx.host in Python) in flight

	exited    chan struct{} // closed when the process was reaped
	exitState *os.ProcessState

	closing    atomic.Bool   // Close has started: the process exiting is expected
	done       chan struct{} // closed when the worker stopped
	stopCtx    context.Context
	stopCancel context.CancelFunc // called when done is closed
	stopOnce   sync.Once
	mu         sync.Mutex // guards err
	err        error
	closeOnce  sync.Once
	closeErr   error
	bg         sync.WaitGroup // abandon goroutines
}

var (
	_ worker.Worker         = (*Worker)(nil)
	_ worker.SessionEnder   = (*Worker)(nil)
	_ worker.MemoryReporter = (*Worker)(nil)
)

// Start spawns the worker process and returns once it is ready: adapter
// imported, setup() run, HELLO received and PING answered. A failure is an
// error matching [worker.ErrSetup] carrying the child's stderr tail, and
// leaves no process behind.
func Start(ctx context.Context, cfg Config) (*Worker, error) {
	if cfg.Module == "" {
		return nil, errors.New("subproc: Config.Module is required")
	}
	if cfg.InterruptGrace < 0 || cfg.StopGrace < 0 || cfg.StartTimeout < 0 || cfg.MaxFrame < 0 || cfg.MaxSharedMemory < 0 {
		return nil, errors.New("subproc: Config durations, MaxFrame and MaxSharedMemory must not be negative")
	}
	// Host calls use a region of their own in every mode (see
	// hostcall.go), so their threshold is read before the concurrent
	// modes turn the request region off.
	hostThreshold := cfg.SharedThreshold
	if err := cfg.checkConcurrency(); err != nil {
		return nil, err
	}
	if cfg.ForkServer != nil && len(cfg.Command) > 0 {
		return nil, errors.New("subproc: Config.Command cannot be used with Config.ForkServer (the fork server's interpreter runs the worker)")
	}
	if ctx.Err() != nil {
		// Ended already: start nothing.
		return nil, &worker.SetupError{WorkerID: cfg.ID, Stage: "start", Err: context.Cause(ctx)}
	}
	if cfg.InterruptGrace == 0 {
		cfg.InterruptGrace = DefaultInterruptGrace
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.MaxFrame == 0 {
		cfg.MaxFrame = DefaultMaxFrame
	}
	if cfg.SharedThreshold == 0 {
		cfg.SharedThreshold = DefaultSharedThreshold
	}
	if cfg.MaxSharedMemory == 0 {
		cfg.MaxSharedMemory = cfg.MaxFrame
	}
	switch {
	case cfg.Host == nil || hostThreshold < 0:
		hostThreshold = 0 // no host-call region
	case hostThreshold == 0:
		hostThreshold = DefaultSharedThreshold
	}
	if cfg.Spin == 0 {
		cfg.Spin = DefaultSpin
	} else if cfg.Spin < 0 {
		cfg.Spin = 0
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	setupErr := func(stage string, err error) error {
		return &worker.SetupError{WorkerID: cfg.ID, Stage: stage, Err: err}
	}
	// -P (Python 3.11+): the host's working directory is not put in front
	// of sys.path, so a stray argparse.py or json.py there is never
	// imported. PYTHONPATH (the snakepit package and Config.Paths) keeps
	// working, unlike with -I, and programs the worker runs are unaffected,
	// unlike with PYTHONSAFEPATH in the environment.
	var argv []string
	if cfg.ForkServer != nil {
		// The template's interpreter runs the worker: only its arguments
		// travel.
		argv = workerArgs(cfg, log, hostThreshold)
	} else {
		prefix, err := interpreter(cfg)
		if err != nil {
			return nil, setupErr("start", err)
		}
		argv = append(append(prefix, "-P", "-m", "snakepit._process"), workerArgs(cfg, log, hostThreshold)...)
	}
	reg := cfg.Registry
	if cfg.ForkServer != nil {
		// The forked process's /proc environ is the template's, which
		// carries the fork server's run token: its registry must record it.
		reg = cfg.ForkServer.proc.reg
	}
	var err error
	if reg == nil {
		if reg, err = DefaultRegistry(); err != nil {
			return nil, setupErr("start", err)
		}
	}
	pkg, err := python.Path()
	if err != nil {
		return nil, setupErr("start", err)
	}
	w := &Worker{
		cfg:        cfg,
		log:        log,
		reg:        reg,
		stderr:     newTail(8 << 10),
		errDone:    make(chan struct{}),
		slot:       make(chan struct{}, cfg.Concurrency+cfg.PipelineDepth),
		exited:     make(chan struct{}),
		done:       make(chan struct{}),
		wlock:      make(chan struct{}, 1),
		streamGate: make(chan struct{}, 1),
		pidfd:      -1,
		mux:        newMuxState(&cfg),

		hostThreshold: hostThreshold,
	}
	w.stopCtx, w.stopCancel = context.WithCancel(context.Background())
	if err := w.spawn(ctx, argv, pkg, unix.SOCK_STREAM); err != nil {
		return nil, setupErr("start", err)
	}
	if err := w.handshake(ctx); err != nil {
		w.kill()
		<-w.exited
		w.stop()
		w.release()
		w.drainOutputs(context.Background())
		w.reg.remove(w.pid)
		var se *worker.SetupError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, setupErr("start", err)
	}
	return w, nil
}

// Interpreter returns the interpreter a worker with Config.Python python
// runs (see Config.Python): python itself, an environment directory's
// bin/python3, SNAKEPIT_PYTHON, or the one package locate finds. For
// tools that report the setup; Start resolves it itself.
func Interpreter(python string) (string, error) {
	cmd, err := interpreter(Config{Python: python})
	if err != nil {
		return "", err
	}
	return cmd[0], nil
}

// interpreter returns the command that runs Python: Config.Command, or the
// interpreter Config.Python names or package locate finds.
func interpreter(cfg Config) ([]string, error) {
	if len(cfg.Command) > 0 {
		return append([]string(nil), cfg.Command...), nil
	}
	exe := cfg.Python
	if exe == "" {
		// An interpreter the environment names is the one to run, even
		// when package locate cannot use it (it has no shared libpython,
		// which the process profile does not need): never another one.
		exe = os.Getenv(locate.EnvPython)
	}
	if exe == "" {
		py, err := locate.Find(locate.Options{})
		if err != nil {
			// The process profile needs no libpython: any python3 will do.
			var lookErr error
			if exe, lookErr = exec.LookPath("python3"); lookErr != nil {
				return nil, err
			}
		} else {
			exe = py.Executable
		}
	}
	if exe == "" {
		return nil, errors.New("no Python executable found: set Config.Python or " + locate.EnvPython)
	}
	exe, err := locate.Interpreter(exe)
	if err != nil {
		return nil, err
	}
	return []string{exe}, nil
}

// workerArgs are the arguments of the worker's main loop, after
// "-m snakepit._process".
func workerArgs(cfg Config, log *slog.Logger, hostThreshold int) []string {
	args := []string{cfg.Module,
		"--worker-id", cfg.ID, "--log-level", strconv.Itoa(python.PythonLevel(log)),
		"--max-frame", strconv.Itoa(cfg.MaxFrame), "--spin-us", strconv.Itoa(int(cfg.Spin / time.Microsecond))}
	if cfg.concurrent() {
		args = append(args, "--concurrency", strconv.Itoa(cfg.Concurrency), "--queue", strconv.Itoa(cfg.PipelineDepth))
	}
	if cfg.SharedThreshold > 0 {
		args = append(args, "--shm-fd", strconv.Itoa(shmFD),
			"--shm-threshold", strconv.Itoa(cfg.SharedThreshold), "--shm-max", strconv.Itoa(cfg.MaxSharedMemory))
	}
	if hostThreshold > 0 {
		args = append(args, "--host-shm-fd", strconv.Itoa(hostShmFD(cfg)),
			"--host-shm-threshold", strconv.Itoa(hostThreshold), "--host-shm-max", strconv.Itoa(cfg.MaxSharedMemory))
	}
	return args
}

// BLASThreadVars are the environment variables that bound the threads of
// native math libraries: OpenBLAS, OpenMP (and the libraries built on it),
// Intel MKL, Apple Accelerate and numexpr. See [Config.BLASThreads].
var BLASThreadVars = []string{"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"}

// childEnv is the explicit environment of a worker process.
func childEnv(cfg Config, pkg, token string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "PATH", k == "HOME", k == "USER", k == "LOGNAME", k == "LANG", k == "TZ", k == "TMPDIR",
			strings.HasPrefix(k, "LC_"), slices.Contains(BLASThreadVars, k):
			env = append(env, kv)
		}
	}
	if cfg.BLASThreads >= 0 {
		n := strconv.Itoa(max(cfg.BLASThreads, 1))
		for _, k := range BLASThreadVars {
			_, inHost := os.LookupEnv(k)
			inCfg := slices.ContainsFunc(cfg.Env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
			if !inHost && !inCfg {
				env = append(env, k+"="+n)
			}
		}
	}
	// An empty entry would mean the working directory on sys.path.
	paths := []string{pkg}
	for _, p := range cfg.Paths {
		if p != "" {
			paths = append(paths, p)
		}
	}
	env = append(env,
		"PYTHONPATH="+strings.Join(paths, string(filepath.ListSeparator)),
		"PYTHONUNBUFFERED=1",
		EnvRunToken+"="+token,
	)
	return append(env, cfg.Env...)
}

// spawn starts the process — exec'd from the spawner thread, or forked by
// Config.ForkServer — with its socket (of sockType) on fd 3, its lifeline
// on fd 4, the shared region on fd 5 and the host-call region on the next
// (see hostShmFD), and starts the goroutines that forward its output and
// reap it.
func (w *Worker) spawn(ctx context.Context, argv []string, pkg string, sockType int) error {
	fds, err := unix.Socketpair(unix.AF_UNIX, sockType|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair: %w", err)
	}
	hostSock := os.NewFile(uintptr(fds[0]), "snakepit-host")
	childSock := os.NewFile(uintptr(fds[1]), "snakepit-child")
	defer childSock.Close()
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		hostSock.Close()
		return fmt.Errorf("lifeline: %w", err)
	}
	defer lifeR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		hostSock.Close()
		lifeW.Close()
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		hostSock.Close()
		lifeW.Close()
		outR.Close()
		outW.Close()
		return err
	}
	if w.cfg.SharedThreshold > 0 {
		w.shm, err = newRegion("snakepit-shm", w.cfg.MaxSharedMemory)
	}
	if err == nil && w.hostThreshold > 0 {
		w.hshm, err = newRegion("snakepit-host-shm", w.cfg.MaxSharedMemory)
	}
	if err != nil {
		hostSock.Close()
		lifeW.Close()
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		w.closeRegions()
		return err
	}
	files := []*os.File{childSock, lifeR} // fds 3 and 4
	if w.shm != nil {
		files = append(files, w.shm.file) // fd 5
	}
	if w.hshm != nil {
		files = append(files, w.hshm.file) // hostShmFD: 6, or 5 without the request region
	}
	env := childEnv(w.cfg, pkg, w.reg.Token())
	if fs := w.cfg.ForkServer; fs != nil {
		w.fork = fs
		w.pid, w.pidfd, err = fs.fork(ctx, argv, env, outW, errW, files)
	} else {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = env
		cmd.ExtraFiles = files
		cmd.Stdout, cmd.Stderr = outW, errW
		// The parent-death signal is SIGTERM, not SIGKILL: the child's
		// handler kills its whole group, grandchildren included, which
		// SIGKILL to the child alone would leave behind.
		cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGTERM}
		if err = startOnSpawner(cmd); err != nil {
			err = fmt.Errorf("start %s: %w", argv[0], err)
		} else {
			w.cmd = cmd
			w.pid = cmd.Process.Pid
			// The process cannot have been reaped yet (only reap does
			// that), so the pidfd names it, not a successor.
			if fd, err := unix.PidfdOpen(w.pid, 0); err == nil {
				w.pidfd = fd
			}
		}
	}
	outW.Close()
	errW.Close()
	if err != nil {
		hostSock.Close()
		lifeW.Close()
		outR.Close()
		errR.Close()
		w.closeRegions()
		return err
	}
	if w.cfg.ID == "" {
		prefix := "proc-"
		if sockType == unix.SOCK_SEQPACKET {
			prefix = "forkserver-" // StartForkServer's template
		}
		w.id = prefix + strconv.Itoa(w.pid)
	} else {
		w.id = w.cfg.ID
	}
	w.lifeline = lifeW
	w.outR, w.errR = outR, errR
	w.outputs.Add(2)
	go w.forward(outR, "stdout", nil, nil)
	go w.forward(errR, "stderr", w.stderr, w.errDone)
	if w.fork != nil {
		go w.reapForked()
	} else {
		go w.reap()
	}
	if err := w.reg.add(w.pid); err != nil {
		w.log.Warn("worker not recorded for orphan cleanup", "worker", w.id, "error", err)
	}
	c, err := net.FileConn(hostSock)
	hostSock.Close()
	if err != nil {
		w.kill()
		<-w.exited
		w.release()
		w.drainOutputs(context.Background())
		w.reg.remove(w.pid)
		return fmt.Errorf("socket: %w", err)
	}
	w.conn = c.(*net.UnixConn)
	w.rd = newFrameReader(w.conn, w.cfg.MaxFrame)
	return nil
}

// reap waits for the process and marks the worker dead if it ended while
// nobody was stopping it. It learns of the exit without reaping (waitid with
// WNOWAIT), kills what is left of the process group — the group id cannot
// be reused while its leader is an unreaped zombie — and only then reaps:
// from then on the worker sends no signal at all.
func (w *Worker) reap() {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, w.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	w.sigMu.Lock()
	if signalHook != nil {
		signalHook(-w.pid, unix.SIGKILL)
	}
	_ = unix.Kill(-w.pid, unix.SIGKILL) // the rest of the group
	w.reaped = true
	if w.pidfd >= 0 {
		unix.Close(w.pidfd)
		w.pidfd = -1
	}
	w.sigMu.Unlock()
	_ = w.cmd.Wait()
	w.exitState = w.cmd.ProcessState
	// Let the last lines the process wrote reach the stderr tail, unless
	// something else in its group keeps the pipe open.
	select {
	case <-w.errDone:
	case <-time.After(500 * time.Millisecond):
	}
	// Record why before announcing the exit: waiters read Err after exited.
	if w.closing.Load() {
		w.stop()
	} else {
		w.die(&ExitError{PID: w.pid, State: w.exitState, Stderr: w.stderr.String()})
	}
	close(w.exited)
}

// kill sends SIGKILL to the worker's whole process group.
func (w *Worker) kill() { w.signalGroup(unix.SIGKILL) }

// signalHook, set only by tests, sees each signal the worker is about to
// send (to -pid for the group), at a moment the process is not reaped.
var signalHook func(pid int, sig unix.Signal)

// signalGroup sends sig to the worker's process group, unless the process
// has been reaped (the group id may then name another group). Where no
// group has that id yet — a forked worker that has not left the template's
// group — it signals the process alone, which has no process of its own
// to take along yet.
func (w *Worker) signalGroup(sig unix.Signal) {
	w.sigMu.RLock()
	defer w.sigMu.RUnlock()
	if w.reaped {
		return
	}
	if signalHook != nil {
		signalHook(-w.pid, sig)
	}
	if unix.Kill(-w.pid, sig) == unix.ESRCH {
		w.signalProcessLocked(sig)
	}
}

// signalProcess sends sig to the worker process: through its pidfd, which
// can never name another process, or by pid where pidfds are unavailable
// (Linux < 5.3) — safe there too, because the process is not reaped while
// sigMu is read-held.
func (w *Worker) signalProcess(sig unix.Signal) {
	w.sigMu.RLock()
	defer w.sigMu.RUnlock()
	w.signalProcessLocked(sig)
}

// signalProcessLocked is signalProcess with sigMu held.
func (w *Worker) signalProcessLocked(sig unix.Signal) {
	if !w.reaped && signalHook != nil {
		signalHook(w.pid, sig)
	}
	switch {
	case w.reaped:
	case w.pidfd >= 0:
		_ = unix.PidfdSendSignal(w.pidfd, sig, nil, 0)
	default:
		_ = unix.Kill(w.pid, sig)
	}
}

// release frees what the process held on the host side.
func (w *Worker) release() {
	if w.conn != nil {
		w.conn.Close()
	}
	if w.lifeline != nil {
		w.lifeline.Close()
	}
	w.closeRegions()
}

// closeRegions closes the shared regions there are.
func (w *Worker) closeRegions() {
	if w.shm != nil {
		w.shm.close()
	}
	if w.hshm != nil {
		w.hshm.close()
	}
}

func (w *Worker) handshake(ctx context.Context) error {
	// The start timeout first, then the context's end: an AfterFunc on a
	// context that has ended already runs at once, and no later deadline
	// may overwrite it.
	if _, ok := ctx.Deadline(); !ok {
		w.conn.SetReadDeadline(time.Now().Add(w.cfg.StartTimeout))
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		w.conn.SetReadDeadline(longAgo)
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired // it ran: let it finish before clearing the deadline
		}
		w.conn.SetReadDeadline(time.Time{})
	}()
	f, err := w.rd.next()
	if err != nil {
		return w.startFailure("waiting for HELLO", ctx, err)
	}
	switch f.typ {
	case frameFail:
		r, derr := python.DecodeReply(f.payload, "setup", "")
		if derr != nil {
			return w.protocolError(fmt.Errorf("malformed FAIL: %w", derr))
		}
		w.emit(ctx, r.Logs)
		cause := r.Err
		var ce *worker.CallError
		if errors.As(cause, &ce) {
			cause = ce.Err
		}
		w.waitExit(time.Second)
		if tail := w.stderr.String(); tail != "" {
			cause = fmt.Errorf("%w; stderr: %s", cause, tail)
		}
		return &worker.SetupError{WorkerID: w.id, Stage: "setup", Err: cause}
	case frameHello:
	default:
		return w.protocolError(fmt.Errorf("%w: got type %d before HELLO", ErrBadFrame, f.typ))
	}
	v, err := pymarshal.Decode(f.payload)
	hello, ok := v.(map[string]any)
	if err != nil || !ok {
		return w.protocolError(fmt.Errorf("%w: malformed HELLO", ErrBadFrame))
	}
	if pv, _ := hello["protocol"].(int64); pv != ProtocolVersion {
		return w.protocolError(fmt.Errorf("protocol version %v, want %d", hello["protocol"], ProtocolVersion))
	}
	if shm, _ := hello["shm"].(bool); shm && w.shm != nil {
		w.shmPeer = true
	}
	if shm, _ := hello["host_shm"].(bool); shm && w.hshm != nil {
		w.hshmPeer = true
	}
	if logs, ok := hello["logs"]; ok && logs != nil {
		if b, err := pymarshal.Marshal(logs); err == nil {
			if recs, err := python.DecodeLogs(b); err == nil {
				w.emit(ctx, recs)
			}
		}
	}
	// Health check: the child answers requests before it is ready. The
	// PING carries the names of the host functions (a marshalled list of
	// str; empty for none).
	var names []byte
	if w.cfg.Host != nil {
		if list := w.cfg.Host.Names(); len(list) > 0 {
			if names, err = pymarshal.Marshal(list); err != nil {
				return fmt.Errorf("host function names: %w", err)
			}
		}
	}
	id := w.nextID.Add(1)
	if _, err := w.write(ctx, framePing, id, names); err != nil {
		return w.startFailure("sending PING", ctx, err)
	}
	f, err = w.rd.next()
	if err != nil {
		return w.startFailure("waiting for PONG", ctx, err)
	}
	if f.typ != framePong || f.id != id {
		return w.protocolError(fmt.Errorf("%w: got type %d id %d, want PONG %d", ErrBadFrame, f.typ, f.id, id))
	}
	return nil
}

func (w *Worker) startFailure(what string, ctx context.Context, err error) error {
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, context.Cause(ctx))
	}
	if timeout {
		return fmt.Errorf("%s: no answer within the start timeout (%v); stderr: %s", what, w.cfg.StartTimeout, w.stderr.String())
	}
	if errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrBadFrame) || errors.Is(err, ErrTruncated) {
		return w.protocolError(err)
	}
	w.waitExit(2 * time.Second)
	return &ExitError{PID: w.pid, State: w.exitState, Stderr: w.stderr.String()}
}

func (w *Worker) protocolError(err error) error {
	w.kill()
	w.waitExit(2 * time.Second)
	return &ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()}
}

// waitExit waits up to d for the process to be reaped.
func (w *Worker) waitExit(d time.Duration) bool {
	return w.waitExitCtx(context.Background(), d)
}

// waitExitCtx waits up to d, and until ctx ends, for the process to be
// reaped.
func (w *Worker) waitExitCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-w.exited:
		return true
	default:
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.exited:
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
}

// longAgo is a deadline that has passed: set on the connection, it makes
// a blocked read or write return at once.
var longAgo = time.Unix(1, 0)

// write sends one frame, bounded by ctx: a context that ends (deadline or
// cancel) interrupts a write blocked on a child that does not read, or
// the wait for another frame's write to finish. It returns how many bytes
// of the frame went out.
func (w *Worker) write(ctx context.Context, typ byte, id uint64, payload []byte) (int, error) {
	return w.writeFrame(ctx, typ, id, payload, nil)
}

// writeFrame is write; before, if not nil, runs once the connection is
// this frame's (frames go out in the order their before hooks ran), just
// before the frame is written.
func (w *Worker) writeFrame(ctx context.Context, typ byte, id uint64, payload []byte, before func()) (int, error) {
	if len(payload) > w.cfg.MaxFrame {
		return 0, &worker.NotSerializableError{What: "argument", Detail: fmt.Sprintf("request of %d bytes exceeds the frame limit of %d bytes", len(payload), w.cfg.MaxFrame)}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	select {
	case w.wlock <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-w.wlock }()
	// A host call's reply never goes through the region: the request of
	// the call in flight may be there, viewed by its handler.
	if w.shmPeer && typ&frameShared == 0 && typ != frameHostReply && len(payload) >= w.cfg.SharedThreshold {
		ref, ok, err := w.shm.put(payload)
		if err != nil {
			// The host could not grow the region: the socket still works.
			w.log.Warn("shared memory unavailable, payload sent through the socket", "worker", w.id, "error", err)
		} else if ok {
			typ |= frameShared
			payload = ref.append(make([]byte, 0, regionRefSize))
		}
	}
	var buf []byte
	if headerSize+len(payload) <= readAhead {
		// A small frame is laid out in the worker's write buffer (the
		// connection is this frame's until it is written).
		buf = appendFrame(w.wbuf[:0], typ, id, payload)
		w.wbuf = buf
	} else {
		buf = appendFrame(make([]byte, 0, headerSize+len(payload)), typ, id, payload)
	}
	if before != nil {
		before()
	}
	if ctx.Done() == nil {
		return w.conn.Write(buf)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		w.conn.SetWriteDeadline(longAgo)
		close(fired)
	})
	n, err := w.conn.Write(buf)
	if !stop() {
		<-fired // it ran: let it finish before clearing the deadline
		w.conn.SetWriteDeadline(time.Time{})
	}
	return n, err
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.id }

// PID returns the worker process's pid (also its process group id).
func (w *Worker) PID() int { return w.pid }

// Done is closed when the worker stopped: closed or dead.
func (w *Worker) Done() <-chan struct{} { return w.done }

// Err returns why the worker died, or nil.
func (w *Worker) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *Worker) die(err error) {
	w.mu.Lock()
	first := w.err == nil
	if first {
		w.err = err
	}
	w.mu.Unlock()
	w.stop()
	if first {
		w.kill()
	}
}

// stop marks the worker stopped: Done is closed, and so is the context
// that bounds the writes of host call replies.
func (w *Worker) stop() {
	w.stopOnce.Do(func() {
		close(w.done)
		w.stopCancel()
	})
}

func (w *Worker) unavailable() error {
	if err := w.Err(); err != nil {
		return err
	}
	return worker.ErrClosed
}

func (w *Worker) emit(ctx context.Context, logs []python.LogRecord) {
	for _, r := range logs {
		r.Emit(ctx, w.log, w.id)
	}
}
