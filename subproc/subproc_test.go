package subproc_test

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"

	_ "github.com/snakepit-go/snakepit/python/dist"
)

var (
	regOnce sync.Once
	reg     *subproc.Registry
	regErr  error
)

// testRegistry is a registry in a directory of this test run.
func testRegistry(t testing.TB) *subproc.Registry {
	t.Helper()
	regOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snakepit-registry-test-")
		if err != nil {
			regErr = err
			return
		}
		reg, _, regErr = subproc.OpenRegistry(dir)
	})
	require.NoError(t, regErr)
	return reg
}

// pythonExe is the interpreter this process tests: the hermetic 3.14, or
// 3.11 in the re-executed child.
func pythonExe(t testing.TB) string {
	t.Helper()
	py, err := locate.Find(locate.Options{})
	require.NoError(t, err)
	major, minor := py.MajorMinor()
	require.Equal(t, [2]int{3, pymatrix.WantMinor()}, [2]int{major, minor}, "found Python %s (%s)", py.Version, py.Executable)
	return py.Executable
}

func factory(t testing.TB) workertest.Factory {
	return factoryWith(t, nil)
}

// factoryWith is factory with the Config changed by edit (nil: as is),
// which sees the suite's options.
func factoryWith(t testing.TB, edit func(*subproc.Config, workertest.Options)) workertest.Factory {
	return func(ctx context.Context, o workertest.Options) (worker.Worker, error) {
		var env []string
		for k, v := range o.Env {
			env = append(env, k+"="+v)
		}
		cfg := subproc.Config{
			Module: o.Module, Paths: o.Paths, Python: pythonExe(t), Env: env,
			Logger: o.Logger, InterruptGrace: o.InterruptGrace, Registry: testRegistry(t), Host: o.Host,
			Concurrency: o.Concurrency,
		}
		if edit != nil {
			edit(&cfg, o)
		}
		return subproc.Start(ctx, cfg)
	}
}

func TestConformance(t *testing.T) {
	t.Logf("Python %s", pythonExe(t))
	workertest.Run(t, factory(t))
}

// TestVersions re-runs this package's tests on CPython 3.11.
func TestVersions(t *testing.T) { pymatrix.RunOn311(t) }

// TestConformanceConcurrent runs the conformance suite against workers in
// the concurrent mode (concurrency 4, a pipeline of 2).
func TestConformanceConcurrent(t *testing.T) {
	workertest.Run(t, factoryWith(t, func(c *subproc.Config, o workertest.Options) {
		c.Concurrency, c.PipelineDepth = max(o.Concurrency, 4), 2
	}))
}

// TestConformanceSequential runs the conformance suite against workers in
// the sequential pipelined mode (concurrency 1, a pipeline of 2), or the
// concurrent mode where the suite asks for more than one call at once.
func TestConformanceSequential(t *testing.T) {
	workertest.Run(t, factoryWith(t, func(c *subproc.Config, _ workertest.Options) { c.PipelineDepth = 2 }))
}
