// Package pyenvtest builds the Python environments users bring, for tests:
// a virtual environment of the system's CPython 3.11 with a package of its
// own, and a CPython 3.11 installation without a shared libpython.
package pyenvtest

import (
	"context"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
)

// Venv is a virtual environment made by Venv311.
type Venv struct {
	// Dir is the environment (its sys.prefix).
	Dir string
	// Python is its interpreter, bin/python: a symlink to the base's.
	Python string
	// SitePackages is its lib/python3.11/site-packages.
	SitePackages string
	// Extra is a directory outside the environment that a .pth file in
	// SitePackages puts on sys.path.
	Extra string
}

// Module is the package Venv311 installs into the environment (as files,
// the way pip would) and ExtraModule the module in Venv.Extra; each has
// a constant WHERE naming itself.
const (
	Module      = "venvpkg"
	ExtraModule = "venvextra"
)

// Venv311 creates a virtual environment of the system's CPython 3.11: see
// NewVenv.
func Venv311(t testing.TB, systemSite bool) Venv {
	t.Helper()
	return NewVenv(t, pymatrix.Python311(t).Executable, systemSite)
}

// NewVenv creates a virtual environment of the interpreter base
// (base -m venv, without pip: no network), installs Module into its
// site-packages and a .pth file adding Extra, which holds ExtraModule.
// systemSite gives it the base's site-packages too
// (--system-site-packages).
func NewVenv(t testing.TB, base string, systemSite bool) Venv {
	t.Helper()
	root := t.TempDir()
	v := Venv{Dir: filepath.Join(root, "venv"), Extra: filepath.Join(root, "extra")}
	args := []string{"-m", "venv", "--without-pip"}
	if systemSite {
		args = append(args, "--system-site-packages")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, base, append(args, v.Dir)...).CombinedOutput()
	require.NoError(t, err, "%s -m venv: %s", base, out)
	v.Python = filepath.Join(v.Dir, "bin", "python")
	site, err := exec.CommandContext(ctx, v.Python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").Output()
	require.NoError(t, err, "%s: ask for site-packages", v.Python)
	v.SitePackages = strings.TrimSpace(string(site))
	require.True(t, strings.HasPrefix(v.SitePackages, v.Dir+"/"), "site-packages %s outside the environment", v.SitePackages)
	pkg := filepath.Join(v.SitePackages, Module)
	require.NoError(t, os.MkdirAll(pkg, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(pkg, "__init__.py"), []byte("WHERE = __file__\n"), 0o644))
	require.NoError(t, os.MkdirAll(v.Extra, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(v.Extra, ExtraModule+".py"), []byte("WHERE = __file__\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(v.SitePackages, "snakepit_test_extra.pth"), []byte(v.Extra+"\n"), 0o644))
	return v
}

// StaticPython311 returns the interpreter of a CPython 3.11 installation
// that has no shared libpython, as one built without --enable-shared
// (pyenv's default, many distribution and container builds): a copy of
// the system's statically linked python3.11 (Debian links libpython into
// it; a dynamically linked one fails the test) in a prefix of its own, whose standard library is
// the system's, except for the build configuration, which names the
// static library, libpython3.11.a, as such a build's does.
func StaticPython311(t testing.TB) string {
	t.Helper()
	base := pymatrix.Python311(t).Executable
	real, err := filepath.EvalSymlinks(base)
	require.NoError(t, err)
	// The copy must not load a libpython: it is the interpreter itself.
	bin, err := elf.Open(real)
	require.NoError(t, err)
	needed, err := bin.ImportedLibraries()
	bin.Close()
	require.NoError(t, err)
	for _, lib := range needed {
		require.False(t, strings.HasPrefix(lib, "libpython"), "%s links %s: a Python without a shared library needs a statically linked interpreter (Debian's)", real, lib)
	}
	out, err := exec.Command(base, "-I", "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))").Output()
	require.NoError(t, err)
	stdlib := strings.TrimSpace(string(out))
	require.FileExists(t, filepath.Join(stdlib, "os.py"), "the system CPython 3.11's standard library")
	root := t.TempDir()
	binDir, lib := filepath.Join(root, "bin"), filepath.Join(root, "lib", "python3.11")
	require.NoError(t, os.MkdirAll(binDir, 0o755))
	require.NoError(t, os.MkdirAll(lib, 0o755))
	exe := filepath.Join(binDir, "python3.11")
	prog, err := os.ReadFile(real)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(exe, prog, 0o755))
	require.NoError(t, os.Symlink("python3.11", filepath.Join(binDir, "python3")))
	// The build configuration's module is the one sysconfig would import.
	name, err := exec.Command(base, "-I", "-c", "import sysconfig; print(sysconfig._get_sysconfigdata_name())").Output()
	require.NoError(t, err)
	confName := string(name[:len(name)-1]) + ".py"
	entries, err := os.ReadDir(stdlib)
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name() == confName {
			continue
		}
		require.NoError(t, os.Symlink(filepath.Join(stdlib, e.Name()), filepath.Join(lib, e.Name())))
	}
	conf, err := os.ReadFile(filepath.Join(stdlib, confName))
	require.NoError(t, err)
	conf = append(conf, []byte("\nbuild_time_vars.update(LIBDIR="+quote(filepath.Join(root, "lib"))+
		", LDLIBRARY='libpython3.11.a', INSTSONAME='libpython3.11.a', Py_ENABLE_SHARED=0)\n")...)
	require.NoError(t, os.WriteFile(filepath.Join(lib, confName), conf, 0o644))
	return exe
}

// quote makes s a Python string literal (a JSON string is one).
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
