package gil_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// gilStateAdapter calls PyGILState_Ensure at import time, with the GIL
// held, as every pybind11 module's init does, and calls it again in its
// handler.
const gilStateAdapter = `import ctypes, snakepit
_api = ctypes.pythonapi
_api.PyGILState_Ensure.restype = ctypes.c_int
_api.PyGILState_Release.argtypes = [ctypes.c_int]

def _ensure_release():
    _api.PyGILState_Release(_api.PyGILState_Ensure())
    return True

_ensure_release()

@snakepit.command
def ensure():
    return _ensure_release()
`

// TestGILStateEnsureInInit: an adapter whose import calls
// PyGILState_Ensure on the worker's home thread (pybind11 modules do in
// their init) starts, and its handler can call it too. On 3.11 the home
// thread's PyGILState slot was empty, so the call waited for the GIL its
// own thread held and Start ran into its deadline. On 3.11 (TestVersions'
// child) it also checks that an adapter importing scipy.spatial, a real
// pybind11 module, is refused with worker.ErrNotSubinterpreterSafe: scipy
// needs numpy, which the thread profile refuses on 3.11 (see
// TestNumpyRefusedOn311).
func TestGILStateEnsureInInit(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "gilstate_adapter.py"), []byte(gilStateAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	// A start that deadlocks ends at this deadline (hang guard).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r.Version().Minor == 11 {
		// Debian's scipy for the system 3.11 (.ci/run installs it).
		src := "import sys\nsys.path.append('/usr/lib/python3/dist-packages')\nimport scipy.spatial\n" + gilStateAdapter
		if err := os.WriteFile(filepath.Join(dir, "scipy_adapter.py"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := gil.Start(ctx, gil.Config{Module: "scipy_adapter", Paths: []string{dir}, Runtime: r})
		if !errors.Is(err, worker.ErrNotSubinterpreterSafe) || !strings.Contains(err.Error(), "numpy") {
			t.Fatalf("an adapter importing scipy on 3.11: got %v, want ErrNotSubinterpreterSafe naming numpy", err)
		}
	}
	w, err := gil.Start(ctx, gil.Config{Module: "gilstate_adapter", Paths: []string{dir}, Runtime: r})
	if err != nil {
		t.Fatalf("got %v, want a started worker", err)
	}
	defer w.Close(context.Background())
	args, err := pymarshal.Marshal(map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := w.Call(ctx, &worker.Request{Command: "ensure", Args: args, CorrelationID: "c"})
	if err != nil {
		t.Fatalf("call: got %v, want nil", err)
	}
	var ok bool
	if err := pymarshal.Unmarshal(resp.Result, &ok); err != nil || !ok {
		t.Fatalf("call: got %v, %v, want true", ok, err)
	}
}

// TestNumpyRefusedOn311: on 3.11, whose sub-interpreters do not check
// single-phase extensions, numpy loads in one sub-interpreter, and a
// sub-interpreter importing it after that one ended crashed the host (a
// segmentation fault: a recycled thread worker, or a second pool). The
// thread profile refuses numpy there, as 3.12+ do, with an error matching
// worker.ErrNotSubinterpreterSafe, at start (an adapter importing it) and
// in a call, in worker after worker.
func TestNumpyRefusedOn311(t *testing.T) {
	r := runtimeFor(t)
	if r.Version().Minor != 11 {
		return // 3.12+ refuse single-phase extensions themselves; the hermetic 3.14 has no numpy
	}
	dir := t.TempDir()
	const lazy = "import snakepit\n\n@snakepit.command\ndef use():\n    import numpy\n    return int(numpy.arange(10).sum())\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "numpy_lazy.py"), []byte(lazy), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "numpy_eager.py"), []byte("import numpy\n"+lazy), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args, err := pymarshal.Marshal(map[string]any{})
	require.NoError(t, err)
	for i := range 3 {
		_, err := gil.Start(ctx, gil.Config{Module: "numpy_eager", Paths: []string{dir}, Runtime: r})
		require.ErrorIs(t, err, worker.ErrNotSubinterpreterSafe, "worker %d importing numpy at start", i)
		require.ErrorIs(t, err, worker.ErrSetup)

		w, err := gil.Start(ctx, gil.Config{Module: "numpy_lazy", Paths: []string{dir}, Runtime: r})
		require.NoError(t, err)
		_, err = w.Call(ctx, &worker.Request{Command: "use", Args: args, CorrelationID: "c"})
		require.ErrorIs(t, err, worker.ErrNotSubinterpreterSafe, "worker %d importing numpy in a call", i)
		require.NoError(t, w.Close(ctx))
	}
}

// envGILStateChild makes the test binary, re-executed, run the body of
// TestGILStateEnsureAcrossWorkers: a deadlock there holds the GIL of every
// 3.11 interpreter for good, which only ending the process undoes.
const envGILStateChild = "SNAKEPIT_TEST_GILSTATE_CHILD"

// TestGILStateEnsureAcrossWorkers: handlers of two workers calling
// PyGILState_Ensure (as pybind11 functions calling back into Python do),
// from one goroutine locked to its OS thread, both return. On 3.11 a
// thread's PyGILState slot names one thread state, that of the first
// interpreter the thread ran: running another interpreter's handler on
// that thread made PyGILState_Ensure wait for the GIL the thread held. It
// runs in a child process, ended if it hangs.
func TestGILStateEnsureAcrossWorkers(t *testing.T) {
	if os.Getenv(envGILStateChild) != "" {
		gilStateChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // hang guard
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGILStateEnsureAcrossWorkers$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envGILStateChild+"=1")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("child: got no end within the hang guard (a handler calling PyGILState_Ensure deadlocked); output:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: TestGILStateEnsureAcrossWorkers") {
		t.Fatalf("child: got %v, want success; output:\n%s", err, out)
	}
}

func gilStateChild(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "gilstate_adapter.py"), []byte(gilStateAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	var ws []*gil.Worker
	for range 2 {
		w, err := gil.Start(context.Background(), gil.Config{Module: "gilstate_adapter", Paths: []string{dir}, Runtime: r})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close(context.Background())
		ws = append(ws, w)
	}
	args, err := pymarshal.Marshal(map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// One OS thread calls both workers; a context that cannot end
		// runs each call on it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer embed.ReleaseThread()
		for range 2 {
			for i, w := range ws {
				if _, err := w.Call(context.Background(), &worker.Request{Command: "ensure", Args: args, CorrelationID: "c"}); err != nil {
					done <- fmt.Errorf("worker %d: %w", i, err)
					return
				}
			}
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("got %v, want nil", err)
	}
}
