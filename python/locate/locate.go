// Package locate finds the CPython installation snakepit runs: its shared
// library (for the thread profile, which loads it into the Go process), its
// home (the prefix holding the standard library) and its executable (for the
// process profile, and for sys.executable).
//
// The search order is:
//
//  1. explicit paths in [Options];
//  2. the environment: SNAKEPIT_LIBPYTHON (a libpython shared library) and
//     SNAKEPIT_PYTHON (an interpreter executable), SNAKEPIT_PYTHONHOME;
//  3. a registered provider: importing
//     github.com/snakepit-go/snakepit/python/dist registers the hermetic
//     CPython 3.14, the way database/sql drivers register themselves, so
//     programs that do not want its ~40 MB do not link it;
//  4. python3 on PATH, asked for its sysconfig LIBDIR and LDLIBRARY.
//
// Given only a library, the home and executable are derived from where the
// library lives; given only an executable, the library is asked of it.
package locate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Environment variables read by [Find].
const (
	EnvLibPython  = "SNAKEPIT_LIBPYTHON"
	EnvPython     = "SNAKEPIT_PYTHON"
	EnvPythonHome = "SNAKEPIT_PYTHONHOME"
)

// Python describes one CPython installation.
type Python struct {
	// LibPython is the path of the shared library (libpython3.X.so...).
	// Empty when the installation has none (a statically linked python3):
	// such a Python can run the process profile only.
	LibPython string
	// Home is the installation prefix: the standard library lives in
	// Home/lib/python3.X.
	Home string
	// Executable is the interpreter program. It may be empty for a bare
	// libpython without an interpreter next to it.
	Executable string
	// Version is "major.minor.micro" when known, "major.minor" when only
	// the library's file name told it, or empty.
	Version string
	// FreeThreaded reports a free-threaded (no-GIL) build, which snakepit
	// refuses to load until it supports one.
	FreeThreaded bool
	// Source says where the installation came from: "options", "env",
	// "provider <name>" or "PATH".
	Source string
}

// MajorMinor returns the version's major and minor numbers, or 0, 0.
func (p Python) MajorMinor() (major, minor int) {
	_, _ = fmt.Sscanf(p.Version, "%d.%d", &major, &minor)
	return major, minor
}

// Options are explicit choices; each empty field leaves the choice to the
// search.
type Options struct {
	LibPython  string
	Executable string
	Home       string
}

// A Provider returns an installation it manages (the hermetic one extracts
// itself on first use).
type Provider func() (Python, error)

var (
	providersMu sync.Mutex
	providers   = map[string]Provider{} // guarded by providersMu
)

// Register makes a provider available to [Find] under name. It is meant to
// be called from an init function; it panics if name is registered twice or
// p is nil.
func Register(name string, p Provider) {
	providersMu.Lock()
	defer providersMu.Unlock()
	if p == nil {
		panic("locate: Register provider is nil")
	}
	if _, dup := providers[name]; dup {
		panic("locate: Register called twice for provider " + name)
	}
	providers[name] = p
}

