// Package dist provides the hermetic CPython 3.14 that snakepit runs by
// default: a python-build-standalone build (libpython3.14.so, the standard
// library and a python3 executable) embedded in the Go binary through
// github.com/kluctl/go-embed-python.
//
// Importing the package, even as
//
//	import _ "github.com/snakepit-go/snakepit/python/dist"
//
// registers it with [locate] as the provider "hermetic", so pools find it
// with no Python installed on the machine. Only programs that import it pay
// for its size (about 40 MB in the binary).
//
// On first use the distribution is extracted into a per-user cache directory
// ($SNAKEPIT_PYTHON_CACHE, else os.UserCacheDir()/snakepit), byte-compiled
// once (the distribution ships no .pyc files, and with
// PYTHONDONTWRITEBYTECODE=1 every start would otherwise compile the standard
// library again), recorded in a manifest of sizes and SHA-256 digests, and
// moved into place atomically. Later starts check the manifest against the
// files' sizes (a damaged tree is extracted again); [Verify] checks digests
// too. Several processes starting at once serialise on a lock file: one
// extracts, the others wait and use its result.
package dist

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	embedpython "github.com/kluctl/go-embed-python/python"

	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/locate"
	"golang.org/x/sys/unix"
)

const (
	// PythonVersion is the CPython version of the embedded distribution.
	PythonVersion = "3.14.6"
	// buildTag names the python-build-standalone release; it is part of the
	// cache directory name, so a new distribution never reuses an old tree.
	buildTag = "20260610"

	// EnvCacheDir overrides the cache directory.
	EnvCacheDir = python.EnvCacheDir

	readyFile    = ".snakepit-ready"
	manifestFile = ".snakepit-manifest"
	formatTag    = "snakepit-dist-1"
)

func init() {
	locate.Register("hermetic", Default)
}

// Options control where the distribution is extracted.
type Options struct {
	// CacheDir is the directory that holds extracted distributions. Empty
	// means $SNAKEPIT_PYTHON_CACHE, else os.UserCacheDir()/snakepit, else
	// os.TempDir()/snakepit-<uid>. It is created with mode 0700.
	CacheDir string
}

var (
	defaultOnce sync.Once
	defaultPy   locate.Python
	defaultErr  error
)

// Default is [Install] with default options, done once per process.
func Default() (locate.Python, error) {
	defaultOnce.Do(func() { defaultPy, defaultErr = Install(Options{}) })
	return defaultPy, defaultErr
}

// Dir returns the directory the distribution is (or will be) extracted to.
func Dir(opts Options) (string, error) {
	root, err := python.CacheRoot(opts.CacheDir)
	if err != nil {
		return "", fmt.Errorf("dist: %w", err)
	}
	return filepath.Join(root, fmt.Sprintf("cpython-%s-%s-%s-%s", PythonVersion, buildTag, runtime.GOOS, runtime.GOARCH)), nil
}

// Install makes sure the distribution is extracted, compiled and intact, and
// returns its paths. It is safe to call from several processes at once.
func Install(opts Options) (locate.Python, error) {
	dir, err := Dir(opts)
	if err != nil {
		return locate.Python{}, err
	}
	if err := checkReady(dir, false); err == nil {
		return describe(dir), nil
	}
	root := filepath.Dir(dir)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return locate.Python{}, fmt.Errorf("dist: %w", err)
	}
	unlock, err := lockFile(dir + ".lock")
	if err != nil {
		return locate.Python{}, err
	}
	defer unlock()
	// Another process may have finished while we waited for the lock.
	if err := checkReady(dir, false); err == nil {
		return describe(dir), nil
	}
	if err := extract(dir); err != nil {
		return locate.Python{}, err
	}
	if err := checkReady(dir, true); err != nil {
		return locate.Python{}, fmt.Errorf("dist: freshly extracted tree fails its check: %w", err)
	}
	return describe(dir), nil
}

