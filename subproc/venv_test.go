package subproc_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pyenvtest"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/subproc"
)

// TestVenvInterpreter: a virtual environment's interpreter, named by
// Config.Python (as the interpreter or as the environment's directory) or
// by SNAKEPIT_PYTHON, runs the worker with the environment's packages and
// sys.prefix. SNAKEPIT_PYTHON ran the base interpreter.
func TestVenvInterpreter(t *testing.T) {
	v := pyenvtest.Venv311(t, false)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "venv_adapter.py"), []byte(`
import sys, snakepit
import `+pyenvtest.Module+` as pkg

@snakepit.command
def where():
    return {"prefix": sys.prefix, "executable": sys.executable, "pkg": pkg.WHERE}
`), 0o644))
	for _, c := range []struct{ name, python, env, exe string }{
		{"config", v.Python, "", v.Python},
		{"config-dir", v.Dir, "", filepath.Join(v.Dir, "bin", "python3")},
		{"env", "", v.Python, v.Python},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(locate.EnvLibPython, "")
			t.Setenv(locate.EnvPython, c.env)
			w, err := subproc.Start(context.Background(), subproc.Config{
				Module: "venv_adapter", Paths: []string{dir}, Python: c.python, Registry: testRegistry(t),
			})
			require.NoError(t, err)
			defer w.Close(context.Background())
			m := callMap(t, w, "where")
			assert.Equal(t, v.Dir, m["prefix"], "sys.prefix")
			assert.Equal(t, c.exe, m["executable"], "sys.executable")
			assert.Equal(t, filepath.Join(v.SitePackages, pyenvtest.Module, "__init__.py"), m["pkg"])
		})
	}
}

// TestEnvPythonIsNeverReplaced: the interpreter SNAKEPIT_PYTHON names is
// the one a worker runs, even one package locate cannot use (no shared
// libpython, which the process profile does not need); one that does not
// exist fails the start, where another Python (python3 on PATH) ran.
func TestEnvPythonIsNeverReplaced(t *testing.T) {
	t.Setenv(locate.EnvLibPython, "")
	t.Setenv(locate.EnvPython, filepath.Join(t.TempDir(), "no-such-python"))
	_, err := subproc.Start(context.Background(), subproc.Config{Module: "snakepit_conformance", Registry: testRegistry(t)})
	require.Error(t, err, "a SNAKEPIT_PYTHON that does not exist")
	assert.Contains(t, err.Error(), "no-such-python")

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "exe_adapter.py"), []byte(`
import sys, snakepit

@snakepit.command
def exe():
    return {"executable": sys.executable}
`), 0o644))
	static := pyenvtest.StaticPython311(t)
	t.Setenv(locate.EnvPython, static)
	exe, err := subproc.Interpreter("")
	require.NoError(t, err)
	assert.Equal(t, static, exe, "Interpreter reports what Start runs")
	w, err := subproc.Start(context.Background(), subproc.Config{Module: "exe_adapter", Paths: []string{dir}, Registry: testRegistry(t)})
	require.NoError(t, err, "a SNAKEPIT_PYTHON without a shared libpython")
	defer w.Close(context.Background())
	assert.Equal(t, static, callMap(t, w, "exe")["executable"])
}
