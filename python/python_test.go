package python_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/worker"
)

// TestPythonUnitTests runs the snakepit package's own unittest suite with
// the hermetic CPython 3.14 and with the system's CPython 3.11.
func TestPythonUnitTests(t *testing.T) {
	py, err := dist.Default()
	if err != nil {
		t.Fatal(err)
	}
	exes := map[string]string{"3.14": py.Executable, "3.11": "/usr/bin/python3.11"}
	for name, exe := range exes {
		t.Run(name, func(t *testing.T) {
			if _, err := os.Stat(exe); err != nil {
				t.Fatalf("%s: %v (CI installs python3.11)", exe, err)
			}
			cmd := exec.Command(exe, "-m", "unittest", "discover", "-v", "-s", "snakepit/tests", "-t", ".")
			cmd.Env = append(os.Environ(), "PYTHONPATH=.", "PYTHONDONTWRITEBYTECODE=1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("unittest on %s: %v\n%s", exe, err, out)
			}
			if !strings.Contains(string(out), "OK") {
				t.Fatalf("unexpected unittest output:\n%s", out)
			}
			t.Logf("%s", strings.TrimSpace(string(out[strings.LastIndex(string(out), "Ran "):])))
		})
	}
}

// TestPath writes the package once, returns the same directory again, and
// writes it again when the cache was cleared.
func TestPath(t *testing.T) {
	t.Setenv(python.EnvCacheDir, t.TempDir())
	dir, err := python.Path()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"__init__.py", "_adapter.py", "_dispatch.py", "_wire.py"} {
		want, _ := python.FS.ReadFile("snakepit/" + f)
		got, err := os.ReadFile(filepath.Join(dir, "snakepit", f))
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s: content differs from the embedded file (%v)", f, err)
		}
	}
	again, err := python.Path()
	if err != nil || again != dir {
		t.Fatalf("second Path: got %q, %v; want %q", again, err, dir)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	rewritten, err := python.Path()
	if err != nil || rewritten != dir {
		t.Fatalf("Path after the cache was cleared: got %q, %v; want %q", rewritten, err, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "snakepit", "_dispatch.py")); err != nil {
		t.Fatalf("not written again: %v", err)
	}
}

// TestCancelledError: a cancelled reply on a context whose deadline has
// passed, though its timer has not fired, matches DeadlineExceeded; one
// far from its deadline stays what Python said.
func TestCancelledError(t *testing.T) {
	cancelled := &worker.CallError{Command: "c", Err: python.ErrCancelled}
	past, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	late := lateCtx{past, time.Now().Add(-time.Millisecond)}
	if err := python.CancelledError(late, cancelled, "c", ""); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, python.ErrCancelled) {
		t.Fatalf("deadline passed: got %v, want DeadlineExceeded and ErrCancelled", err)
	}
	if err := python.CancelledError(past, cancelled, "c", ""); err != cancelled {
		t.Fatalf("deadline an hour away: got %v, want %v", err, cancelled)
	}
	ended, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := python.CancelledError(ended, cancelled, "c", ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: got %v, want context.Canceled", err)
	}
}

type lateCtx struct {
	context.Context
	d time.Time
}

func (c lateCtx) Deadline() (time.Time, bool) { return c.d, true }
