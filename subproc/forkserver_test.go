package subproc_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

// forkAdapter reports what a forked worker sees of itself.
const forkAdapter = `
import os
import sys

import snakepit

IMPORTED_BY = os.getpid()


@snakepit.command
def info():
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "imported_by": IMPORTED_BY,
        "fds": fds,
        "template_only": os.environ.get("SNAKEPIT_TEST_TEMPLATE_ONLY", ""),
        "template_only_c": str(os.system("test -z \"$SNAKEPIT_TEST_TEMPLATE_ONLY\"")),
        "worker_only": os.environ.get("SNAKEPIT_TEST_WORKER_ONLY", ""),
        "threads": len(os.listdir("/proc/self/task")),
        "main": sys.modules["__main__"].__name__,
    }


@snakepit.command
def callbacks(n):
    """Make n ctypes callbacks (libffi trampolines) and call each."""
    import ctypes
    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)
    keep = [proto(lambda x, i=i: x + i) for i in range(n)]
    return sum(cb(1) for cb in keep)


@snakepit.command
def grandchild():
    """A process in the worker's group."""
    import subprocess
    return subprocess.Popen(["sleep", "300"]).pid


@snakepit.command
def crash():
    os._exit(3)


@snakepit.command
def hang():
    """Deaf to SHUTDOWN and SIGTERM: only SIGKILL of the group ends it."""
    import signal
    import time
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.write(2, b"hanging\n")
    time.sleep(300)
`

// threadAdapter starts a thread when imported.
const threadAdapter = `
import threading
import time

import snakepit

threading.Thread(target=time.sleep, args=(300,), daemon=True).start()


@snakepit.command
def ping():
    return "pong"
`

func forkAdapters(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range map[string]string{"fork_adapter.py": forkAdapter, "thread_adapter.py": threadAdapter} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startForkServer starts a fork server for module, closed when the test
// ends.
func startForkServer(t *testing.T, dir, module string, importAdapter bool) *subproc.ForkServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{
		Module: module, ImportAdapter: importAdapter, Paths: []string{dir}, Python: pythonExe(t),
		Env: []string{"SNAKEPIT_TEST_TEMPLATE_ONLY=1"}, Registry: testRegistry(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close(context.Background()) })
	return fs
}

