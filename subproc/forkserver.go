package subproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// Errors of the fork server.
var (
	// ErrForkServerDead: the fork server's template process has ended (or
	// stopped answering and was killed); it forks no more workers. Start a
	// new one with [StartForkServer].
	ErrForkServerDead = errors.New("subproc: fork server is gone")
	// ErrForkUnsafe: the template runs more than one OS thread after its
	// imports (a BLAS or OpenMP pool, a logging or gRPC thread): a forked
	// child would inherit locks those threads hold and nobody would ever
	// release them. The fork server refuses to start; see
	// [ForkUnsafeError].
	ErrForkUnsafe = errors.New("subproc: the fork server's template is not safe to fork")
)

// ForkUnsafeError reports a template that runs more than one OS thread
// after its imports. It matches [ErrForkUnsafe].
type ForkUnsafeError struct {
	Threads int // the OS threads of the template (/proc/PID/task)
}

func (e *ForkUnsafeError) Error() string {
	return fmt.Sprintf("subproc: the fork server's template runs %d OS threads after its imports, want 1: "+
		"forking it is unsafe (import the adapter in each worker instead, or keep its imports from starting threads, "+
		"e.g. OPENBLAS_NUM_THREADS=1)", e.Threads)
}

func (e *ForkUnsafeError) Unwrap() error { return ErrForkUnsafe }

// ForkServerConfig configures a fork server. Its interpreter, paths and
// environment are resolved as [Config]'s are; the workers it forks get
// theirs from their own [Config].
type ForkServerConfig struct {
	// Module is the adapter module the workers will run. It is imported
	// by the template only when ImportAdapter is set.
	Module string
	// ImportAdapter imports Module in the template, so that the workers
	// share its pages and skip its import. Set it only when the adapter's
	// imports are fork-safe: they start no thread (numpy with a threaded
	// BLAS, torch, gRPC and many clients do; [StartForkServer] then fails
	// with [ErrForkUnsafe]) and open no connection or file a worker must
	// not share. setup() still runs in each worker.
	ImportAdapter bool
	// Paths, Python, Env and BLASThreads are as in [Config]: Env is the
	// template's extra environment (a forked worker's environment is its
	// own Config's, not the template's). BLASThreads matters when the
	// template imports a math library (ImportAdapter): the library reads
	// its thread count when it loads, and the forked workers keep it.
	Paths       []string
	Python      string
	Env         []string
	BLASThreads int
	// ID names the template in logs and errors. Zero: "forkserver-<pid>".
	ID string
	// Logger receives the template's stdout and stderr lines. Nil discards
	// them.
	Logger *slog.Logger
	// Registry records the template and the workers it forks for orphan
	// cleanup. Nil: DefaultRegistry().
	Registry *Registry
	// StartTimeout bounds the template's start-up when the context has no
	// deadline, and each request to it. Zero: 60 s.
	StartTimeout time.Duration
	// StopGrace is how long Close waits for the template to exit, and
	// again after SIGTERM, before SIGKILL. Zero: 5 s.
	StopGrace time.Duration
}

// ForkServer is a template process that forks process-profile workers
// (see [Config.ForkServer]): a Python process that has imported snakepit
// (and, with [ForkServerConfig.ImportAdapter], the adapter) and runs one
// thread. Each forked worker leaves the template's session (its own
// process group, pgid == pid), takes its socket, lifeline, shared region,
// stdout and stderr, which the host passes over the template's control
// socket (SCM_RIGHTS), closes every other descriptor it inherited, and
// replaces its environment with the explicit one of its Config. The
// lifeline, not a parent-death signal, ends a forked worker with its host:
// its parent is the template, whose end would otherwise take every worker
// with it.
//
// The host cannot wait for a process it did not start: it learns of a
// forked worker's exit through a pidfd, kills the rest of the worker's
// process group while the unreaped worker still pins its group id, and
// only then asks the template to reap it. Where the template has died, its
// workers live on and are reaped by the system. Needs Linux 5.3 or later
// (pidfd_open).
//
// A ForkServer is safe for concurrent use; requests to the template are
// served one at a time (a fork takes a millisecond or two). A template
// that does not answer a request within StartTimeout, or before the
// context of the [Start] that sent it ends, is killed: its late answer
// could not be told from the next request's.
type ForkServer struct {
	proc    *Worker // the template process (its start, output, reaping and signals)
	cfg     ForkServerConfig
	timeout time.Duration

	// mu serialises exchanges on the control socket: a request, then its
	// reply.
	mu     sync.Mutex
	broken bool // guarded by mu: an exchange failed and the template was killed

	closeOnce sync.Once
}

