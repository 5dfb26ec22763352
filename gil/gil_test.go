package gil_test

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/internal/pyenvtest"
	"github.com/snakepit-go/snakepit/internal/pymatrix"
	_ "github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

var (
	rtOnce sync.Once
	rt     *embed.Runtime
	rtErr  error
)

func runtimeFor(t testing.TB) *embed.Runtime {
	t.Helper()
	rtOnce.Do(func() { rt, rtErr = embed.Default() })
	require.NoError(t, rtErr, "load Python")
	require.Equal(t, pymatrix.WantMinor(), rt.Version().Minor, "running Python 3.%d", rt.Version().Minor)
	return rt
}

func factory(t testing.TB) workertest.Factory {
	return func(ctx context.Context, o workertest.Options) (worker.Worker, error) {
		for k, v := range o.Env {
			os.Setenv(k, v)
		}
		return gil.Start(ctx, gil.Config{
			Module: o.Module, Paths: o.Paths, Runtime: runtimeFor(t),
			Logger: o.Logger, InterruptGrace: o.InterruptGrace, Host: o.Host, Concurrency: o.Concurrency,
		})
	}
}

// TestConformance runs the worker conformance suite on the hermetic 3.14.
func TestConformance(t *testing.T) {
	t.Logf("Python %s", runtimeFor(t).Version())
	workertest.Run(t, factory(t))
}

// TestVersions re-runs this package's tests (with the same -run pattern) on
// CPython 3.11.
func TestVersions(t *testing.T) { pymatrix.RunOn311(t) }

// TestNotSubinterpreterSafe: an adapter importing an extension that refuses
// sub-interpreters fails to start with the typed error naming the process
// profile (3.12+; 3.11 sub-interpreters accept any extension).
func TestNotSubinterpreterSafe(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	mod := "import _testsinglephase\n"
	if r.Version().Minor < 12 {
		mod = "import readline\n"
	}
	require.NoError(t, os.WriteFile(dir+"/uses_single_phase.py", []byte(mod), 0o644))
	w, err := gil.Start(context.Background(), gil.Config{Module: "uses_single_phase", Paths: []string{dir}, Runtime: r})
	if r.Version().Minor < 12 {
		require.NoError(t, err, "3.11")
		w.Close(context.Background())
		return
	}
	require.ErrorIs(t, err, worker.ErrNotSubinterpreterSafe)
	require.ErrorIs(t, err, worker.ErrSetup)
	assert.Contains(t, err.Error(), "process profile", "the error names the process profile")
}

func TestConfigErrors(t *testing.T) {
	_, err := gil.Start(context.Background(), gil.Config{})
	assert.Error(t, err, "empty Config")
	_, err = gil.Start(context.Background(), gil.Config{Module: "x", InterruptGrace: -1})
	assert.Error(t, err, "negative grace")
}

// TestPythonWithoutLibPython: Config.Python naming a CPython without a
// shared library fails to start with an error matching ErrSetup and
// embed.ErrNoLibPython, naming the interpreter and the process profile.
func TestPythonWithoutLibPython(t *testing.T) {
	static := pyenvtest.StaticPython311(t)
	_, err := gil.Start(context.Background(), gil.Config{Module: "x", Python: static})
	require.ErrorIs(t, err, worker.ErrSetup)
	require.ErrorIs(t, err, embed.ErrNoLibPython)
	assert.Contains(t, err.Error(), static)
	assert.Contains(t, err.Error(), "process profile")
	_, err = gil.LoadRuntimeFor("", static)
	require.ErrorIs(t, err, embed.ErrNoLibPython)
}