// Providers returns the names of the registered providers, sorted.
func Providers() []string {
	providersMu.Lock()
	defer providersMu.Unlock()
	names := make([]string, 0, len(providers))
	for n := range providers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ErrNotFound is matched by the error [Find] returns when no step of the
// search produced an installation.
var ErrNotFound = errors.New("no Python installation found")

// NotFoundError lists what [Find] tried, in order, and why each failed.
type NotFoundError struct {
	Tried []string
}

func (e *NotFoundError) Error() string {
	var b strings.Builder
	b.WriteString("locate: no Python installation found; tried:")
	for _, t := range e.Tried {
		b.WriteString("\n  - ")
		b.WriteString(t)
	}
	b.WriteString("\nfix: import _ \"github.com/snakepit-go/snakepit/python/dist\" for the hermetic CPython 3.14, " +
		"or set " + EnvLibPython + "=/path/to/libpython3.X.so (and/or " + EnvPython + "=/path/to/python3.X), " +
		"or install a CPython 3.11+ with its shared library (Debian: apt-get install libpython3.11 python3.11)")
	return b.String()
}

func (e *NotFoundError) Unwrap() error { return ErrNotFound }

// Find runs the search described in the package documentation. An explicit
// choice (options or environment) that does not work is an error of its own:
// the search does not silently fall through to another Python.
func Find(opts Options) (Python, error) {
	if opts.LibPython != "" || opts.Executable != "" {
		return complete(Python{LibPython: opts.LibPython, Executable: opts.Executable, Home: opts.Home, Source: "options"})
	}
	if lib, exe := os.Getenv(EnvLibPython), os.Getenv(EnvPython); lib != "" || exe != "" {
		home := opts.Home
		if home == "" {
			home = os.Getenv(EnvPythonHome)
		}
		p, err := complete(Python{LibPython: lib, Executable: exe, Home: home, Source: "env"})
		if err != nil {
			return Python{}, fmt.Errorf("locate: from %s/%s: %w", EnvLibPython, EnvPython, err)
		}
		return p, nil
	}
	if names := Providers(); len(names) > 0 {
		// A linked provider is the program's chosen Python: its failure is
		// reported, not skipped.
		name := names[0]
		providersMu.Lock()
		prov := providers[name]
		providersMu.Unlock()
		p, err := prov()
		if err != nil {
			return Python{}, fmt.Errorf("locate: provider %s: %w", name, err)
		}
		p.Source = "provider " + name
		if opts.Home != "" {
			p.Home = opts.Home
		}
		return p, nil
	}
	tried := []string{
		"options and " + EnvLibPython + "/" + EnvPython + ": not set",
		"registered providers: none (python/dist not imported)",
	}
	exe, err := exec.LookPath("python3")
	if err != nil {
		tried = append(tried, "python3 on PATH: "+err.Error())
		return Python{}, &NotFoundError{Tried: tried}
	}
	p, err := complete(Python{Executable: exe, Home: opts.Home, Source: "PATH"})
	switch {
	case err != nil:
		tried = append(tried, "python3 on PATH ("+exe+"): "+err.Error())
	case p.LibPython == "":
		tried = append(tried, "python3 on PATH ("+p.Executable+"): no shared libpython (built without --enable-shared?)")
	default:
		return p, nil
	}
	return Python{}, &NotFoundError{Tried: tried}
}

var libNameRE = regexp.MustCompile(`^libpython(\d+)\.(\d+)(t?)\.so`)

// complete fills what can be derived from the paths that are given.
func complete(p Python) (Python, error) {
	if p.LibPython != "" {
		st, err := os.Stat(p.LibPython)
		if err != nil {
			return Python{}, fmt.Errorf("libpython: %w", err)
		}
		if st.IsDir() {
			return Python{}, fmt.Errorf("libpython %s is a directory", p.LibPython)
		}
	}
	if p.Executable != "" {
		info, err := Query(p.Executable)
		if err != nil {
			return Python{}, err
		}
		if p.LibPython == "" {
			p.LibPython = info.LibPython
		}
		if p.Home == "" {
			p.Home = info.Home
		}
		p.Executable = info.Executable
		p.Version = info.Version
		p.FreeThreaded = info.FreeThreaded
		return p, nil
	}
	// Only a library: derive version, home and executable from its location.
	m := libNameRE.FindStringSubmatch(filepath.Base(p.LibPython))
	if m != nil {
		p.Version = m[1] + "." + m[2]
		p.FreeThreaded = m[3] == "t"
	}
	if p.Home == "" && m != nil {
		p.Home = guessHome(p.LibPython, "python"+m[1]+"."+m[2]+m[3])
	}
	if p.Home != "" && m != nil {
		for _, name := range []string{"python" + m[1] + "." + m[2] + m[3], "python" + m[1]} {
			exe := filepath.Join(p.Home, "bin", name)
			if st, err := os.Stat(exe); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				p.Executable = exe
				break
			}
		}
	}
	return p, nil
}

// guessHome finds the prefix above lib whose lib/<stdlibDir>/os.py exists.
func guessHome(lib, stdlibDir string) string {
	real, err := filepath.EvalSymlinks(lib)
	if err != nil {
		real = lib
	}
	for _, start := range []string{lib, real} {
		dir := filepath.Dir(start)
		for range 3 {
			dir = filepath.Dir(dir)
			if _, err := os.Stat(filepath.Join(dir, "lib", stdlibDir, "os.py")); err == nil {
				return dir
			}
		}
	}
	return ""
}

// queryScript prints what snakepit needs to know about an interpreter.
const queryScript = `import json, os, sys, sysconfig
v = sysconfig.get_config_var
libdir = v("LIBDIR") or ""
lib = ""
for name in (v("INSTSONAME"), v("LDLIBRARY")):
    if not name or ".so" not in name:
        continue
    for d in (libdir, os.path.join(libdir, v("MULTIARCH") or ""), os.path.join(sys.base_prefix, "lib")):
        if d and os.path.isfile(os.path.join(d, name)):
            lib = os.path.join(d, name)
            break
    if lib:
        break
print(json.dumps({"executable": os.path.realpath(sys.executable), "home": sys.base_prefix,
    "version": "%d.%d.%d" % sys.version_info[:3], "lib": lib,
    "free_threaded": bool(v("Py_GIL_DISABLED"))}))
`

// Query asks the interpreter exe (run isolated: -I) where its library, home
// and version are. It gives up after 30 seconds.
func Query(exe string) (Python, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-I", "-c", queryScript)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 500 {
			msg = msg[len(msg)-500:]
		}
		if msg != "" {
			return Python{}, fmt.Errorf("query %s: %w: %s", exe, err, msg)
		}
		return Python{}, fmt.Errorf("query %s: %w", exe, err)
	}
	var r struct {
		Executable   string `json:"executable"`
		Home         string `json:"home"`
		Version      string `json:"version"`
		Lib          string `json:"lib"`
		FreeThreaded bool   `json:"free_threaded"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Python{}, fmt.Errorf("query %s: unexpected output %q: %w", exe, out, err)
	}
	return Python{LibPython: r.Lib, Home: r.Home, Executable: r.Executable, Version: r.Version, FreeThreaded: r.FreeThreaded}, nil
}
