package gil_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

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
// child) it also imports scipy.spatial, a real pybind11 module, and checks
// that a second worker importing numpy (which scipy needs, and which loads
// in one interpreter per process) is refused with
// worker.ErrNotSubinterpreterSafe.
func TestGILStateEnsureInInit(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	src := gilStateAdapter
	if r.Version().Minor == 11 {
		// Debian's scipy for the system 3.11 (.ci/run installs it).
		src = "import sys\nsys.path.append('/usr/lib/python3/dist-packages')\nimport scipy.spatial\n" + src
	}
	if err := os.WriteFile(filepath.Join(dir, "gilstate_adapter.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	// A start that deadlocks ends at this deadline (hang guard).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
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
	if r.Version().Minor != 11 {
		return
	}
	_, err = gil.Start(ctx, gil.Config{Module: "gilstate_adapter", Paths: []string{dir}, Runtime: r})
	if !errors.Is(err, worker.ErrNotSubinterpreterSafe) || !errors.Is(err, worker.ErrSetup) {
		t.Fatalf("second worker: got %v, want ErrSetup and ErrNotSubinterpreterSafe", err)
	}
}
