package embed_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/python/locate"
)

// The suite runs in this process on the hermetic CPython 3.14, and again in a
// child process (the test binary re-executed) on the system's CPython 3.11:
// one process can load only one libpython. See internal/pymatrix.

// leakMarker is put in PYTHONPATH and PYTHONHOME before Python starts: the
// embedded interpreter must ignore both (a leaked PYTHONHOME would even stop
// it from starting).
const leakMarker = "/nonexistent/snakepit-environment-leak"

func TestMain(m *testing.M) {
	os.Setenv("PYTHONPATH", leakMarker)
	os.Setenv("PYTHONHOME", leakMarker)
	os.Exit(m.Run())
}

var (
	rtOnce sync.Once
	rt     *embed.Runtime
	rtErr  error
)

// testRuntime loads the Python this process tests: the hermetic 3.14, or in
// a child the library named by SNAKEPIT_LIBPYTHON.
func testRuntime(t testing.TB) *embed.Runtime {
	t.Helper()
	rtOnce.Do(func() {
		py, err := embed.Locate(locate.Options{})
		if err != nil {
			rtErr = err
			return
		}
		rt, rtErr = embed.Load(py)
	})
	if rtErr != nil {
		t.Fatalf("load Python: %v", rtErr)
	}
	return rt
}

func newInterp(t testing.TB, cfg embed.InterpreterConfig) *embed.Interpreter {
	t.Helper()
	in, err := testRuntime(t).NewInterpreter(cfg)
	if err != nil {
		t.Fatalf("NewInterpreter: %v", err)
	}
	t.Cleanup(func() {
		if err := in.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return in
}

// TestVersion shows which Python this process runs.
func TestVersion(t *testing.T) {
	r := testRuntime(t)
	v := r.Version()
	t.Logf("Python %s from %s (%s); own GIL per sub-interpreter: %v", v.Full, r.Python().LibPython, r.Python().Source, r.OwnGIL())
	if v.Major != 3 || v.Minor != pymatrix.WantMinor() {
		t.Fatalf("got Python %s, want 3.%d", v, pymatrix.WantMinor())
	}
	if got, want := r.OwnGIL(), v.Minor >= 12; got != want {
		t.Fatalf("OwnGIL: got %v, want %v", got, want)
	}
	if !pymatrix.InChild() {
		if _, err := dist.Default(); err != nil {
			t.Fatalf("the parent must run the hermetic Python: %v", err)
		}
	}
}

// TestVersionMatrix re-runs this test binary, with the same -run pattern, on
// CPython 3.11 in a child process.
func TestVersionMatrix(t *testing.T) { pymatrix.RunOn311(t) }

func mustEval(t *testing.T, in *embed.Interpreter, expr string) any {
	t.Helper()
	v, err := in.Eval(context.Background(), expr)
	if err != nil {
		t.Fatalf("Eval(%q): %v", expr, err)
	}
	return v
}

func mustExec(t *testing.T, in *embed.Interpreter, code string) {
	t.Helper()
	if err := in.Exec(context.Background(), code); err != nil {
		t.Fatalf("Exec: %v", err)
	}
}

func fmtV(v any) string { return fmt.Sprintf("%#v", v) }
