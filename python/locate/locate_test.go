package locate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// debian311 is Debian's CPython 3.11, which CI installs.
const (
	debianLib = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"
	debianExe = "/usr/bin/python3.11"
)

func TestFromLibraryOnly(t *testing.T) {
	t.Setenv(EnvPython, "")
	t.Setenv(EnvLibPython, debianLib)
	py, err := Find(Options{})
	require.NoError(t, err)
	assert.Equal(t, "/usr", py.Home)
	assert.Equal(t, debianExe, py.Executable)
	assert.Equal(t, "3.11", py.Version)
	assert.Equal(t, "env", py.Source)
	assert.False(t, py.Venv(), "a bare library is no virtual environment")
}

func TestFromExecutableOnly(t *testing.T) {
	py, err := Find(Options{Executable: debianExe})
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(py.Version, "3.11."), "version: got %s, want 3.11.x", py.Version)
	assert.Equal(t, "/usr", py.Home)
	assert.Equal(t, "/usr", py.Prefix)
	assert.Equal(t, debianExe, py.Executable)
	assert.Equal(t, "options", py.Source)
	assert.False(t, py.Venv())
	lib, _ := filepath.EvalSymlinks(py.LibPython)
	want, _ := filepath.EvalSymlinks(debianLib)
	assert.Equal(t, want, lib, "LibPython")
	major, minor := py.MajorMinor()
	assert.Equal(t, [2]int{3, 11}, [2]int{major, minor}, "MajorMinor")
}

func TestExplicitBeatsEnvironment(t *testing.T) {
	t.Setenv(EnvLibPython, "/nonexistent/libpython3.99.so")
	py, err := Find(Options{LibPython: debianLib})
	require.NoError(t, err)
	assert.Equal(t, debianLib, py.LibPython, "the explicit library")
	// A broken explicit choice is an error, not a silent fallback.
	_, err = Find(Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "/nonexistent/libpython3.99.so")
}

func TestFreeThreadedName(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libpython3.13t.so.1.0")
	require.NoError(t, os.WriteFile(lib, nil, 0o644))
	py, err := Find(Options{LibPython: lib})
	require.NoError(t, err)
	assert.True(t, py.FreeThreaded, "a free-threaded library")
	assert.Equal(t, "3.13", py.Version)
}

// TestLibraryVersionMismatch: a library and an interpreter of different
// versions are refused (the interpreter's environment cannot run on the
// other library), naming both.
func TestLibraryVersionMismatch(t *testing.T) {
	lib := filepath.Join(t.TempDir(), "libpython3.13.so.1.0")
	require.NoError(t, os.WriteFile(lib, nil, 0o644))
	_, err := Find(Options{LibPython: lib, Executable: debianExe})
	require.Error(t, err)
	for _, want := range []string{lib, "3.13", debianExe, "3.11"} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestNotFound(t *testing.T) {
	t.Setenv(EnvLibPython, "")
	t.Setenv(EnvPython, "")
	t.Setenv("PATH", t.TempDir())
	_, err := Find(Options{})
	var nf *NotFoundError
	require.ErrorAs(t, err, &nf)
	require.ErrorIs(t, err, ErrNotFound)
	for _, want := range []string{"not on PATH: python3, python3.14", "python/dist", EnvLibPython, EnvPython, "apt-get install", "process profile"} {
		assert.Contains(t, err.Error(), want)
	}
}

// TestDirectoryWithoutInterpreter: a directory named as the Python that
// holds no bin/python3 is an error saying so, a virtual environment's
// pyvenv.cfg noticed.
func TestDirectoryWithoutInterpreter(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pyvenv.cfg"), []byte("home = /usr/bin\n"), 0o644))
	for _, opts := range []Options{{Executable: dir}, {LibPython: dir}} {
		_, err := Find(opts)
		require.Error(t, err, "%+v", opts)
		for _, want := range []string{dir, "bin/python3", "virtual environment"} {
			assert.Contains(t, err.Error(), want, "%+v", opts)
		}
	}
}

func TestQueryFailure(t *testing.T) {
	_, err := Query("/nonexistent/python3")
	assert.Error(t, err, "Query of a missing executable")
	_, err = Query("/bin/false")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "/bin/false")
}

func TestRegisterTwicePanics(t *testing.T) {
	Register("test-once", func() (Python, error) { return Python{}, nil })
	t.Cleanup(func() {
		providersMu.Lock()
		delete(providers, "test-once")
		providersMu.Unlock()
	})
	assert.Panics(t, func() {
		Register("test-once", func() (Python, error) { return Python{}, nil })
	})
}
