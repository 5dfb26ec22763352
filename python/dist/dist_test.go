package dist

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/snakepit-go/snakepit/python/locate"
)

const envInstallChild = "SNAKEPIT_TEST_DIST_CACHE"

// TestInstallChild is the body of the concurrent-install test, run in child
// processes: it installs into the cache directory it is given.
func TestInstallChild(t *testing.T) {
	dir := os.Getenv(envInstallChild)
	if dir == "" {
		t.Log("runs only as a child of TestInstallConcurrent")
		return
	}
	py, err := Install(Options{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("INSTALLED %s|%s|%s\n", py.LibPython, py.Home, py.Executable)
}

// TestInstallConcurrent starts three processes that install into one empty
// cache at once; all must succeed with the same tree, compiled and intact.
// Then it damages the tree and checks that the damage is found and repaired.
func TestInstallConcurrent(t *testing.T) {
	cache := t.TempDir()
	var wg sync.WaitGroup
	outs := make([]string, 3)
	errs := make([]error, 3)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestInstallChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), envInstallChild+"="+cache)
			out, err := cmd.CombinedOutput()
			outs[i], errs[i] = string(out), err
		}()
	}
	wg.Wait()
	var first string
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("installer %d: %v\n%s", i, errs[i], outs[i])
		}
		line := ""
		for _, l := range strings.Split(outs[i], "\n") {
			if strings.HasPrefix(l, "INSTALLED ") {
				line = l
			}
		}
		if line == "" || (first != "" && line != first) {
			t.Fatalf("installer %d: got %q, want the same tree as the others (%q)", i, line, first)
		}
		first = line
	}
	opts := Options{CacheDir: cache}
	if err := Verify(opts); err != nil {
		t.Fatalf("Verify after install: %v", err)
	}
	py, err := Install(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{py.LibPython, py.Executable, filepath.Join(py.Home, "lib", "python3.14", "os.py")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("missing %s: %v", p, err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(cache, "*.staging*"))
	if len(leftovers) != 0 {
		t.Fatalf("staging leftovers: %v", leftovers)
	}

	// The standard library was compiled once: with bytecode writing off,
	// imports still come from .pyc files.
	cmd := exec.Command(py.Executable, "-v", "-c", "import json, asyncio")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run %s: %v\n%s", py.Executable, err, out)
	}
	want := "code object from '" + filepath.Join(py.Home, "lib", "python3.14", "json", "__pycache__", "__init__.cpython-314.pyc")
	if !strings.Contains(string(out), want) {
		t.Fatalf("json was not loaded from its .pyc (want %q in python -v output)", want)
	}

	// Same-size corruption: the quick check at start-up passes, Verify does not.
	target := filepath.Join(py.Home, "lib", "python3.14", "json", "__init__.py")
	data, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), data...)
	flipped[0] ^= 0x20
	if err := os.WriteFile(target, flipped, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Verify(opts); err == nil || !strings.Contains(err.Error(), "json/__init__.py") {
		t.Fatalf("Verify of a corrupted file: got %v, want it to name json/__init__.py", err)
	}
	// A truncated file is found by the quick check and repaired by Install.
	if err := os.WriteFile(target, data[:10], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(opts); err != nil {
		t.Fatalf("Install over a damaged tree: %v", err)
	}
	if err := Verify(opts); err != nil {
		t.Fatalf("Verify after repair: %v", err)
	}
}

func TestRegistered(t *testing.T) {
	found := false
	for _, name := range locate.Providers() {
		found = found || name == "hermetic"
	}
	if !found {
		t.Fatalf("providers %v: want hermetic registered", locate.Providers())
	}
}

func TestDirRespectsEnv(t *testing.T) {
	t.Setenv(EnvCacheDir, "/tmp/snakepit-env-cache")
	dir, err := Dir(Options{})
	if err != nil || !strings.HasPrefix(dir, "/tmp/snakepit-env-cache/cpython-3.14.6-") {
		t.Fatalf("got %q, %v; want a directory under $%s", dir, err, EnvCacheDir)
	}
	dir, _ = Dir(Options{CacheDir: "/opt/explicit"})
	if !strings.HasPrefix(dir, "/opt/explicit/") {
		t.Fatalf("explicit option: got %q", dir)
	}
}
