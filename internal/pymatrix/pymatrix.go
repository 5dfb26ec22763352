// Package pymatrix runs a package's tests on a second Python: one process
// can load only one libpython, so the test binary re-executes itself with
// the environment pointing at the system's CPython 3.11.
package pymatrix

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/python/locate"
)

// Environment of the child process.
const (
	EnvChild     = "SNAKEPIT_TEST_CHILD"      // the Python the child runs
	EnvWantMinor = "SNAKEPIT_TEST_WANT_MINOR" // the minor version the child must see
	EnvPy311     = "SNAKEPIT_TEST_PYTHON311"  // override: a python3.11 executable
)

// InChild reports whether this test process is the re-executed child.
func InChild() bool { return os.Getenv(EnvChild) != "" }

// WantMinor is the CPython minor version this process must run: 11 in the
// child, 14 (the hermetic default) otherwise.
func WantMinor() int {
	if s := os.Getenv(EnvWantMinor); s != "" {
		n, _ := strconv.Atoi(s)
		return n
	}
	return 14
}

// Python311 finds Debian's CPython 3.11 (CI installs it) or fails the test.
func Python311(t testing.TB) locate.Python {
	t.Helper()
	exe := os.Getenv(EnvPy311)
	if exe == "" {
		exe = "/usr/bin/python3.11"
		if _, err := os.Stat(exe); err != nil {
			if exe, err = exec.LookPath("python3.11"); err != nil {
				t.Fatalf("CPython 3.11 not found (install python3.11 and libpython3.11, or set %s)", EnvPy311)
			}
		}
	}
	py, err := locate.Query(exe)
	if err != nil {
		t.Fatalf("query %s: %v", exe, err)
	}
	if py.LibPython == "" {
		t.Fatalf("%s has no shared libpython (install libpython3.11)", exe)
	}
	return py
}

// RunOn311 re-runs the test binary, with this run's -run, -v and -short
// flags, on CPython 3.11, logging its output and failing if it fails. In the
// child it only logs that it is the child.
func RunOn311(t *testing.T) {
	if InChild() {
		t.Logf("child process: running on %s", os.Getenv(EnvChild))
		return
	}
	py := Python311(t)
	args := []string{"-test.count=1", "-test.timeout=15m"}
	if f := flag.Lookup("test.run"); f != nil && f.Value.String() != "" {
		args = append(args, "-test.run="+f.Value.String())
	}
	if f := flag.Lookup("test.v"); f != nil && f.Value.String() == "true" {
		args = append(args, "-test.v")
	}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(),
		EnvChild+"=CPython "+py.Version,
		EnvWantMinor+"=11",
		locate.EnvLibPython+"="+py.LibPython,
		locate.EnvPython+"="+py.Executable,
	)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		t.Log("3.11 | " + line)
	}
	if err != nil {
		t.Fatalf("tests on CPython %s (%s): %v", py.Version, py.LibPython, err)
	}
}
