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
//  4. python3 on PATH (then python3.14 down to python3.11, then python),
//     asked for its sysconfig LIBDIR and LDLIBRARY: the first with a
//     shared library of a supported version.
//
// Given only a library, the home and executable are derived from where the
// library lives; given only an executable, the library is asked of it.
//
// # Environments
//
// An executable may be a virtual environment's (venv, virtualenv, uv): it
// is kept as named, not resolved to the base interpreter its symlink
// points at. The result then has the base installation's library and Home
// (sys.base_prefix) and the environment's Prefix (sys.prefix), so the
// process profile runs the environment's interpreter and the thread
// profile loads the base's library and starts it as that interpreter
// would start: sys.executable and sys.prefix are the environment's, and
// its site-packages (with their .pth files) are on sys.path. Wherever a
// path is asked for (Options, SNAKEPIT_PYTHON, SNAKEPIT_LIBPYTHON), the
// directory of an environment or installation (a venv, a conda
// environment, a python-build-standalone or uv Python, /usr) may be given
// instead: its bin/python3 is used.
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
	// Prefix is the environment the interpreter runs in (its sys.prefix):
	// a virtual environment's directory, or Home for a plain installation.
	// Empty when no interpreter was asked (a bare library).
	Prefix string
}

// Venv reports whether the interpreter is a virtual environment's: its
// Prefix is not its installation's Home.
func (p Python) Venv() bool {
	return p.Prefix != "" && p.Home != "" && filepath.Clean(p.Prefix) != filepath.Clean(p.Home)
}

// Supported CPython versions: 3.MinMinor to 3.MaxMinor (GIL builds).
const (
	MinMinor = 11
	MaxMinor = 14
)

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

// NotFoundError lists what [Find] tried, in order, and what each candidate
// lacks.
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
		"or set " + EnvPython + "=/path/to/python3.X (a virtual environment's too) or " + EnvLibPython + "=/path/to/libpython3.X.so, " +
		"or install a CPython 3.11 to 3.14 with its shared library (Debian: apt-get install libpython3.11 python3.11); " +
		"the process profile needs no shared library: set the interpreter with " + EnvPython + " or Config.Python")
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
	p, pathTried, ok := searchPath(opts.Home)
	if ok {
		return p, nil
	}
	return Python{}, &NotFoundError{Tried: append(tried, pathTried...)}
}

// pathNames are the interpreters looked for on PATH, in order.
func pathNames() []string {
	names := []string{"python3"}
	for minor := MaxMinor; minor >= MinMinor; minor-- {
		names = append(names, fmt.Sprintf("python3.%d", minor))
	}
	return append(names, "python")
}

// searchPath tries each of pathNames on PATH and returns the first that
// the thread profile can load, or what each candidate lacks.
func searchPath(home string) (Python, []string, bool) {
	var tried, absent []string
	seen := map[string]string{} // resolved executable -> the name it was tried as
	for _, name := range pathNames() {
		exe, err := exec.LookPath(name)
		if err != nil {
			absent = append(absent, name)
			continue
		}
		real, err := filepath.EvalSymlinks(exe)
		if err != nil {
			real = exe
		}
		if first, dup := seen[real]; dup {
			tried = append(tried, fmt.Sprintf("%s on PATH (%s): the same interpreter as %s", name, exe, first))
			continue
		}
		seen[real] = name
		p, err := complete(Python{Executable: exe, Home: home, Source: "PATH"})
		if err == nil {
			err = p.usable()
		}
		if err == nil {
			return p, nil, true
		}
		tried = append(tried, fmt.Sprintf("%s on PATH (%s): %v", name, exe, err))
	}
	if len(absent) > 0 {
		tried = append(tried, "not on PATH: "+strings.Join(absent, ", "))
	}
	return Python{}, tried, false
}

// usable says what p lacks for the thread profile, or nil.
func (p Python) usable() error {
	major, minor := p.MajorMinor()
	switch {
	case p.FreeThreaded:
		return fmt.Errorf("CPython %s is a free-threaded build (not supported; use a GIL build)", p.Version)
	case p.Version != "" && (major != 3 || minor < MinMinor || minor > MaxMinor):
		return fmt.Errorf("CPython %s is not supported (3.%d to 3.%d are)", p.Version, MinMinor, MaxMinor)
	case p.LibPython == "":
		return fmt.Errorf("CPython %s has no shared libpython (built without --enable-shared; %s)", p.Version, InstallHint(p.Version))
	}
	return nil
}

// InstallHint says how to get a shared libpython for version ("3.11.2" or
// "3.11"), or what to use instead.
func InstallHint(version string) string {
	mm := "3.X"
	var major, minor int
	if n, _ := fmt.Sscanf(version, "%d.%d", &major, &minor); n == 2 {
		mm = fmt.Sprintf("%d.%d", major, minor)
	}
	return "install its shared library (Debian/Ubuntu: apt-get install libpython" + mm +
		"; Fedora: python3-libs; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install), " +
		"or run the process profile, which needs none, " +
		"or use the hermetic CPython 3.14 (import _ \"github.com/snakepit-go/snakepit/python/dist\")"
}