func startForked(t *testing.T, fs *subproc.ForkServer, dir string, log ...*slog.Logger) *subproc.Worker {
	t.Helper()
	var logger *slog.Logger
	if len(log) > 0 {
		logger = log[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := subproc.Start(ctx, subproc.Config{
		Module: "fork_adapter", Paths: []string{dir}, Python: pythonExe(t), ForkServer: fs,
		Env: []string{"SNAKEPIT_TEST_WORKER_ONLY=1"}, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

type forkInfo struct {
	PID, PPID, PGID, SID int
	ImportedBy           int `json:"imported_by"`
	FDs                  map[string]string
	TemplateOnly         string `json:"template_only"`
	TemplateOnlyC        string `json:"template_only_c"`
	WorkerOnly           string `json:"worker_only"`
	Threads              int
	Main                 string
}

// TestForkServerWorker: a worker forked by the fork server runs calls, is
// the template's child in a process group and session of its own, holds
// only its own descriptors, sees its own environment and not the
// template's, and leaves no process after Close — neither does the
// template.
func TestForkServerWorker(t *testing.T) {
	dir := forkAdapters(t)
	// A descriptor the host left without close-on-exec reaches the
	// template: it must not reach the workers.
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	stray, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(p[0]))
	if err != nil {
		t.Fatal(err)
	}
	fs := startForkServer(t, dir, "fork_adapter", true)
	w := startForked(t, fs, dir)
	var got forkInfo
	call(t, w, "info", nil, &got)
	if got.PID != w.PID() || got.PPID != fs.PID() {
		t.Fatalf("pid %d ppid %d: want the worker's pid %d, the fork server's %d", got.PID, got.PPID, w.PID(), fs.PID())
	}
	if got.PGID != got.PID || got.SID != got.PID {
		t.Fatalf("pgid %d sid %d: want both the worker's pid %d", got.PGID, got.SID, got.PID)
	}
	if got.ImportedBy != fs.PID() {
		t.Fatalf("adapter imported by %d, want the template %d (ImportAdapter)", got.ImportedBy, fs.PID())
	}
	if got.TemplateOnly != "" || got.TemplateOnlyC != "0" || got.WorkerOnly != "1" {
		t.Fatalf("environment: template's variable %q (shell exit %s), worker's %q; want absent, 0, \"1\"",
			got.TemplateOnly, got.TemplateOnlyC, got.WorkerOnly)
	}
	// The worker holds 0-5 and what it opens itself, as an exec'd worker
	// of the same adapter does (importing ctypes opens one). The numbers
	// of the latter may differ: the template holds every number a worker
	// may be given (up to the host-call region's) while it imports.
	ew, err := subproc.Start(context.Background(), subproc.Config{
		Module: "fork_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ew.Close(context.Background())
	var exec forkInfo
	call(t, ew, "info", nil, &exec)
	if fds, want := fdNumbers(got.FDs), fdNumbers(exec.FDs); len(fds) != len(want) || !slices.Equal(fds[:6], []int{0, 1, 2, 3, 4, 5}) {
		t.Fatalf("open descriptors %v (%v), want 0-5 and as many as an exec'd worker: %v (%v)", fds, got.FDs, want, exec.FDs)
	}
	if own, want := fdTargetsAbove(got.FDs, 5), fdTargetsAbove(exec.FDs, 5); !slices.Equal(own, want) {
		t.Fatalf("descriptors above 5 open %v, want %v as in an exec'd worker", own, want)
	}
	for fd, target := range got.FDs {
		if target == stray {
			t.Fatalf("fd %s: got the host's stray pipe %s, want it closed", fd, target)
		}
	}
	if !strings.HasPrefix(got.FDs["3"], "socket:") || !strings.HasPrefix(got.FDs["4"], "pipe:") ||
		!strings.HasPrefix(got.FDs["5"], "/memfd:snakepit-shm") {
		t.Fatalf("fds 3, 4, 5: got %v, want the socket, the lifeline and the shared region", got.FDs)
	}
	if got.Main != "snakepit._process" {
		t.Fatalf("__main__ is %q, want snakepit._process", got.Main)
	}
	// libffi's descriptor, opened by the template's import of ctypes, is
	// still the worker's: new trampoline pages map from it.
	var sum int
	call(t, w, "callbacks", map[string]any{"n": 20000}, &sum)
	if want := 20000 + 20000*19999/2; sum != want {
		t.Fatalf("ctypes callbacks: got %d, want %d", sum, want)
	}
	if n, err := w.MemoryBytes(); err != nil || n <= 0 {
		t.Fatalf("MemoryBytes: %d, %v; want > 0", n, err)
	}
	pid := w.PID()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := w.Err(); err != nil {
		t.Fatalf("Err after Close: %v, want nil", err)
	}
	waitGone(t, []int{pid}, 10*time.Second)
	if !alive(fs.PID()) {
		t.Fatal("the fork server ended with its worker")
	}
	tpid := fs.PID()
	if err := fs.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitGone(t, []int{tpid}, 10*time.Second)
	if fs.Err() != nil {
		t.Fatalf("fork server Err after Close: %v, want nil", fs.Err())
	}
}

// TestForkServerWorkerDies: a forked worker that exits is reported dead
// (Done, Err matching ErrWorkerDead, the call's error too) and the rest of
// its process group is killed, and the next
// worker forks from the same template; a worker deaf to SIGTERM is killed
// by Close's escalation.
func TestForkServerWorkerDies(t *testing.T) {
	dir := forkAdapters(t)
	fs := startForkServer(t, dir, "fork_adapter", false)
	w := startForked(t, fs, dir)
	var gc int
	call(t, w, "grandchild", nil, &gc)
	_, err := w.Call(context.Background(), &worker.Request{Command: "crash"})
	if !errors.Is(err, worker.ErrWorkerDead) {
		t.Fatalf("crash: got %v, want ErrWorkerDead", err)
	}
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the worker died")
	}
	var ee *subproc.ExitError
	if !errors.Is(w.Err(), worker.ErrWorkerDead) || !errors.As(w.Err(), &ee) || ee.Status != "exit status 3" {
		t.Fatalf("Err: got %v, want an ExitError (ErrWorkerDead) with Status \"exit status 3\"", w.Err())
	}
	// The rest of its process group is killed with it.
	waitGone(t, []int{w.PID(), gc}, 10*time.Second)

	hanging := make(chan struct{})
	w2 := startForked(t, fs, dir, slog.New(&onLine{line: "hanging", seen: hanging}))
	var got forkInfo
	call(t, w2, "info", nil, &got)
	if got.PPID != fs.PID() {
		t.Fatalf("second worker's parent %d, want the fork server %d", got.PPID, fs.PID())
	}
	calling := make(chan error, 1)
	go func() {
		_, err := w2.Call(context.Background(), &worker.Request{Command: "hang"})
		calling <- err
	}()
	select {
	case <-hanging:
	case err := <-calling:
		t.Fatalf("hang: %v", err)
	}
	// Close waits for the call until its context ends, then kills the
	// group.
	cctx, ccancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ccancel()
	done := make(chan error, 1)
	go func() { done <- w2.Close(cctx) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close of a worker deaf to SIGTERM did not return")
	}
	select {
	case err := <-calling:
		if err == nil {
			t.Fatal("hang: got no error from a killed worker")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the call to a killed worker did not return")
	}
	waitGone(t, []int{w2.PID()}, 10*time.Second)
}

// TestForkServerUnsafe: a template whose imports start a thread refuses to
// serve, with an error naming the thread count, and leaves no process.
func TestForkServerUnsafe(t *testing.T) {
	dir := forkAdapters(t)
	before := tokenProcs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{
		Module: "thread_adapter", ImportAdapter: true, Paths: []string{dir}, Python: pythonExe(t),
		Registry: testRegistry(t),
	})
	if err == nil {
		fs.Close(context.Background())
		t.Fatal("StartForkServer: got no error, want ErrForkUnsafe")
	}
	var ue *subproc.ForkUnsafeError
	if !errors.Is(err, subproc.ErrForkUnsafe) || !errors.As(err, &ue) || ue.Threads < 2 || !errors.Is(err, worker.ErrSetup) {
		t.Fatalf("StartForkServer: got %v, want a ForkUnsafeError (ErrForkUnsafe, ErrSetup) with 2 threads or more", err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(ue.Threads)+" OS threads") {
		t.Fatalf("error %q does not name the thread count", err)
	}
	if after := tokenProcs(t); len(after) > len(before) {
		t.Fatalf("processes of this run: %v before, %v after; want none left", before, after)
	}
	// Without the adapter's import the template is single-threaded.
	fs = startForkServer(t, dir, "thread_adapter", false)
	if err := fs.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestForkServerImportError: a template whose adapter fails to import
// reports the Python error as a setup error.
func TestForkServerImportError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "broken_adapter.py"), []byte("raise RuntimeError('no import today')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := subproc.StartForkServer(context.Background(), subproc.ForkServerConfig{
		Module: "broken_adapter", ImportAdapter: true, Paths: []string{dir}, Python: pythonExe(t),
		Registry: testRegistry(t),
	})
	if !errors.Is(err, worker.ErrSetup) || !strings.Contains(err.Error(), "no import today") {
		t.Fatalf("got %v, want ErrSetup carrying the import error", err)
	}
}

// TestForkServerKilled: with the template killed, Start fails with
// ErrForkServerDead, and the workers it forked carry on and close cleanly.
func TestForkServerKilled(t *testing.T) {
	dir := forkAdapters(t)
	fs := startForkServer(t, dir, "fork_adapter", true)
	w := startForked(t, fs, dir)
	if err := unix.Kill(fs.PID(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fs.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("fork server's Done not closed after SIGKILL")
	}
	if !errors.Is(fs.Err(), worker.ErrWorkerDead) {
		t.Fatalf("fork server Err: got %v, want one matching ErrWorkerDead", fs.Err())
	}
	_, err := subproc.Start(context.Background(), subproc.Config{
		Module: "fork_adapter", Paths: []string{dir}, ForkServer: fs,
	})
	if !errors.Is(err, subproc.ErrForkServerDead) || !errors.Is(err, worker.ErrSetup) {
		t.Fatalf("Start: got %v, want ErrForkServerDead (and ErrSetup)", err)
	}
	var got forkInfo
	call(t, w, "info", nil, &got)
	pid := w.PID()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitGone(t, []int{pid}, 10*time.Second)
}

// TestForkServerStopped: a Start whose context ends while the template
// does not answer (stopped) returns with the context's error, and the
// template, whose answer may still come, is killed: later Starts fail with
// ErrForkServerDead.
func TestForkServerStopped(t *testing.T) {
	dir := forkAdapters(t)
	fs := startForkServer(t, dir, "fork_adapter", false)
	if err := unix.Kill(fs.PID(), unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := subproc.Start(ctx, subproc.Config{Module: "fork_adapter", Paths: []string{dir}, ForkServer: fs})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start: got %v, want DeadlineExceeded", err)
	}
	select {
	case <-fs.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the stopped fork server was not killed")
	}
	_, err = subproc.Start(context.Background(), subproc.Config{Module: "fork_adapter", Paths: []string{dir}, ForkServer: fs})
	if !errors.Is(err, subproc.ErrForkServerDead) {
		t.Fatalf("Start after: got %v, want ErrForkServerDead", err)
	}
}

// TestForkServerLogs: what the template writes reaches the logger, tagged
// with the template's id.
func TestForkServerLogs(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "noisy_adapter.py"), []byte("import sys\nprint('template importing', file=sys.stderr)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	seen := &workerOf{line: "template importing", id: make(chan string, 1)}
	fs, err := subproc.StartForkServer(context.Background(), subproc.ForkServerConfig{
		Module: "noisy_adapter", ImportAdapter: true, Paths: []string{dir}, Python: pythonExe(t),
		Registry: testRegistry(t), Logger: slog.New(seen),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close(context.Background())
	select {
	case id := <-seen.id:
		if want := "forkserver-" + strconv.Itoa(fs.PID()); id != want {
			t.Fatalf("template's stderr line logged as worker %q, want %q", id, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the template's stderr line was not logged")
	}
}

// workerOf sends the worker attribute of the first record whose message
// is line.
type workerOf struct {
	line string
	id   chan string
}

func (h *workerOf) Enabled(context.Context, slog.Level) bool { return true }
func (h *workerOf) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *workerOf) WithGroup(string) slog.Handler            { return h }
func (h *workerOf) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.line {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "worker" {
			select {
			case h.id <- a.Value.String():
			default:
			}
		}
		return true
	})
	return nil
}

// TestForkServerConfig: bad configurations fail at once.
func TestForkServerConfig(t *testing.T) {
	if _, err := subproc.StartForkServer(context.Background(), subproc.ForkServerConfig{}); err == nil {
		t.Fatal("StartForkServer without a module: got no error")
	}
	dir := forkAdapters(t)
	fs := startForkServer(t, dir, "fork_adapter", false)
	_, err := subproc.Start(context.Background(), subproc.Config{
		Module: "fork_adapter", ForkServer: fs, Command: []string{"nice", "python3"},
	})
	if err == nil || !strings.Contains(err.Error(), "Command") {
		t.Fatalf("Start with Command and ForkServer: got %v, want an error naming Command", err)
	}
}

// onLine closes seen when a log record's message is line.
type onLine struct {
	line string
	seen chan struct{}
	once sync.Once
}

func (h *onLine) Enabled(context.Context, slog.Level) bool { return true }
func (h *onLine) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *onLine) WithGroup(string) slog.Handler            { return h }
func (h *onLine) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.line {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}

// fdTargetsAbove lists, sorted, what the descriptors above n name.
func fdTargetsAbove(fds map[string]string, n int) []string {
	var out []string
	for name, target := range fds {
		if fd, _ := strconv.Atoi(name); fd > n {
			out = append(out, target)
		}
	}
	slices.Sort(out)
	return out
}

func fdNumbers(fds map[string]string) []int {
	var out []int
	for name := range fds {
		n, _ := strconv.Atoi(name)
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// tokenProcs lists the live processes that carry this test run's registry
// token in their environment.
func tokenProcs(t *testing.T) []int {
	t.Helper()
	want := subproc.EnvRunToken + "=" + testRegistry(t).Token()
	names, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, n := range names {
		pid, err := strconv.Atoi(n.Name())
		if err != nil || !alive(pid) {
			continue
		}
		env, err := os.ReadFile("/proc/" + n.Name() + "/environ")
		if err != nil {
			continue
		}
		if slices.Contains(strings.Split(string(env), "\x00"), want) {
			out = append(out, pid)
		}
	}
	return out
}

// TestConformanceForked runs the conformance suite on workers forked by one
// fork server (which imports snakepit only: each test's adapter is
// imported by the worker after the fork).
func TestConformanceForked(t *testing.T) {
	fs, err := subproc.StartForkServer(context.Background(), subproc.ForkServerConfig{
		Module: "snakepit_conformance", Python: pythonExe(t), Registry: testRegistry(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close(context.Background())
	workertest.Run(t, func(ctx context.Context, o workertest.Options) (worker.Worker, error) {
		var env []string
		for k, v := range o.Env {
			env = append(env, k+"="+v)
		}
		return subproc.Start(ctx, subproc.Config{
			Module: o.Module, Paths: o.Paths, Env: env, ForkServer: fs,
			Logger: o.Logger, InterruptGrace: o.InterruptGrace, Host: o.Host, Concurrency: o.Concurrency,
		})
	})
}

// slowForkAdapter, imported by the template, makes every forked child
// wait before it leaves the template's process group.
const slowForkAdapter = `
import os
import time

import snakepit

os.register_at_fork(after_in_child=lambda: time.sleep(5))


@snakepit.command
def ping():
    return "pong"
`

// TestForkServerStartFailsBeforeSetsid: a forked worker whose start fails
// (its context ends) while it is still in the template's process group is
// killed all the same: Start returns the context's error and no process
// is left. A kill of its own group alone never reached it, and Start
// waited for it forever.
func TestForkServerStartFailsBeforeSetsid(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "slow_fork_adapter.py"), []byte(slowForkAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := startForkServer(t, dir, "slow_fork_adapter", true)
	before := tokenProcs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	started := make(chan error, 1)
	go func() {
		w, err := subproc.Start(ctx, subproc.Config{
			Module: "slow_fork_adapter", Paths: []string{dir}, Python: pythonExe(t), ForkServer: fs,
		})
		if err == nil {
			w.Close(context.Background())
		}
		started <- err
	}()
	select {
	case err := <-started:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Start: got %v, want the context's deadline", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Start did not return after its context ended: the forked worker was not killed")
	}
	deadline := time.Now().Add(10 * time.Second)
	for after := tokenProcs(t); len(after) > len(before); after = tokenProcs(t) {
		if time.Now().After(deadline) {
			t.Fatalf("processes of this run: %v before, %v after; want none left", before, after)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
