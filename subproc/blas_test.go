package subproc_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/procfs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const blasAdapter = `
import os
import snakepit

VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

@snakepit.command
def threads():
    return {k: os.environ.get(k, "unset") for k in VARS}

@snakepit.command
def numpy_threads():
    # The thread count OpenBLAS (Debian's numpy's BLAS when
    # libopenblas0-pthread provides libblas.so.3) took from the
    # environment when numpy loaded it; blas "" when numpy's BLAS is
    # another.
    import ctypes, numpy
    libs = {line.split()[-1] for line in open("/proc/self/maps") if "libopenblas" in line}
    if not libs:
        return {"blas": "", "threads": 0, "cpus": os.cpu_count()}
    lib = sorted(libs)[0]
    return {"blas": lib, "threads": ctypes.CDLL(lib).openblas_get_num_threads(), "cpus": os.cpu_count()}
`

func blasDir(t *testing.T) string {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blas_adapter.py"), []byte(blasAdapter), 0o644))
	return dir
}

// unsetenv unsets k for the test, restoring it after.
func unsetenv(t *testing.T, k string) {
	t.Helper()
	t.Setenv(k, "") // restores the old value at the end
	require.NoError(t, os.Unsetenv(k))
}

func callMap(t *testing.T, w worker.Worker, command string) map[string]any {
	t.Helper()
	args, err := pymarshal.Marshal(map[string]any{})
	require.NoError(t, err)
	resp, err := w.Call(context.Background(), &worker.Request{Command: command, Args: args})
	require.NoError(t, err)
	v, err := pymarshal.Decode(resp.Result)
	require.NoError(t, err)
	m, ok := v.(map[string]any)
	require.True(t, ok, "result %T, want a dict", v)
	return m
}

// TestBLASThreadDefaults: a worker's native math libraries get one thread
// each by default (OPENBLAS_NUM_THREADS and the rest are 1), another count
// when BLASThreads says so, none of the variables when it is negative, and
// the user's own value wherever the host's environment or Env sets one.
func TestBLASThreadDefaults(t *testing.T) {
	for _, k := range subproc.BLASThreadVars {
		unsetenv(t, k)
	}
	dir := blasDir(t)
	all := func(v string) map[string]any {
		m := map[string]any{}
		for _, k := range subproc.BLASThreadVars {
			m[k] = v
		}
		return m
	}
	with := func(m map[string]any, k, v string) map[string]any {
		m[k] = v
		return m
	}
	for _, c := range []struct {
		name    string
		threads int
		env     []string
		host    map[string]string
		want    map[string]any
	}{
		{name: "default", want: all("1")},
		{name: "three", threads: 3, want: all("3")},
		{name: "off", threads: -1, want: all("unset")},
		{name: "host", host: map[string]string{"OMP_NUM_THREADS": "4"}, want: with(all("1"), "OMP_NUM_THREADS", "4")},
		{name: "host-off", threads: -1, host: map[string]string{"OMP_NUM_THREADS": "4"}, want: with(all("unset"), "OMP_NUM_THREADS", "4")},
		{name: "env", threads: 3, env: []string{"MKL_NUM_THREADS=2"}, want: with(all("3"), "MKL_NUM_THREADS", "2")},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.host {
				t.Setenv(k, v)
			}
			w, err := subproc.Start(context.Background(), subproc.Config{
				Module: "blas_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t),
				BLASThreads: c.threads, Env: c.env,
			})
			require.NoError(t, err)
			defer w.Close(context.Background())
			assert.Equal(t, c.want, callMap(t, w, "threads"))
		})
	}
}

// TestBLASThreadsNumpy: numpy on the system CPython 3.11 (Debian's
// python3-numpy, with libopenblas0-pthread as its BLAS) starts OpenBLAS
// with the thread count the worker's environment gives: one by default.
func TestBLASThreadsNumpy(t *testing.T) {
	for _, k := range subproc.BLASThreadVars {
		unsetenv(t, k)
	}
	dir := blasDir(t)
	for _, threads := range []int{0, 2} {
		w, err := subproc.Start(context.Background(), subproc.Config{
			Module: "blas_adapter", Paths: []string{dir}, Python: pymatrix.Python311(t).Executable, Registry: testRegistry(t),
			BLASThreads: threads,
		})
		require.NoError(t, err)
		m := callMap(t, w, "numpy_threads")
		require.NoError(t, w.Close(context.Background()))
		require.NotEmpty(t, m["blas"], "numpy's BLAS is not OpenBLAS (install libopenblas0-pthread)")
		want := int64(max(threads, 1))
		want = min(want, m["cpus"].(int64)) // OpenBLAS starts at most a thread per CPU
		assert.Equal(t, want, m["threads"], "BLASThreads %d: OpenBLAS threads (%s)", threads, m["blas"])
	}
}

// TestBLASThreadsForkServer: the fork server's template gets the thread
// counts too (a math library its imports load keeps them in every forked
// worker), BLASThreads' or the default.
func TestBLASThreadsForkServer(t *testing.T) {
	for _, k := range subproc.BLASThreadVars {
		unsetenv(t, k)
	}
	dir := blasDir(t)
	for _, c := range []struct {
		threads int
		want    string
	}{{0, "1"}, {5, "5"}} {
		fs, err := subproc.StartForkServer(context.Background(), subproc.ForkServerConfig{
			Module: "blas_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t), BLASThreads: c.threads,
		})
		require.NoError(t, err)
		proc, err := procfs.NewProc(fs.PID())
		require.NoError(t, err)
		env, err := proc.Environ()
		require.NoError(t, err)
		fs.Close(context.Background())
		for _, k := range subproc.BLASThreadVars {
			assert.True(t, slices.Contains(env, k+"="+c.want), "BLASThreads %d: template environment lacks %s=%s: %s",
				c.threads, k, c.want, strings.Join(env, " "))
		}
	}
}
