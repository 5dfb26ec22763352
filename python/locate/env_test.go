package locate_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pyenvtest"
	"github.com/snakepit-go/snakepit/python/locate"
)

// TestVenvFromEnvironment: SNAKEPIT_PYTHON naming a virtual environment's
// interpreter finds that interpreter, with the environment as Prefix and
// the base installation's library and home. The interpreter, a symlink to
// the base's, was resolved to the base's, so the process profile ran the
// base interpreter without the environment's packages.
func TestVenvFromEnvironment(t *testing.T) {
	v := pyenvtest.Venv311(t, false)
	t.Setenv(locate.EnvLibPython, "")
	t.Setenv(locate.EnvPython, v.Python)
	py, err := locate.Find(locate.Options{})
	require.NoError(t, err)
	assertVenv(t, v, py, "env")
}

// TestVenvByDirectory: the environment's directory, given as the
// interpreter or as the library (options or environment), is its
// bin/python3.
func TestVenvByDirectory(t *testing.T) {
	v := pyenvtest.Venv311(t, true)
	t.Setenv(locate.EnvLibPython, "")
	t.Setenv(locate.EnvPython, "")
	for _, opts := range []locate.Options{{Executable: v.Dir}, {LibPython: v.Dir}, {LibPython: v.Dir, Executable: filepath.Join(v.Dir, "bin", "python3")}} {
		py, err := locate.Find(opts)
		require.NoError(t, err, "%+v", opts)
		assertVenv(t, v, py, "options")
	}
	t.Setenv(locate.EnvLibPython, v.Dir)
	py, err := locate.Find(locate.Options{})
	require.NoError(t, err)
	assertVenv(t, v, py, "env")
}

func assertVenv(t *testing.T, v pyenvtest.Venv, py locate.Python, source string) {
	t.Helper()
	assert.True(t, strings.HasPrefix(py.Executable, v.Dir+"/bin/python"), "Executable: got %s, want the environment's %s", py.Executable, v.Python)
	assert.Equal(t, v.Dir, py.Prefix, "Prefix")
	assert.Equal(t, "/usr", py.Home, "Home: the base installation")
	assert.True(t, py.Venv(), "Venv")
	assert.Equal(t, source, py.Source)
	require.NotEmpty(t, py.LibPython, "LibPython: the base's")
	got, _ := filepath.EvalSymlinks(py.LibPython)
	want, _ := filepath.EvalSymlinks("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")
	assert.Equal(t, want, got, "LibPython: the base's")
}

// TestStaticPython: an interpreter without a shared libpython named
// explicitly is found (the process profile runs it) with no library.
func TestStaticPython(t *testing.T) {
	exe := pyenvtest.StaticPython311(t)
	py, err := locate.Find(locate.Options{Executable: exe})
	require.NoError(t, err)
	assert.Empty(t, py.LibPython)
	assert.Equal(t, exe, py.Executable)
	assert.Equal(t, filepath.Dir(filepath.Dir(exe)), py.Home)
	assert.True(t, strings.HasPrefix(py.Version, "3.11."), "version %s", py.Version)
}

// TestNotFoundSaysWhatEachLacks: the search of PATH lists each candidate
// and what it lacks: a shared library (with how to get one), a working
// interpreter; a second name for one interpreter is tried once.
func TestNotFoundSaysWhatEachLacks(t *testing.T) {
	static := pyenvtest.StaticPython311(t)
	dir := t.TempDir()
	require.NoError(t, os.Symlink(static, filepath.Join(dir, "python3")))
	require.NoError(t, os.Symlink(static, filepath.Join(dir, "python3.11")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "python"), []byte("#!/bin/sh\necho broken >&2\nexit 3\n"), 0o755))
	t.Setenv(locate.EnvLibPython, "")
	t.Setenv(locate.EnvPython, "")
	t.Setenv("PATH", dir)
	_, err := locate.Find(locate.Options{})
	require.ErrorIs(t, err, locate.ErrNotFound)
	msg := err.Error()
	for _, want := range []string{
		"python3 on PATH (" + dir + "/python3): CPython 3.11.",
		"no shared libpython", "apt-get install libpython3.11", "process profile",
		"python3.11 on PATH (" + dir + "/python3.11): the same interpreter as python3",
		"python on PATH (" + dir + "/python): query", "broken",
		"not on PATH: python3.14, python3.13, python3.12",
	} {
		assert.Contains(t, msg, want)
	}
}
