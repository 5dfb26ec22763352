package pool_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pool/poolprom"
	"github.com/snakepit-go/snakepit/worker"
)

// autoAdapters are the adapters of the Auto tests: a plain one, one that
// imports an extension refusing sub-interpreters (3.12+: the hermetic
// 3.14 these tests run on), and one that does not compile.
var autoAdapters = map[string]string{
	"auto_plain.py": `
import os
import snakepit

@snakepit.command
def pid():
    return os.getpid()
`,
	"auto_single.py": `
import os
import _testsinglephase
import snakepit

@snakepit.command
def pid():
    return os.getpid()
`,
	"auto_syntax.py": "import snakepit\n\ndef broken(:\n    pass\n",
	// CPython 3.11 does not check extensions in sub-interpreters: this
	// adapter raises what 3.12+ raises for a single-phase-init extension
	// when it is imported in one.
	"auto_refuse311.py": `
import os
import _xxsubinterpreters as interpreters
if interpreters.get_current() != interpreters.get_main():
    raise ImportError("module auto_refuse311 does not support loading in subinterpreters")
import snakepit

@snakepit.command
def pid():
    return os.getpid()
`,
}

func autoDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range autoAdapters {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644))
	}
	return dir
}

// recordingHandler keeps the pool's log records.
type recordingHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

// count returns how many records' messages contain s.
func (h *recordingHandler) count(s string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.recs {
		if strings.Contains(r.Message, s) {
			n++
		}
	}
	return n
}

func newAutoPool(t *testing.T, module string, cfg pool.Config) (*pool.Pool, *recordingHandler, error) {
	t.Helper()
	rec := &recordingHandler{}
	cfg.Name, cfg.Profile, cfg.Module = "auto", pool.Auto, module
	cfg.Paths = []string{autoDir(t)}
	cfg.Logger = slog.New(rec)
	if cfg.Size == 0 {
		cfg.Size = 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := pool.New(ctx, cfg)
	if err == nil {
		t.Cleanup(func() { assert.NoError(t, p.Close(context.Background())) })
	}
	return p, rec, err
}

func effectiveMetric(t *testing.T, p *pool.Pool, want string) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(poolprom.NewCollector(p)))
	expected := `
# HELP snakepit_pool_effective_profile 1 for the profile the workers run (the one chosen for profile auto).
# TYPE snakepit_pool_effective_profile gauge
snakepit_pool_effective_profile{effective="` + want + `",pool="auto",profile="auto"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(expected), "snakepit_pool_effective_profile"))
}

func TestAutoPicksThreadForPlainAdapter(t *testing.T) {
	p, rec, err := newAutoPool(t, "auto_plain", pool.Config{})
	require.NoError(t, err)
	s := p.Stats()
	assert.Equal(t, pool.Auto, s.Profile, "Stats.Profile")
	assert.Equal(t, pool.Thread, s.Effective, "Stats.Effective")
	var pid int
	require.NoError(t, p.Call(context.Background(), "pid", nil, &pid))
	assert.Equal(t, os.Getpid(), pid, "a thread worker runs in this process")
	effectiveMetric(t, p, "thread")
	assert.Equal(t, 0, rec.count("starting process workers"), "fallback log records")
	assert.Equal(t, 1, rec.count("starting thread workers"), "decision log records")
}

// refusingModule is an adapter that refuses sub-interpreters on the
// Python the tests run on.
func refusingModule() string {
	if pymatrix.WantMinor() == 11 {
		return "auto_refuse311"
	}
	return "auto_single"
}

func TestAutoPicksProcessForSubinterpreterRefusal(t *testing.T) {
	// MaxCalls 1: the worker is replaced after its first call (it serves
	// until its replacement is ready), and the replacement must be a
	// process worker too.
	p, rec, err := newAutoPool(t, refusingModule(), pool.Config{Size: 1, MaxCalls: 1})
	require.NoError(t, err)
	s := p.Stats()
	assert.Equal(t, pool.Auto, s.Profile, "Stats.Profile")
	assert.Equal(t, pool.Process, s.Effective, "Stats.Effective")
	var pid1, pid2 int
	require.NoError(t, p.Call(context.Background(), "pid", nil, &pid1))
	require.Eventually(t, func() bool { return p.Stats().Recycled == 1 }, time.Minute, 10*time.Millisecond, "the worker is not recycled")
	require.NoError(t, p.Call(context.Background(), "pid", nil, &pid2))
	assert.NotEqual(t, os.Getpid(), pid1, "first worker: got this process's pid, want a child's")
	assert.NotEqual(t, os.Getpid(), pid2, "replacement: got this process's pid, want a child's")
	assert.NotEqual(t, pid1, pid2, "the second call should run on the replacement")
	assert.Equal(t, pool.Process, p.Stats().Effective, "Stats.Effective after a recycle")
	effectiveMetric(t, p, "process")
	assert.Equal(t, 1, rec.count("starting process workers"), "fallback log records")
}

func TestAutoDecidesOnceWithConcurrentStarts(t *testing.T) {
	p, rec, err := newAutoPool(t, refusingModule(), pool.Config{Size: 3, StartConcurrency: 3})
	require.NoError(t, err)
	assert.Equal(t, pool.Process, p.Stats().Effective, "Stats.Effective")
	assert.Equal(t, 3, p.Stats().Workers, "workers")
	assert.Equal(t, 1, rec.count("starting process workers"), "fallback log records")
}

func TestAutoReturnsOtherSetupErrors(t *testing.T) {
	for _, tc := range []struct {
		module, want string
	}{
		{"auto_syntax", "SyntaxError"},
		{"auto_missing", "ModuleNotFoundError"},
	} {
		t.Run(tc.module, func(t *testing.T) {
			_, rec, err := newAutoPool(t, tc.module, pool.Config{})
			require.Error(t, err)
			assert.ErrorIs(t, err, worker.ErrSetup)
			assert.NotErrorIs(t, err, worker.ErrNotSubinterpreterSafe)
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, 0, rec.count("starting process workers"), "fallback log records")
		})
	}
}

func TestAutoConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  pool.Config
		want string
	}{
		{"pipeline", pool.Config{PipelineDepth: 1}, "PipelineDepth needs the process profile"},
		{"forkserver", pool.Config{ForkServer: &pool.ForkServerOptions{}}, "ForkServer needs the process profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Profile, tc.cfg.Module = pool.Auto, "auto_plain"
			_, err := pool.New(context.Background(), tc.cfg)
			var ce *pool.ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	assert.Equal(t, "auto", pool.Auto.String())
}

// A pool that chooses its profile: thread workers when the adapter and
// the Python allow them, as here; process workers for an adapter that
// imports an extension refusing sub-interpreters (numpy on most versions).
func ExampleConfig_auto() {
	dir := writeAdapter(`
import snakepit

@snakepit.command
def total(prices):
    return sum(prices)
`)
	defer os.RemoveAll(dir)
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Auto, Module: "shop", Paths: []string{dir}, Size: 2})
	if err != nil {
		panic(err)
	}
	defer p.Close(ctx)

	var total int
	if err := p.Call(ctx, "total", map[string]any{"prices": []int{3, 4}}, &total); err != nil {
		panic(err)
	}
	fmt.Println(total, p.Stats().Effective)
	// Output: 7 thread
}