// Verify checks every file of an extracted distribution against the SHA-256
// digests recorded at extraction.
func Verify(opts Options) error {
	dir, err := Dir(opts)
	if err != nil {
		return err
	}
	return checkReady(dir, true)
}

func describe(dir string) locate.Python {
	return locate.Python{
		LibPython:  filepath.Join(dir, "lib", "libpython3.14.so.1.0"),
		Home:       dir,
		Executable: filepath.Join(dir, "bin", "python3.14"),
		Version:    PythonVersion,
	}
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dist: lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("dist: lock %s: %w", path, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// extract builds the tree in a staging directory beside dir and renames it
// into place; the ready marker is written last.
func extract(dir string) error {
	staging := dir + ".staging"
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("dist: clean staging: %w", err)
	}
	_, err := embedpython.NewEmbeddedPythonWithTmpDir(staging, false)
	os.Remove(staging + ".lock") // the extractor's own lock file, left behind
	if err != nil {
		os.RemoveAll(staging)
		return fmt.Errorf("dist: extract: %w", err)
	}
	if err := compileStdlib(staging, dir); err != nil {
		os.RemoveAll(staging)
		return err
	}
	if err := writeManifest(staging); err != nil {
		os.RemoveAll(staging)
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		os.RemoveAll(staging)
		return fmt.Errorf("dist: remove damaged tree: %w", err)
	}
	if err := os.Rename(staging, dir); err != nil {
		os.RemoveAll(staging)
		return fmt.Errorf("dist: %w", err)
	}
	return writeAtomic(filepath.Join(dir, readyFile), []byte(formatTag+"\n"))
}

// compileStdlib writes the .pyc files, with source paths as they will read
// after the rename (-s/-p), so tracebacks name the final location.
func compileStdlib(staging, final string) error {
	exe := filepath.Join(staging, "bin", "python3.14")
	cmd := exec.Command(exe, "-I", "-m", "compileall", "-q", "-j", "0",
		"-s", staging, "-p", final, filepath.Join(staging, "lib", "python3.14"))
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PYTHON") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("dist: byte-compile standard library: %w: %s", err, tail(out, 2000))
	}
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

type manifestEntry struct {
	Path   string `json:"p"`
	Size   int64  `json:"s"`
	SHA256 string `json:"h"`
}

func writeManifest(dir string) error {
	var entries []manifestEntry
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		size, sum, err := hashFile(path)
		if err != nil {
			return err
		}
		entries = append(entries, manifestEntry{Path: rel, Size: size, SHA256: sum})
		return nil
	})
	if err != nil {
		return fmt.Errorf("dist: manifest: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	var b strings.Builder
	for _, e := range entries {
		line, _ := json.Marshal(e)
		b.Write(line)
		b.WriteByte('\n')
	}
	return writeAtomic(filepath.Join(dir, manifestFile), []byte(b.String()))
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// checkReady validates a tree: the ready marker, then every manifest entry's
// size, and with digests also its SHA-256.
func checkReady(dir string, digests bool) error {
	marker, err := os.ReadFile(filepath.Join(dir, readyFile))
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(marker)) != formatTag {
		return fmt.Errorf("dist: unknown cache format %q", marker)
	}
	f, err := os.Open(filepath.Join(dir, manifestFile))
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var e manifestEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("dist: manifest line %d: %w", n+1, err)
		}
		n++
		path := filepath.Join(dir, e.Path)
		if digests {
			size, sum, err := hashFile(path)
			if err != nil {
				return fmt.Errorf("dist: %w", err)
			}
			if size != e.Size || sum != e.SHA256 {
				return fmt.Errorf("dist: %s: content differs from the manifest", e.Path)
			}
			continue
		}
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("dist: %w", err)
		}
		if st.Size() != e.Size {
			return fmt.Errorf("dist: %s: size %d, manifest says %d", e.Path, st.Size(), e.Size)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("dist: manifest: %w", err)
	}
	if n == 0 {
		return errors.New("dist: empty manifest")
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("dist: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("dist: %w", err)
	}
	return nil
}