// StartForkServer starts a template process and returns once it has
// imported what it should and reported a single OS thread. A template that
// runs more threads fails with an error matching [ErrForkUnsafe]; one that
// fails to import, with an error matching [worker.ErrSetup] carrying its
// stderr. A failure leaves no process behind.
func StartForkServer(ctx context.Context, cfg ForkServerConfig) (*ForkServer, error) {
	if cfg.Module == "" {
		return nil, errors.New("subproc: ForkServerConfig.Module is required")
	}
	if cfg.StartTimeout < 0 || cfg.StopGrace < 0 {
		return nil, errors.New("subproc: ForkServerConfig durations must not be negative")
	}
	setupErr := func(stage string, err error) error {
		return &worker.SetupError{WorkerID: cfg.ID, Stage: stage, Err: err}
	}
	if ctx.Err() != nil {
		return nil, setupErr("fork server", context.Cause(ctx))
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pcfg := Config{
		Module: cfg.Module, Paths: cfg.Paths, Python: cfg.Python, Env: cfg.Env, BLASThreads: cfg.BLASThreads, ID: cfg.ID, Logger: log,
		StopGrace: cfg.StopGrace, StartTimeout: cfg.StartTimeout, SharedThreshold: -1, Registry: cfg.Registry,
	}
	prefix, err := interpreter(pcfg)
	if err != nil {
		return nil, setupErr("fork server", err)
	}
	argv := append(prefix, "-P", "-m", "snakepit._forkserver", cfg.Module)
	if cfg.ImportAdapter {
		argv = append(argv, "--import-adapter")
	}
	reg := cfg.Registry
	if reg == nil {
		if reg, err = DefaultRegistry(); err != nil {
			return nil, setupErr("fork server", err)
		}
	}
	pkg, err := python.Path()
	if err != nil {
		return nil, setupErr("fork server", err)
	}
	p := &Worker{
		cfg:     pcfg,
		log:     log,
		reg:     reg,
		stderr:  newTail(8 << 10),
		errDone: make(chan struct{}),
		exited:  make(chan struct{}),
		done:    make(chan struct{}),
		pidfd:   -1,
	}
	p.stopCtx, p.stopCancel = context.WithCancel(context.Background())
	if err := p.spawn(ctx, argv, pkg, unix.SOCK_SEQPACKET); err != nil {
		return nil, setupErr("fork server", err)
	}
	fs := &ForkServer{proc: p, cfg: cfg, timeout: cfg.StartTimeout}
	p.sigMu.RLock()
	noPidfd := p.pidfd < 0 && !p.reaped
	p.sigMu.RUnlock()
	if noPidfd {
		// Forked workers are watched through pidfds, which the template's
		// own start showed unavailable.
		fs.discard()
		return nil, setupErr("fork server", errors.New("subproc: the fork server needs pidfd_open (Linux 5.3 or later)"))
	}
	if err := fs.hello(ctx); err != nil {
		fs.discard()
		var se *worker.SetupError
		if errors.As(err, &se) {
			return nil, err
		}
		return nil, &worker.SetupError{WorkerID: p.id, Stage: "fork server", Err: err}
	}
	return fs, nil
}

// hello reads the template's first message: its thread count, or why its
// imports failed.
func (fs *ForkServer) hello(ctx context.Context) error {
	p := fs.proc
	if _, ok := ctx.Deadline(); !ok {
		p.conn.SetReadDeadline(time.Now().Add(fs.cfg.StartTimeout))
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		p.conn.SetReadDeadline(longAgo)
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
		p.conn.SetReadDeadline(time.Time{})
	}()
	msg, err := fs.read()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the fork server: %w", context.Cause(ctx))
		}
		p.waitExit(2 * time.Second)
		return fmt.Errorf("waiting for the fork server: %w; stderr: %s", err, p.stderr.String())
	}
	if text, ok := msg["error"].(string); ok {
		p.waitExit(time.Second)
		return &worker.SetupError{WorkerID: p.id, Stage: "import", Err: errors.New(text)}
	}
	n, ok := msg["threads"].(int64)
	if !ok {
		return fmt.Errorf("%w: malformed fork server hello", ErrBadFrame)
	}
	if n > 1 {
		return &ForkUnsafeError{Threads: int(n)}
	}
	return nil
}

