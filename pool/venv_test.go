package pool_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/pyenvtest"
	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/python/locate"
)

// venvAdapter imports the packages a virtual environment holds: one
// installed in its site-packages, one on a path its .pth file adds. where
// waits until n calls have arrived (each on its own worker, as a busy
// worker takes no other call) and tells where the worker runs.
var venvAdapter = `
import os, sys, time
import snakepit
import ` + pyenvtest.Module + ` as pkg
import ` + pyenvtest.ExtraModule + ` as extra

@snakepit.command
def where(rendezvous, n):
    os.makedirs(rendezvous, exist_ok=True)
    me = "%d-%d" % (os.getpid(), id(sys.modules))
    open(os.path.join(rendezvous, me), "w").close()
    deadline = time.monotonic() + 30
    while len(os.listdir(rendezvous)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("%d of %d calls arrived" % (len(os.listdir(rendezvous)), n))
        time.sleep(0.005)
    return {"worker": me, "pkg": pkg.WHERE, "extra": extra.WHERE, "prefix": sys.prefix,
            "exec_prefix": sys.exec_prefix, "executable": sys.executable, "base_prefix": sys.base_prefix,
            "pid": str(os.getpid())}
`

// Environment of the re-executed test binary of TestVenvBothProfiles.
const (
	envVenvRoute   = "SNAKEPIT_TEST_VENV_ROUTE" // "env" or "config"
	envVenvDir     = "SNAKEPIT_TEST_VENV_DIR"
	envVenvAdapter = "SNAKEPIT_TEST_VENV_ADAPTER"
	envVenvExtra   = "SNAKEPIT_TEST_VENV_EXTRA"
	envVenvSite    = "SNAKEPIT_TEST_VENV_SITE"
	envVenvBase    = "SNAKEPIT_TEST_VENV_BASE" // the base installation's sys.prefix
)

