package locate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if err != nil {
		t.Fatal(err)
	}
	if py.Home != "/usr" || py.Executable != debianExe || py.Version != "3.11" || py.Source != "env" {
		t.Fatalf("got %+v, want home /usr, executable %s, version 3.11, source env", py, debianExe)
	}
}

func TestFromExecutableOnly(t *testing.T) {
	py, err := Find(Options{Executable: debianExe})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(py.Version, "3.11.") || py.Home != "/usr" || py.Source != "options" {
		t.Fatalf("got %+v", py)
	}
	lib, _ := filepath.EvalSymlinks(py.LibPython)
	want, _ := filepath.EvalSymlinks(debianLib)
	if lib != want {
		t.Fatalf("LibPython: got %s, want %s", py.LibPython, debianLib)
	}
	if major, minor := py.MajorMinor(); major != 3 || minor != 11 {
		t.Fatalf("MajorMinor: got %d.%d", major, minor)
	}
}

func TestExplicitBeatsEnvironment(t *testing.T) {
	t.Setenv(EnvLibPython, "/nonexistent/libpython3.99.so")
	py, err := Find(Options{LibPython: debianLib})
	if err != nil || py.LibPython != debianLib {
		t.Fatalf("got %+v, %v; want the explicit library", py, err)
	}
	// A broken explicit choice is an error, not a silent fallback.
	if _, err := Find(Options{}); err == nil || !strings.Contains(err.Error(), "/nonexistent/libpython3.99.so") {
		t.Fatalf("bad %s: got %v", EnvLibPython, err)
	}
}

func TestFreeThreadedName(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libpython3.13t.so.1.0")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	py, err := Find(Options{LibPython: lib})
	if err != nil || !py.FreeThreaded || py.Version != "3.13" {
		t.Fatalf("got %+v, %v; want a free-threaded 3.13", py, err)
	}
}

func TestNotFound(t *testing.T) {
	t.Setenv(EnvLibPython, "")
	t.Setenv(EnvPython, "")
	t.Setenv("PATH", t.TempDir())
	_, err := Find(Options{})
	var nf *NotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want a NotFoundError", err)
	}
	for _, want := range []string{"python3 on PATH", "python/dist", EnvLibPython, "apt-get install"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%s", want, err)
		}
	}
}

func TestQueryFailure(t *testing.T) {
	if _, err := Query("/nonexistent/python3"); err == nil {
		t.Fatal("Query of a missing executable: got nil error")
	}
	if _, err := Query("/bin/false"); err == nil || !strings.Contains(err.Error(), "/bin/false") {
		t.Fatalf("Query of /bin/false: got %v", err)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	Register("test-once", func() (Python, error) { return Python{}, nil })
	defer func() {
		providersMu.Lock()
		delete(providers, "test-once")
		providersMu.Unlock()
		if recover() == nil {
			t.Fatal("second Register: no panic")
		}
	}()
	Register("test-once", func() (Python, error) { return Python{}, nil })
}
