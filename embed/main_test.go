package embed_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/python/locate"
)

// The suite runs in this process on the hermetic CPython 3.14, and again in a
// child process (the test binary re-executed) on the system's CPython 3.11:
// one process can load only one libpython.
const (
	envChild     = "SNAKEPIT_TEST_CHILD"      // set in the child: the Python it runs
	envWantMinor = "SNAKEPIT_TEST_WANT_MINOR" // the minor version the child must see
	envPy311     = "SNAKEPIT_TEST_PYTHON311"  // override: a python3.11 executable
)

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

func wantMinor() int {
	if s := os.Getenv(envWantMinor); s != "" {
		n, _ := strconv.Atoi(s)
		return n
	}
	return 14
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
	if v.Major != 3 || v.Minor != wantMinor() {
		t.Fatalf("got Python %s, want 3.%d", v, wantMinor())
	}
	if got, want := r.OwnGIL(), v.Minor >= 12; got != want {
		t.Fatalf("OwnGIL: got %v, want %v", got, want)
	}
	if os.Getenv(envChild) == "" {
		if _, err := dist.Default(); err != nil {
			t.Fatalf("the parent must run the hermetic Python: %v", err)
		}
	}
}

// python311 finds Debian's CPython 3.11 (CI installs it).
func python311(t *testing.T) locate.Python {
	t.Helper()
	exe := os.Getenv(envPy311)
	if exe == "" {
		exe = "/usr/bin/python3.11"
		if _, err := os.Stat(exe); err != nil {
			if exe, err = exec.LookPath("python3.11"); err != nil {
				t.Fatalf("CPython 3.11 not found (install python3.11 and libpython3.11, or set %s)", envPy311)
			}
		}
	}
	py, err := locate.Query(exe)
	if err != nil {
		t.Fatalf("query %s: %v", exe, err)
	}
	if py.LibPython == "" {
		t.Fatalf("%s has no shared libpython (install libpython3.11)", exe)
	}
	return py
}

// TestVersionMatrix re-runs this test binary, with the same -run pattern, on
// CPython 3.11 in a child process.
func TestVersionMatrix(t *testing.T) {
	if os.Getenv(envChild) != "" {
		t.Logf("child process: running on %s", os.Getenv(envChild))
		return
	}
	py := python311(t)
	args := []string{"-test.count=1", "-test.timeout=10m"}
	if f := flag.Lookup("test.run"); f != nil && f.Value.String() != "" {
		args = append(args, "-test.run="+f.Value.String())
	}
	if f := flag.Lookup("test.v"); f != nil && f.Value.String() == "true" {
		args = append(args, "-test.v")
	}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(),
		envChild+"=CPython "+py.Version,
		envWantMinor+"=11",
		locate.EnvLibPython+"="+py.LibPython,
		locate.EnvPython+"="+py.Executable,
	)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		t.Log("3.11 | " + line)
	}
	if err != nil {
		t.Fatalf("suite on CPython %s (%s): %v", py.Version, py.LibPython, err)
	}
}

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
