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
