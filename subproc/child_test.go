package subproc_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

// childAdapter reports what the worker process sees of its own plumbing.
const childAdapter = `
import os
import subprocess
import sys
import tempfile

import snakepit


def _targets(pid):
    d = "/proc/%s/fd" % pid
    out = {}
    for name in os.listdir(d):
        try:
            out[name] = os.readlink(os.path.join(d, name))
        except OSError:
            pass
    return out


@snakepit.command
def descriptors():
    """The worker's open descriptors, and those of a shell it runs."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "fds")
        rc = os.system("for f in /proc/$$/fd/*; do readlink $f || true; done > " + out)
        with open(out) as f:
            shell = f.read().split()
    return {"worker": _targets("self"), "shell": shell, "rc": rc}


@snakepit.command
def process_pool(method):
    """concurrent.futures.ProcessPoolExecutor with a start method (the
    default one when method is empty)."""
    import concurrent.futures
    import multiprocessing
    ctx = multiprocessing.get_context(method or None)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        return ex.submit(pow, 2, 3).result()


@snakepit.command
def pool_map(n):
    """multiprocessing.Pool with fork: leaving the with block terminates
    the pool's processes with SIGTERM."""
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(2) as p:
        return p.map(abs, range(-n, 0))


@snakepit.command
def pid():
    return os.getpid()


@snakepit.command
def paths():
    import json
    return {"sys_path": sys.path, "cwd": os.getcwd(), "json": json.__file__,
            "argparse": sys.modules["argparse"].__file__}


@snakepit.command
def background():
    """What os.system("job &") does: the shell exits and the job, orphaned,
    is adopted by the worker; return the job's pid."""
    out = subprocess.run(["sh", "-c", "sleep 0.1 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


_kept = []


@snakepit.command
def start_child(code):
    """Start a child the handler will wait for later."""
    p = subprocess.Popen(["sh", "-c", "exit %d" % code])
    _kept.append(p)
    return p.pid


@snakepit.command
def wait_child():
    return _kept.pop().wait()


_raw = []


@snakepit.command
def spawn_raw(kind):
    """Start a child that exits with 5 through os.posix_spawn or os.fork,
    for the handler to wait for later with os.waitpid."""
    if kind == "posix_spawn":
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ)
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(5)
    _raw.append(pid)
    return pid


@snakepit.command
def wait_raw():
    try:
        return os.waitstatus_to_exitcode(os.waitpid(_raw.pop(), 0)[1])
    except ChildProcessError:
        return -1


@snakepit.command
def nested_fork():
    """A child of the worker installs its own SIGTERM handler and forks: the
    grandchild keeps that handler. Returns what the grandchild saw."""
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, lambda *a: None)
        g = os.fork()
        if g == 0:
            kept = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.write(w, b"kept" if kept else b"reset")
            os._exit(0)
        os.waitpid(g, 0)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        seen = f.read()
    os.waitpid(pid, 0)
    return seen


@snakepit.command
def early():
    """The descriptor a sitecustomize opened before the worker started, and
    whether it still refers to its file."""
    import builtins
    f = getattr(builtins, "_snakepit_test_early", None)
    if f is None:
        return "no sitecustomize"
    f.write("still mine\n")
    f.flush()
    return os.readlink("/proc/self/fd/%d" % f.fileno())


@snakepit.command
def start_hog(mb):
    """Start a grandchild holding mb MiB (touched), wait until it holds it."""
    code = "import sys, time; b = bytearray(%d << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); time.sleep(60)" % mb
    p = subprocess.Popen(["sh", "-c", 'exec "$0" -c "$1"', sys.executable, code], stdout=subprocess.PIPE)
    p.stdout.readline()
    _kept.append(p)
    return p.pid


@snakepit.command
def escape():
    """Start a process in a new session, and one orphaned in a new session
    (its parent exits at once); return both pids."""
    direct = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    code = ("import subprocess, sys; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(p.pid)")
    orphan = int(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout)
    return [direct.pid, orphan]
`

