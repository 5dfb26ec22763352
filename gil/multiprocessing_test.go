package gil_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// envMultiprocessingChild makes the test binary, re-executed, run the body
// of TestMultiprocessingRefused, so that the parent can see what reached
// the host's stderr.
const envMultiprocessingChild = "SNAKEPIT_TEST_MULTIPROCESSING_CHILD"

// multiprocessingAdapter runs its code argument: a command per way of
// starting a child process, and the thread pools that must keep working.
const multiprocessingAdapter = `import snakepit

@snakepit.command
def run(code):
    g = {}
    exec(code, g)
    return g.get("r")
`

// TestMultiprocessingRefused: in a thread-profile worker, every way of
// starting a multiprocessing child (ProcessPoolExecutor, Pool, Process
// with each start method, a manager, a lock needing the resource tracker)
// fails at once with a RuntimeError naming what was refused and the
// process profile; nothing reaches the host's stderr, no child process,
// named semaphore or shared memory segment is left, and the worker keeps working (a
// ThreadPoolExecutor too). It runs in a child process whose stderr it
// checks; TestVersions runs it on 3.11 as well.
func TestMultiprocessingRefused(t *testing.T) {
	if os.Getenv(envMultiprocessingChild) != "" {
		multiprocessingChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMultiprocessingRefused$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envMultiprocessingChild+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || !strings.Contains(stdout.String(), "--- PASS: TestMultiprocessingRefused") {
		t.Fatalf("child: got %v, want success; stdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	if stderr.Len() != 0 {
		t.Fatalf("child's stderr: got %q, want nothing", &stderr)
	}
}

func multiprocessingChild(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mp_adapter.py"), []byte(multiprocessingAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // hang guard
	defer cancel()
	w, err := gil.Start(ctx, gil.Config{Module: "mp_adapter", Paths: []string{dir}, Runtime: r})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	shm := shmNames(t)
	run := func(code string) (any, error) {
		args, err := pymarshal.Marshal(map[string]any{"code": code})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := w.Call(ctx, &worker.Request{Command: "run", Args: args, CorrelationID: "mp"})
		if err != nil {
			return nil, err
		}
		return pymarshal.Decode(resp.Result)
	}
	refused := []struct{ code, names string }{
		{"import concurrent.futures as c\nr = c.ProcessPoolExecutor(1).submit(pow, 2, 3).result()", "ProcessPoolExecutor"},
		{"import concurrent.futures as c\nwith c.ProcessPoolExecutor(1) as ex: r = ex.submit(pow, 2, 3).result()", "ProcessPoolExecutor"},
		{"import multiprocessing as m\nwith m.Pool(1) as p: r = p.apply(pow, (2, 3))", "multiprocessing.Pool"},
		{"import multiprocessing as m\nm.Process(target=print).start()", "multiprocessing.Process"},
		{"import multiprocessing as m\nm.get_context('fork').Process(target=print).start()", "multiprocessing.Process"},
		{"import multiprocessing as m\nm.get_context('spawn').Process(target=print).start()", "multiprocessing.Process"},
		{"import multiprocessing as m\nm.get_context('forkserver').Process(target=print).start()", "multiprocessing.Process"},
		{"import multiprocessing as m, concurrent.futures as c\nc.ProcessPoolExecutor(1, mp_context=m.get_context('spawn'))", "ProcessPoolExecutor"},
		{"import multiprocessing as m\nm.Manager()", "multiprocessing.Process"},
		{"import multiprocessing as m\nm.get_context('spawn').Lock()", "SemLock"},
		{"import multiprocessing.resource_tracker as rt\nrt.ensure_running()", "resource_tracker"},
		{"import multiprocessing.shared_memory as s\ns.SharedMemory(create=True, size=16)", "SharedMemory"},
	}
	for _, c := range refused {
		_, err := run(c.code)
		var pe *worker.PythonError
		if !errors.As(err, &pe) || pe.Type != "RuntimeError" || !strings.Contains(pe.Message, c.names) || !strings.Contains(pe.Message, "process profile") {
			t.Errorf("%s: got %v, want a RuntimeError naming %s and the process profile", c.code, err, c.names)
		}
	}
	// A thread pool starts no process.
	code := "import concurrent.futures as c\nwith c.ThreadPoolExecutor(2) as ex: r = ex.submit(pow, 2, 3).result()"
	if v, err := run(code); err != nil || v != int64(8) {
		t.Errorf("%s: got %v, %v, want 8", code, v, err)
	}
	if kids := childProcesses(t); len(kids) != 0 {
		t.Errorf("child processes: got %v, want none", kids)
	}
	if got := shmNames(t); !slices.Equal(got, shm) {
		t.Errorf("/dev/shm: got %v, want %v", got, shm)
	}
}

// childProcesses returns the PIDs of this process's children.
func childProcesses(t *testing.T) []int {
	t.Helper()
	procs, err := procfs.AllProcs()
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, p := range procs {
		if st, err := p.Stat(); err == nil && st.PPID == os.Getpid() {
			kids = append(kids, p.PID)
		}
	}
	return kids
}

// shmNames lists the named semaphores and the shared memory segments
// multiprocessing creates in /dev/shm.
func shmNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, pattern := range []string{"/dev/shm/sem.*", "/dev/shm/psm_*"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, m...)
	}
	return names
}