var libNameRE = regexp.MustCompile(`^libpython(\d+)\.(\d+)(t?)\.so`)

// complete fills what can be derived from the paths that are given.
func complete(p Python) (Python, error) {
	if p.Executable != "" {
		exe, err := interpreterPath(p.Executable)
		if err != nil {
			return Python{}, err
		}
		p.Executable = exe
	}
	var libMajor, libMinor string
	if p.LibPython != "" {
		st, err := os.Stat(p.LibPython)
		if err != nil {
			return Python{}, fmt.Errorf("libpython: %w", err)
		}
		if st.IsDir() {
			// An environment or installation: its interpreter names the
			// library.
			exe, err := envInterpreter(p.LibPython)
			if err != nil {
				return Python{}, fmt.Errorf("libpython %s is a directory: %w", p.LibPython, err)
			}
			if p.Executable != "" && !sameFile(exe, p.Executable) {
				return Python{}, fmt.Errorf("libpython %s is the environment of %s, but the executable is %s", p.LibPython, exe, p.Executable)
			}
			p.LibPython, p.Executable = "", exe
		} else if m := libNameRE.FindStringSubmatch(filepath.Base(p.LibPython)); m != nil {
			libMajor, libMinor = m[1], m[2]
		}
	}
	if p.Executable != "" {
		info, err := Query(p.Executable)
		if err != nil {
			return Python{}, err
		}
		if libMajor != "" && info.Version != "" {
			if major, minor := info.MajorMinor(); fmt.Sprint(major) != libMajor || fmt.Sprint(minor) != libMinor {
				return Python{}, fmt.Errorf("libpython %s is Python %s.%s, but %s is Python %s", p.LibPython, libMajor, libMinor, p.Executable, info.Version)
			}
		}
		if p.LibPython == "" {
			p.LibPython = info.LibPython
		}
		if p.Home == "" {
			p.Home = info.Home
		}
		p.Prefix = info.Prefix
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
			if isExecutable(exe) {
				p.Executable = exe
				break
			}
		}
	}
	return p, nil
}

// Interpreter returns the interpreter exe names: exe itself, or, when exe
// is the directory of an environment or installation (a venv, a conda
// environment, a standalone CPython), its bin/python3 (or bin/python).
func Interpreter(exe string) (string, error) {
	return interpreterPath(exe)
}

func interpreterPath(exe string) (string, error) {
	st, err := os.Stat(exe)
	if err != nil || !st.IsDir() {
		return exe, nil // Query reports what is wrong with it
	}
	in, err := envInterpreter(exe)
	if err != nil {
		return "", fmt.Errorf("python %s is a directory: %w", exe, err)
	}
	return in, nil
}

// envNames are the interpreters looked for in an environment's bin/.
var envNames = []string{"python3", "python"}

// envInterpreter finds the interpreter of the environment or installation
// at dir (a venv, a conda environment, a standalone CPython, /usr).
func envInterpreter(dir string) (string, error) {
	for _, name := range envNames {
		if exe := filepath.Join(dir, "bin", name); isExecutable(exe) {
			return exe, nil
		}
	}
	what := "an environment or installation"
	if _, err := os.Stat(filepath.Join(dir, "pyvenv.cfg")); err == nil {
		what = "a virtual environment (it has pyvenv.cfg)"
	}
	return "", fmt.Errorf("no bin/python3 or bin/python in it, as %s would have", what)
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
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
# sys.executable as named: a virtual environment's interpreter is a symlink
# to its base's, and resolving it would lose the environment.
print(json.dumps({"executable": os.path.abspath(sys.executable) if sys.executable else "",
    "home": sys.base_prefix, "prefix": sys.prefix, "version": "%d.%d.%d" % sys.version_info[:3], "lib": lib,
    "free_threaded": bool(v("Py_GIL_DISABLED"))}))
`

// Query asks the interpreter exe (run isolated: -I) where its library, home,
// prefix and version are. The executable is kept as named, symlinks
// included: a virtual environment's interpreter stays the environment's
// (its library and Home are its base installation's, its Prefix the
// environment). It gives up after 30 seconds.
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
		Prefix       string `json:"prefix"`
		Version      string `json:"version"`
		Lib          string `json:"lib"`
		FreeThreaded bool   `json:"free_threaded"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Python{}, fmt.Errorf("query %s: unexpected output %q: %w", exe, out, err)
	}
	if r.Executable == "" {
		if r.Executable, err = filepath.Abs(exe); err != nil {
			return Python{}, fmt.Errorf("query %s: %w", exe, err)
		}
	}
	return Python{LibPython: r.Lib, Home: r.Home, Prefix: r.Prefix, Executable: r.Executable, Version: r.Version, FreeThreaded: r.FreeThreaded}, nil
}