func startChild(t *testing.T, extraPaths ...string) *subproc.Worker {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "child_adapter.py"), []byte(childAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "child_adapter", Paths: append([]string{dir}, extraPaths...), Python: pythonExe(t), Registry: testRegistry(t),
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

func call(t *testing.T, w *subproc.Worker, command string, args map[string]any, out any) {
	t.Helper()
	var raw []byte
	if args != nil {
		var err error
		if raw, err = pymarshal.Marshal(args); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := w.Call(ctx, &worker.Request{Command: command, Args: raw})
	if err != nil {
		t.Fatalf("%s: %v", command, err)
	}
	if err := pymarshal.Unmarshal(resp.Result, out); err != nil {
		t.Fatalf("%s: %v", command, err)
	}
}

// TestChildDescriptors: a descriptor the host opened without close-on-exec
// does not reach the worker, and a program the worker runs holds neither
// the host's socket (fd 3), the lifeline (fd 4) nor the shared region (fd 5).
func TestChildDescriptors(t *testing.T) {
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil { // no O_CLOEXEC: inherited by exec
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	leaked, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(p[0]))
	if err != nil {
		t.Fatal(err)
	}
	w := startChild(t)
	var got struct {
		Worker map[string]string
		Shell  []string
		RC     int
	}
	call(t, w, "descriptors", nil, &got)
	if got.RC != 0 {
		t.Fatalf("os.system exit status: got %d, want 0", got.RC)
	}
	for fd, target := range got.Worker {
		if target == leaked {
			t.Errorf("worker fd %s: got the host's non-close-on-exec pipe %s, want it closed", fd, target)
		}
	}
	sock, life := got.Worker["3"], got.Worker["4"]
	if !strings.HasPrefix(sock, "socket:") || !strings.HasPrefix(life, "pipe:") {
		t.Fatalf("worker fds 3 and 4: got %q and %q, want the host socket and the lifeline", sock, life)
	}
	shm := got.Worker["5"]
	if !strings.HasPrefix(shm, "/memfd:snakepit-shm") {
		t.Fatalf("worker fd 5: got %q, want the shared region", shm)
	}
	shm = strings.Fields(shm)[0] // the shell's list is split at spaces: "/memfd:name (deleted)"
	for _, target := range got.Shell {
		if target == sock || target == life || target == leaked || target == shm {
			t.Errorf("a shell started by the worker holds %s (worker fd 3 %s, fd 4 %s, fd 5 %s, host pipe %s), want none of them",
				target, sock, life, shm, leaked)
		}
	}
}

// TestForkedPoolKeepsWorker: the processes of a fork-context
// multiprocessing.Pool are terminated with SIGTERM when the pool closes;
// that ends them, not the worker they were forked from.
func TestForkedPoolKeepsWorker(t *testing.T) {
	w := startChild(t)
	var before, after int
	call(t, w, "pid", nil, &before)
	for range 3 {
		var got []int
		call(t, w, "pool_map", map[string]any{"n": 4}, &got)
		if want := []int{4, 3, 2, 1}; !slices.Equal(got, want) {
			t.Fatalf("pool_map: got %v, want %v", got, want)
		}
	}
	call(t, w, "pid", nil, &after)
	if after != before {
		t.Fatalf("worker pid after the pool closed: got %d, want %d", after, before)
	}
	if err := w.Err(); err != nil {
		t.Fatalf("worker after the pool closed: got %v, want alive", err)
	}
}

// TestProcessPoolExecutor: unlike a thread-profile worker, a process
// worker runs a ProcessPoolExecutor with every start method.
func TestProcessPoolExecutor(t *testing.T) {
	w := startChild(t)
	for _, method := range []string{"", "fork", "spawn", "forkserver"} {
		var got int
		call(t, w, "process_pool", map[string]any{"method": method}, &got)
		if got != 8 {
			t.Errorf("start method %q: got %d, want 8", method, got)
		}
	}
}

// TestWorkingDirectoryNotOnPath: modules in the host's working directory
// shadow nothing in the worker, and sys.path has no entry for it, even with
// an empty entry in Config.Paths.
func TestWorkingDirectoryNotOnPath(t *testing.T) {
	cwd := t.TempDir()
	poison := []byte("raise RuntimeError('imported from the host working directory')\n")
	for _, name := range []string{"argparse.py", "json.py", "snakepit_probe.py"} {
		if err := os.WriteFile(filepath.Join(cwd, name), poison, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(cwd)
	w := startChild(t, "")
	var got struct {
		SysPath  []string `json:"sys_path"`
		Cwd      string
		JSON     string
		Argparse string
	}
	call(t, w, "paths", nil, &got)
	if got.Cwd != cwd {
		t.Fatalf("worker working directory: got %q, want %q", got.Cwd, cwd)
	}
	for _, p := range got.SysPath {
		if p == "" || p == "." || filepath.Clean(p) == cwd {
			t.Errorf("sys.path entry %q: got the working directory on sys.path %v, want it absent", p, got.SysPath)
		}
	}
	for _, f := range []string{got.JSON, got.Argparse} {
		if filepath.Dir(f) == cwd {
			t.Errorf("module file: got %s, want the standard library's", f)
		}
	}
}

// procState returns the state letter of a process ("Z" for a zombie), or
// "" once it is gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || len(b) < i+3 {
		return ""
	}
	return string(b[i+2])
}

// waitState waits until pid is in state (a zombie: "Z").
func waitState(t *testing.T, pid int, state string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for procState(pid) != state {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: got state %q, want %q", pid, procState(pid), state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAdoptedOrphansReaped: orphans the worker adopts as a subreaper are
// reaped once they exit, while a child that a handler's Popen owns keeps
// its exit status for the handler.
func TestAdoptedOrphansReaped(t *testing.T) {
	w := startChild(t)
	var owned, orphan, status, pid int
	call(t, w, "start_child", map[string]any{"code": 7}, &owned)
	call(t, w, "background", nil, &orphan)
	waitState(t, owned, "Z")
	waitState(t, orphan, "Z")
	call(t, w, "pid", nil, &pid)
	if st := procState(orphan); st != "" {
		t.Fatalf("adopted orphan %d after the next call: got state %q, want reaped", orphan, st)
	}
	call(t, w, "wait_child", nil, &status)
	if status != 7 {
		t.Fatalf("exit status of the handler's own child: got %d, want 7", status)
	}
}

// TestSetsidDescendantsEndWithWorker: processes the worker started that
// left its process group with setsid(), one of them orphaned, end when the
// worker is closed.
func TestSetsidDescendantsEndWithWorker(t *testing.T) {
	w := startChild(t)
	var pids []int
	call(t, w, "escape", nil, &pids)
	if len(pids) != 2 {
		t.Fatalf("escape: got %v, want two pids", pids)
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			if alive(pid) {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	})
	for _, pid := range pids {
		if !alive(pid) {
			t.Fatalf("pid %d: got gone before Close, want running", pid)
		}
		if pgid, _ := unix.Getpgid(pid); pgid == w.PID() {
			t.Fatalf("pid %d: got in the worker's process group, want its own session", pid)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w.Close(ctx)
	waitGone(t, pids, 10*time.Second)
}

// TestOwnChildrenKeepTheirStatus: the reaper of adopted orphans leaves the
// exit status of children the handler started itself with os.posix_spawn
// or os.fork to the handler's own waitpid, even across calls.
func TestOwnChildrenKeepTheirStatus(t *testing.T) {
	w := startChild(t)
	for _, kind := range []string{"posix_spawn", "fork"} {
		var pid, status int
		call(t, w, "spawn_raw", map[string]any{"kind": kind}, &pid)
		waitState(t, pid, "Z")
		call(t, w, "pid", nil, new(int)) // a frame after the exit: the reaper runs
		call(t, w, "wait_raw", nil, &status)
		if status != 5 {
			t.Errorf("%s child: waitpid in the handler got exit code %d, want 5 (-1: its status was taken)", kind, status)
		}
	}
}

// TestNestedForkKeepsHandlers: only processes forked by the worker itself
// get default signal handling back; a child's own children keep what the
// child installed.
func TestNestedForkKeepsHandlers(t *testing.T) {
	w := startChild(t)
	var seen string
	call(t, w, "nested_fork", nil, &seen)
	if seen != "kept" {
		t.Fatalf("grandchild's SIGTERM handler: got %q, want kept", seen)
	}
}

// TestEarlyDescriptorsKept: a file the worker's own start-up opened before
// the worker took over (here by a sitecustomize) stays open and its own;
// only descriptors inherited from the host are closed.
func TestEarlyDescriptorsKept(t *testing.T) {
	site := t.TempDir()
	target := filepath.Join(site, "early.log")
	code := "import builtins\nbuiltins._snakepit_test_early = open(" + strconv.Quote(target) + ", 'w')\n"
	if err := os.WriteFile(filepath.Join(site, "sitecustomize.py"), []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	w := startChild(t, site)
	var got string
	call(t, w, "early", nil, &got)
	if got != target {
		t.Fatalf("sitecustomize's file: its descriptor now refers to %q, want %q", got, target)
	}
	if b, _ := os.ReadFile(target); string(b) != "still mine\n" {
		t.Fatalf("sitecustomize's file holds %q, want the line written through it", b)
	}
}

// TestMemoryCountsDescendants: MemoryBytes adds the resident memory of the
// worker's descendants, found by walking its own process tree.
func TestMemoryCountsDescendants(t *testing.T) {
	w := startChild(t)
	before, err := w.MemoryBytes()
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	call(t, w, "start_hog", map[string]any{"mb": 64}, &pid)
	after, err := w.MemoryBytes()
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 60<<20 {
		t.Fatalf("MemoryBytes grew by %d bytes with a 64 MiB grandchild (pid %d), want about 64 MiB", after-before, pid)
	}
}
