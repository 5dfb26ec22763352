package python_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/worker"
)

// TestPythonUnitTests runs the snakepit package's own unittest suite with
// the hermetic CPython 3.14 and with the system's CPython 3.11.
func TestPythonUnitTests(t *testing.T) {
	py, err := dist.Default()
	require.NoError(t, err)
	exes := map[string]string{"3.14": py.Executable, "3.11": "/usr/bin/python3.11"}
	for name, exe := range exes {
		t.Run(name, func(t *testing.T) {
			_, err := os.Stat(exe)
			require.NoError(t, err, "CI installs python3.11")
			cmd := exec.Command(exe, "-m", "unittest", "discover", "-v", "-s", "snakepit/tests", "-t", ".")
			cmd.Env = append(os.Environ(), "PYTHONPATH=.", "PYTHONDONTWRITEBYTECODE=1")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "unittest on %s:\n%s", exe, out)
			require.Contains(t, string(out), "OK", "unittest output")
			t.Logf("%s", strings.TrimSpace(string(out[strings.LastIndex(string(out), "Ran "):])))
		})
	}
}

// TestPath writes the package once, returns the same directory again, and
// writes it again when the cache was cleared.
func TestPath(t *testing.T) {
	t.Setenv(python.EnvCacheDir, t.TempDir())
	dir, err := python.Path()
	require.NoError(t, err)
	for _, f := range []string{"__init__.py", "_adapter.py", "_dispatch.py", "_wire.py"} {
		want, _ := python.FS.ReadFile("snakepit/" + f)
		got, err := os.ReadFile(filepath.Join(dir, "snakepit", f))
		require.NoError(t, err, f)
		require.Equal(t, string(want), string(got), "%s: content differs from the embedded file", f)
	}
	again, err := python.Path()
	require.NoError(t, err, "second Path")
	require.Equal(t, dir, again, "second Path")
	require.NoError(t, os.RemoveAll(dir))
	rewritten, err := python.Path()
	require.NoError(t, err, "Path after the cache was cleared")
	require.Equal(t, dir, rewritten, "Path after the cache was cleared")
	require.FileExists(t, filepath.Join(dir, "snakepit", "_dispatch.py"), "not written again")
}

// TestCancelledError: a cancelled reply on a context whose deadline has
// passed, though its timer has not fired, matches DeadlineExceeded; one
// far from its deadline stays what Python said.
func TestCancelledError(t *testing.T) {
	cancelled := &worker.CallError{Command: "c", Err: python.ErrCancelled}
	past, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	late := lateCtx{past, time.Now().Add(-time.Millisecond)}
	err := python.CancelledError(late, cancelled, "c", "")
	require.ErrorIs(t, err, context.DeadlineExceeded, "deadline passed")
	require.ErrorIs(t, err, python.ErrCancelled, "deadline passed")
	require.Same(t, cancelled, python.CancelledError(past, cancelled, "c", ""), "deadline an hour away")
	ended, cancel2 := context.WithCancel(context.Background())
	cancel2()
	require.ErrorIs(t, python.CancelledError(ended, cancelled, "c", ""), context.Canceled, "cancelled")
}

type lateCtx struct {
	context.Context
	d time.Time
}

func (c lateCtx) Deadline() (time.Time, bool) { return c.d, true }
