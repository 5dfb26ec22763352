// Package python holds the Python side of snakepit: the snakepit package
// (the adapter API and the dispatcher both worker profiles run), embedded
// into the Go build, and written once to a cache directory that workers put
// on sys.path. Users install nothing.
package python

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// FS holds the snakepit Python package under "snakepit/".
//
//go:embed snakepit/*.py
var FS embed.FS

// EnvCacheDir overrides where snakepit keeps files it writes for Python: the
// snakepit package and the hermetic distribution.
const EnvCacheDir = "SNAKEPIT_PYTHON_CACHE"

// CacheRoot returns the directory for snakepit's Python files: root if not
// empty, else $SNAKEPIT_PYTHON_CACHE, else os.UserCacheDir()/snakepit, else
// os.TempDir()/snakepit-<uid>.
func CacheRoot(root string) (string, error) {
	if root == "" {
		root = os.Getenv(EnvCacheDir)
	}
	if root == "" {
		if d, err := os.UserCacheDir(); err == nil {
			root = filepath.Join(d, "snakepit")
		} else {
			root = filepath.Join(os.TempDir(), fmt.Sprintf("snakepit-%d", os.Getuid()))
		}
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("python: cache dir: %w", err)
	}
	return abs, nil
}

var (
	pathMu sync.Mutex
	// pkgNames and pkgHash identify this build's package content.
	pkgNames = sync.OnceValue(func() []string {
		names, _ := fs.Glob(FS, "snakepit/*.py")
		sort.Strings(names)
		return names
	})
	pkgHash = sync.OnceValue(func() string {
		h := sha256.New()
		for _, n := range pkgNames() {
			b, _ := FS.ReadFile(n)
			fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
			h.Write(b)
		}
		return hex.EncodeToString(h.Sum(nil))[:16]
	})
)

// Path returns a directory containing the snakepit package, for sys.path.
// The files are written once per content version into the cache root
// (atomically, so concurrent processes agree). Each call checks that they
// are still there and writes them again if the cache was cleared, or if
// the cache root ($SNAKEPIT_PYTHON_CACHE) changed.
func Path() (string, error) {
	pathMu.Lock()
	defer pathMu.Unlock()
	root, err := CacheRoot("")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "pkg-"+pkgHash())
	if _, err := os.Stat(filepath.Join(dir, "snakepit", "__init__.py")); err == nil {
		return dir, nil
	}
	return writePackage(root, dir)
}

func writePackage(root, dir string) (string, error) {
	names := pkgNames()
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("python: %w", err)
	}
	tmp, err := os.MkdirTemp(root, "pkg-tmp-")
	if err != nil {
		return "", fmt.Errorf("python: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Mkdir(filepath.Join(tmp, "snakepit"), 0o755); err != nil {
		return "", fmt.Errorf("python: %w", err)
	}
	for _, n := range names {
		b, _ := FS.ReadFile(n)
		if err := os.WriteFile(filepath.Join(tmp, n), b, 0o644); err != nil {
			return "", fmt.Errorf("python: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("python: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process won the race: its copy is identical.
		if _, statErr := os.Stat(filepath.Join(dir, "snakepit", "__init__.py")); statErr == nil {
			return dir, nil
		}
		return "", fmt.Errorf("python: %w", err)
	}
	return dir, nil
}

// WireSource returns the source of snakepit/_wire.py, the value helpers the
// embed package also loads into every interpreter it creates.
func WireSource() string {
	b, err := FS.ReadFile("snakepit/_wire.py")
	if err != nil {
		panic("python: embedded _wire.py missing: " + err.Error())
	}
	return string(b)
}

// HostGuardSource returns the source of snakepit/_hostguard.py, the guards
// the embed package installs in every interpreter it creates: functions
// that would act on the whole host process (os._exit, fork on 3.11,
// faulthandler, signal masks and timers) raise RuntimeError instead.
func HostGuardSource() string {
	b, err := FS.ReadFile("snakepit/_hostguard.py")
	if err != nil {
		panic("python: embedded _hostguard.py missing: " + err.Error())
	}
	return string(b)
}