// read reads one message of the template.
func (fs *ForkServer) read() (map[string]any, error) {
	buf := make([]byte, 64<<10)
	n, _, _, _, err := fs.proc.conn.ReadMsgUnix(buf, nil)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("end of file")
	}
	v, err := pymarshal.Decode(buf[:n])
	m, ok := v.(map[string]any)
	if err != nil || !ok {
		return nil, fmt.Errorf("%w: malformed fork server message", ErrBadFrame)
	}
	return m, nil
}

// exchange sends one request with files attached and returns the reply.
// The template serves one request at a time and answers each at once: one
// that does not answer within the start timeout, or whose socket fails,
// is killed, and every later exchange fails with ErrForkServerDead. So is
// one whose exchange ctx interrupts: a reply may still be on its way, and
// the next request would read it.
func (fs *ForkServer) exchange(ctx context.Context, req map[string]any, files []*os.File) (map[string]any, error) {
	payload, err := pymarshal.Marshal(req)
	if err != nil {
		return nil, err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	select {
	case <-fs.proc.done:
		return nil, fs.deadErr()
	default:
	}
	if fs.broken {
		return nil, fs.deadErr()
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	conn := fs.proc.conn
	conn.SetDeadline(time.Now().Add(fs.timeout))
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.SetDeadline(longAgo)
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired // it ran: let it finish before clearing the deadline
		}
		conn.SetDeadline(time.Time{})
	}()
	_, _, err = conn.WriteMsgUnix(payload, oob, nil)
	var reply map[string]any
	if err == nil {
		reply, err = fs.read()
	}
	if err != nil {
		fs.broken = true
		fs.proc.kill()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("subproc: fork server %d: request interrupted, the fork server was stopped: %w", fs.proc.pid, context.Cause(ctx))
		}
		return nil, fmt.Errorf("%w: %w", fs.deadErr(), err)
	}
	return reply, nil
}

// deadErr says that the template is gone, and why where known.
func (fs *ForkServer) deadErr() error {
	if err := fs.proc.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrForkServerDead, err)
	}
	return fmt.Errorf("%w (pid %d)", ErrForkServerDead, fs.proc.pid)
}

// fork asks the template for a worker process running argv (the
// arguments after "-m snakepit._process") with environment env, stdout
// and stderr, and files as fds 3, 4 (and 5). It returns the worker's pid
// and a pidfd naming it.
func (fs *ForkServer) fork(ctx context.Context, argv, env []string, stdout, stderr *os.File, files []*os.File) (pid, pidfd int, err error) {
	all := append([]*os.File{files[0], files[1], stdout, stderr}, files[2:]...)
	reply, err := fs.exchange(ctx, map[string]any{"op": "spawn", "argv": argv, "env": env}, all)
	if err != nil {
		return 0, -1, err
	}
	if text, ok := reply["error"].(string); ok {
		return 0, -1, fmt.Errorf("subproc: fork server: %s", text)
	}
	n, ok := reply["pid"].(int64)
	if !ok || n <= 1 {
		fs.mu.Lock()
		fs.broken = true
		fs.mu.Unlock()
		fs.proc.kill()
		return 0, -1, fmt.Errorf("%w: malformed fork server reply", ErrBadFrame)
	}
	pid = int(n)
	// The template reaps the worker only when asked to (reapForked), so the
	// pid names the worker, alive or a zombie, until then — unless the
	// template died meanwhile and the system reaped it: the parent check
	// after opening the pidfd catches that.
	pidfd, err = unix.PidfdOpen(pid, 0)
	if err != nil {
		// Out of descriptors, say. While it is the template's child the
		// worker is unreaped, safe to kill by pid and by group (which it
		// may not have made yet); if the template died, the pid may name
		// another process by now: the worker ends on its lifeline.
		if err != unix.ESRCH && fs.checkParent(pid) == nil {
			_ = unix.Kill(-pid, unix.SIGKILL)
			_ = unix.Kill(pid, unix.SIGKILL)
			fs.reap(pid)
		}
		return 0, -1, fmt.Errorf("subproc: fork server's worker %d: pidfd: %w", pid, err)
	}
	if err = fs.checkParent(pid); err != nil {
		// The template died: the worker, which holds only descriptors the
		// host is about to close, ends on its lifeline.
		unix.Close(pidfd)
		return 0, -1, fmt.Errorf("%w: worker %d: %w", fs.deadErr(), pid, err)
	}
	return pid, pidfd, nil
}