// TestVenvBothProfiles: a virtual environment of CPython 3.11, named by
// SNAKEPIT_PYTHON or by Config.Python (and one of the hermetic 3.14, by
// Config.Python), runs an adapter importing the
// environment's own packages (site-packages and a .pth file's directory)
// in both profiles, in every worker: the process profile runs the
// environment's interpreter; the thread profile loads the base's libpython
// and every sub-interpreter has the environment's sys.prefix,
// sys.exec_prefix and sys.executable. SNAKEPIT_PYTHON resolved to the base
// interpreter, and the thread profile ignored Config.Python: the imports
// failed. Each route runs in a re-executed test binary, as one process
// loads one libpython.
func TestVenvBothProfiles(t *testing.T) {
	if route := os.Getenv(envVenvRoute); route != "" {
		venvChild(t, route)
		return
	}
	if pymatrix.InChild() {
		t.Log("runs from the parent test process")
		return
	}
	adapters := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(adapters, "venv_adapter.py"), []byte(venvAdapter), 0o644))
	hermetic, err := dist.Default()
	require.NoError(t, err)
	for _, route := range []string{"env", "config", "hermetic"} {
		t.Run(route, func(t *testing.T) {
			// 3.11 named by SNAKEPIT_PYTHON or Config.Python, and the
			// hermetic 3.14 (its own initialisation API) by Config.Python.
			var v pyenvtest.Venv
			base := "/usr"
			if route == "hermetic" {
				v, base = pyenvtest.NewVenv(t, hermetic.Executable, false), hermetic.Home
			} else {
				v = pyenvtest.Venv311(t, false)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // hang guard
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestVenvBothProfiles$", "-test.v", "-test.count=1")
			for _, kv := range os.Environ() {
				// The child chooses its Python only as the route says.
				if k, _, _ := strings.Cut(kv, "="); k != locate.EnvPython && k != locate.EnvLibPython && k != locate.EnvPythonHome {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			cmd.Env = append(cmd.Env, envVenvRoute+"="+route, envVenvDir+"="+v.Dir, envVenvAdapter+"="+adapters,
				envVenvExtra+"="+v.Extra, envVenvSite+"="+v.SitePackages, envVenvBase+"="+base)
			out, err := cmd.CombinedOutput()
			require.NoError(t, ctx.Err(), "child: no end within the hang guard; output:\n%s", out)
			require.NoError(t, err, "child output:\n%s", out)
			require.Contains(t, string(out), "--- PASS: TestVenvBothProfiles", "child output:\n%s", out)
			t.Logf("child output:\n%s", out)
		})
	}
}

func venvChild(t *testing.T, route string) {
	dir := os.Getenv(envVenvDir)
	exe := filepath.Join(dir, "bin", "python")
	var python string
	switch route {
	case "env":
		t.Setenv(locate.EnvPython, exe)
	case "config", "hermetic":
		python = exe
	default:
		t.Fatalf("route %q", route)
	}
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		t.Run(profile.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "venv_adapter", Python: python,
				Paths: []string{os.Getenv(envVenvAdapter)}, Size: 2})
			require.NoError(t, err)
			defer p.Close(context.Background())
			type where struct {
				Worker, Pkg, Extra, Prefix, ExecPrefix, Executable, BasePrefix, PID string
			}
			var got [2]where
			var errs [2]error
			rendezvous := filepath.Join(t.TempDir(), "rendezvous")
			var wg sync.WaitGroup
			for i := range got {
				wg.Go(func() {
					var m map[string]string
					errs[i] = p.Call(ctx, "where", map[string]any{"rendezvous": rendezvous, "n": len(got)}, &m)
					got[i] = where{m["worker"], m["pkg"], m["extra"], m["prefix"], m["exec_prefix"], m["executable"], m["base_prefix"], m["pid"]}
				})
			}
			wg.Wait()
			for i, w := range got {
				require.NoError(t, errs[i], "call %d", i)
				assert.Equal(t, dir, w.Prefix, "sys.prefix")
				assert.Equal(t, dir, w.ExecPrefix, "sys.exec_prefix")
				assert.Equal(t, exe, w.Executable, "sys.executable")
				assert.Equal(t, os.Getenv(envVenvBase), w.BasePrefix, "sys.base_prefix")
				assert.Equal(t, filepath.Join(os.Getenv(envVenvSite), pyenvtest.Module, "__init__.py"), w.Pkg)
				assert.Equal(t, filepath.Join(os.Getenv(envVenvExtra), pyenvtest.ExtraModule+".py"), w.Extra)
				// The thread profile runs in this process, the process profile
				// in children.
				assert.Equal(t, profile == pool.Thread, w.PID == strconv.Itoa(os.Getpid()), "pid %s, this process %d", w.PID, os.Getpid())
			}
			assert.NotEqual(t, got[0].Worker, got[1].Worker, "the two calls ran on two workers")
		})
	}
}

// TestPythonWithoutLibPython: a CPython without a shared libpython, named
// by Config.Python or SNAKEPIT_PYTHON, runs the process profile; the thread
// profile fails with an error matching embed.ErrNoLibPython that says what
// to install or use instead.
func TestPythonWithoutLibPython(t *testing.T) {
	if pymatrix.InChild() {
		t.Log("runs from the parent test process")
		return
	}
	static := pyenvtest.StaticPython311(t)
	adapters := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(adapters, "static_adapter.py"), []byte(`
import sys, snakepit

@snakepit.command
def executable():
    return sys.executable
`), 0o644))
	for _, route := range []string{"config", "env"} {
		t.Run(route, func(t *testing.T) {
			cfg := pool.Config{Module: "static_adapter", Paths: []string{adapters}, Size: 1}
			if route == "env" {
				t.Setenv(locate.EnvLibPython, "")
				t.Setenv(locate.EnvPython, static)
			} else {
				cfg.Python = static
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := pool.New(ctx, cfg)
			require.ErrorIs(t, err, embed.ErrNoLibPython)
			var nl *embed.NoLibPythonError
			require.ErrorAs(t, err, &nl)
			assert.Equal(t, static, nl.Python.Executable)
			for _, want := range []string{static, "no libpython for", "apt-get install libpython3.11", "process profile", "python/dist"} {
				assert.Contains(t, err.Error(), want)
			}

			cfg.Profile = pool.Process
			p, err := pool.New(ctx, cfg)
			require.NoError(t, err)
			defer p.Close(context.Background())
			var exe string
			require.NoError(t, p.Call(ctx, "executable", nil, &exe))
			assert.Equal(t, static, exe)
		})
	}
}
