package embed_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/pyenvtest"
	"github.com/snakepit-go/snakepit/python/locate"
)

// TestLoadWithoutLibPython: a CPython without a shared library is a
// *NoLibPythonError matching ErrNoLibPython that names the interpreter,
// what to install and what to use instead.
func TestLoadWithoutLibPython(t *testing.T) {
	static := pyenvtest.StaticPython311(t)
	py, err := locate.Find(locate.Options{Executable: static})
	require.NoError(t, err)
	require.Empty(t, py.LibPython)
	_, err = embed.Load(py)
	require.ErrorIs(t, err, embed.ErrNoLibPython)
	var nl *embed.NoLibPythonError
	require.ErrorAs(t, err, &nl)
	assert.Equal(t, static, nl.Python.Executable)
	for _, want := range []string{static, "CPython 3.11.", "no libpython for", "enable-shared", "apt-get install libpython3.11", "process profile", "python/dist"} {
		assert.Contains(t, err.Error(), want)
	}
}

// TestLoadOtherEnvironment: the loaded library asked for with another
// environment (sys.prefix) fails with ErrAlreadyLoaded naming both, as
// Python's environment is fixed when it starts; asked for with its own, or
// with none (a bare library), it is the loaded runtime.
func TestLoadOtherEnvironment(t *testing.T) {
	rt := testRuntime(t)
	other := rt.Python()
	other.Prefix = t.TempDir()
	other.Executable = other.Prefix + "/bin/python"
	_, err := embed.Load(other)
	require.ErrorIs(t, err, embed.ErrAlreadyLoaded)
	assert.Contains(t, err.Error(), other.Prefix)
	assert.Contains(t, err.Error(), "process profile")

	same := rt.Python()
	for _, prefix := range []string{"", same.Home} {
		same.Prefix = prefix
		got, err := embed.Load(same)
		require.NoError(t, err, "prefix %q", prefix)
		assert.Same(t, rt, got, "prefix %q", prefix)
	}
}