// checkParent returns nil when the template is pid's parent.
func (fs *ForkServer) checkParent(pid int) error {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return err
	}
	st, err := p.Stat()
	if err != nil {
		return err
	}
	if st.PPID != fs.proc.pid {
		return fmt.Errorf("its parent is %d, not the fork server", st.PPID)
	}
	return nil
}

// reap asks the template to reap pid, which has exited, and returns its
// wait status (-1 where unknown: the template is gone).
func (fs *ForkServer) reap(pid int) int {
	reply, err := fs.exchange(context.Background(), map[string]any{"op": "reap", "pid": pid}, nil)
	if err != nil {
		return -1
	}
	st, _ := reply["status"].(int64)
	return int(st)
}

// reapForked is reap for a forked worker: it learns of the exit from the
// pidfd, kills what is left of the group while the unreaped worker pins
// the group id, and only then lets the template reap it.
func (w *Worker) reapForked() {
	pfd := []unix.PollFd{{Fd: int32(w.pidfd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(pfd, -1)
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
	unix.Close(w.pidfd)
	w.pidfd = -1
	w.sigMu.Unlock()
	status := w.fork.reap(w.pid)
	select {
	case <-w.errDone:
	case <-time.After(500 * time.Millisecond):
	}
	if w.closing.Load() {
		w.stop()
	} else {
		e := &ExitError{PID: w.pid, Stderr: w.stderr.String()}
		if status >= 0 {
			e.Status = waitStatus(status)
		}
		w.die(e)
	}
	close(w.exited)
}

// PID returns the template's pid (also its process group id).
func (fs *ForkServer) PID() int { return fs.proc.pid }

// Module returns the adapter module the template was started for, and
// whether it imported it.
func (fs *ForkServer) Module() (module string, imported bool) {
	return fs.cfg.Module, fs.cfg.ImportAdapter
}

// Done is closed when the template has ended.
func (fs *ForkServer) Done() <-chan struct{} { return fs.proc.exited }

// Err returns why the template ended unexpectedly, or nil.
func (fs *ForkServer) Err() error { return fs.proc.Err() }

// Close stops the template: it closes the control socket and the lifeline
// (the template exits), then sends SIGTERM and SIGKILL to its process
// group after StopGrace each, or SIGKILL at once when ctx ends. Workers it
// forked are not affected: close them first. Close is idempotent.
func (fs *ForkServer) Close(ctx context.Context) error {
	fs.closeOnce.Do(func() {
		p := fs.proc
		p.closing.Store(true)
		// An exchange in progress fails on the closed socket.
		p.release()
		if !p.waitExitCtx(ctx, fs.cfg.StopGrace) {
			p.signalGroup(unix.SIGTERM)
			if !p.waitExitCtx(ctx, fs.cfg.StopGrace) {
				p.kill()
				<-p.exited
			}
		}
		p.stop()
		p.reg.remove(p.pid)
		p.drainOutputs(ctx)
	})
	return nil
}

// discard kills a template that failed to start and frees what it held.
func (fs *ForkServer) discard() {
	p := fs.proc
	p.closing.Store(true)
	p.kill()
	<-p.exited
	p.stop()
	p.release()
	p.drainOutputs(context.Background())
	p.reg.remove(p.pid)
}

// waitStatus describes a wait status as os.ProcessState does.
func waitStatus(status int) string {
	ws := unix.WaitStatus(status)
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	}
	return "status " + strconv.Itoa(status)
}
