package gil_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/gil"
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
	if rtErr != nil {
		t.Fatalf("load Python: %v", rtErr)
	}
	if got := rt.Version().Minor; got != pymatrix.WantMinor() {
		t.Fatalf("running Python 3.%d, want 3.%d", got, pymatrix.WantMinor())
	}
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
	if err := os.WriteFile(dir+"/uses_single_phase.py", []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := gil.Start(context.Background(), gil.Config{Module: "uses_single_phase", Paths: []string{dir}, Runtime: r})
	if r.Version().Minor < 12 {
		if err != nil {
			t.Fatalf("3.11: %v", err)
		}
		w.Close(context.Background())
		return
	}
	if !errors.Is(err, worker.ErrNotSubinterpreterSafe) || !errors.Is(err, worker.ErrSetup) {
		t.Fatalf("got %v, want ErrSetup and ErrNotSubinterpreterSafe", err)
	}
	if !strings.Contains(err.Error(), "process profile") {
		t.Fatalf("error %q does not name the process profile", err)
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := gil.Start(context.Background(), gil.Config{}); err == nil {
		t.Fatal("empty Config: got nil error")
	}
	if _, err := gil.Start(context.Background(), gil.Config{Module: "x", InterruptGrace: -1}); err == nil {
		t.Fatal("negative grace: got nil error")
	}
}
