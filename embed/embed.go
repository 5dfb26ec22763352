// Package embed runs CPython inside the Go process. It is the only package
// of snakepit that uses cgo.
//
// It binds libpython at run time, without Python.h: [Load] opens the shared
// library found by [Locate] with dlopen(RTLD_NOW|RTLD_GLOBAL), resolves one
// table of C-API functions with dlsym (a missing one is named in the error),
// and initialises Python once, on a dedicated locked OS thread, with no Python
// signal handlers (Go keeps SIGINT and friends), no PYTHON* environment
// variables, and sys.executable set to a real interpreter: a virtual
// environment's, with its packages, when one was named. CPython 3.11 to
// 3.14 (GIL builds) are supported; free-threaded builds are refused.
//
// # Interpreters and threads
//
// Python code runs in an [Interpreter]: the main one ([Runtime.Main]) or a
// sub-interpreter ([Runtime.NewInterpreter]) with its own GIL on Python 3.12
// and later (PEP 684), so N sub-interpreters run Python on N cores at once;
// on 3.11 sub-interpreters share one GIL. Each interpreter is created, used
// by default and ended on its own home OS thread: the methods of Interpreter
// hand the work to that thread.
//
// A handoff to another OS thread costs tens of microseconds when that thread
// sleeps, a hundred times a small Python call. [Interpreter.Attach] instead
// gives the calling goroutine a [Thread]: it locks the goroutine to its OS
// thread and creates a thread state of the interpreter there, so calls run on
// the caller's thread at the cost of taking the interpreter's GIL. The API
// keeps CPython's rules: a thread state is created, used and deleted on one
// OS thread, every C call and the fetch of its error happen together in one
// cgo call, and an interpreter cannot end while a Thread is attached.
//
// # Calling Go from Python
//
// Every interpreter has a builtin _snakepit_embed.host_call(token, name,
// payload) that runs the Go function set with
// [Interpreter.SetHostHandler] (see [HostHandler]) through a cgo callback
// on the calling thread, with the GIL released while Go runs: no other OS
// thread is woken, and Python threads the caller started may call too.
// [Interpreter.TagCalls] lets Python code tell the calls that Go made into
// it apart (the thread profile's host functions use both). Large
// bytes-like arguments reach Go without a copy, as the Python objects' own
// memory, and large results reach Python with one (see [HostHandler] and
// [HostBufferMin]).
//
// A second builtin, _snakepit_embed.hold_interrupt(), marks the call Go
// made into the calling thread as one that takes no interrupt: from then on
// [Interpreter.Interrupt] reports it landed without raising anything, and
// an interrupt set but not yet raised is dropped. It returns whether the
// calling thread runs such a call. (The thread profile calls it when a
// handler has seen ctx.cancelled() return true.)
//
// # Values
//
// Arguments and results cross as Python's marshal format, version 4 (see
// package [pymarshal]): Go encodes and decodes it, and C turns it into
// objects with PyMarshal_ReadObjectFromString / PyMarshal_WriteObjectToString,
// so a whole value costs one cgo call, not one per node. None, bool, int
// (int64), float (NaN and ±Inf included), str (valid UTF-8), bytes,
// list/tuple and dict with str keys cross; Go structs cross as dicts keyed
// like encoding/json (field name or `json` tag). Anything else is a
// [worker.NotSerializableError] naming the value's type and place.
//
// A Python exception becomes a [*worker.PythonError] with the exception's
// type, message and formatted traceback; an extension module that refuses to
// load in a sub-interpreter matches [worker.ErrNotSubinterpreterSafe].
package embed

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/snakepit-go/snakepit/python/locate"
)

// Supported CPython versions (3.MinMinor to 3.MaxMinor).
const (
	MinMinor = locate.MinMinor
	MaxMinor = locate.MaxMinor
)

// Errors returned by [Load].
var (
	// ErrFreeThreaded: the library is a free-threaded (no-GIL) build.
	ErrFreeThreaded = errors.New("embed: free-threaded Python builds are not supported yet; use a GIL build of CPython 3.11-3.14")
	// ErrUnsupportedVersion: the library is not CPython 3.11-3.14.
	ErrUnsupportedVersion = errors.New("embed: unsupported Python version; CPython 3.11-3.14 is required")
	// ErrAlreadyLoaded: another libpython is already loaded in this process.
	// CPython cannot be unloaded or initialised twice, so one process runs
	// one Python.
	ErrAlreadyLoaded = errors.New("embed: a different libpython is already loaded in this process")
	// ErrClosed: the interpreter or thread has been closed.
	ErrClosed = errors.New("embed: interpreter closed")
	// ErrNoLibPython: the Python has no shared library to load (it was
	// built without --enable-shared, or its library package is not
	// installed). The process profile can still run its interpreter. See
	// [NoLibPythonError].
	ErrNoLibPython = errors.New("embed: no shared libpython")
)

// NoLibPythonError is [Load]'s error for a Python without a shared
// library; it matches [ErrNoLibPython] and says what to install or use
// instead.
type NoLibPythonError struct {
	// Python is the installation that was asked for.
	Python locate.Python
}

func (e *NoLibPythonError) Error() string {
	py := e.Python
	what := "CPython"
	if py.Version != "" {
		what += " " + py.Version
	}
	return fmt.Sprintf("embed: no libpython for %s (%s, from %s): the thread profile loads a shared libpython into the process, "+
		"and this Python has none (built without --enable-shared, or its library is not installed); %s",
		orUnknown(py.Executable), what, orUnknown(py.Source), locate.InstallHint(py.Version))
}

func (e *NoLibPythonError) Unwrap() error { return ErrNoLibPython }

// Locate finds a CPython installation: explicit options, then the
// SNAKEPIT_LIBPYTHON / SNAKEPIT_PYTHON environment, then a registered
// provider (import python/dist for the hermetic 3.14), then python3 on PATH.
// See package [locate].
func Locate(opts locate.Options) (locate.Python, error) {
	return locate.Find(opts)
}

// Version is the version of the loaded CPython.
type Version struct {
	Major, Minor, Micro int
	// Full is Py_GetVersion(): "3.14.6 (main, Jun 11 2026, ...) [Clang ...]".
	Full string
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// Runtime is the CPython loaded into this process. There is at most one.
type Runtime struct {
	live    atomic.Int64 // sub-interpreters alive
	homes   sync.Map     // home thread id -> *Interpreter, while it lives
	py      locate.Python
	version Version
	paths   []string // sys.path entries given to Load, for every interpreter
	main    *Interpreter
}

var (
	loadMu   sync.Mutex
	loaded   *Runtime // guarded by loadMu
	poisoned error    // guarded by loadMu: a failure after libpython entered the process
)

// Default loads the Python found by [Locate] with no options.
func Default() (*Runtime, error) {
	py, err := Locate(locate.Options{})
	if err != nil {
		return nil, err
	}
	return Load(py)
}

// Load loads and initialises py's libpython, once per process. A Python
// without a shared library is a [*NoLibPythonError]. When py.Executable is
// a virtual environment's interpreter (see [locate.Python.Venv]), Python
// starts as that interpreter would: sys.executable, sys.prefix and
// sys.exec_prefix are the environment's, and its site-packages, with their
// .pth files processed, are on the sys.path of every interpreter (the
// base's site-packages too only if the environment includes them). paths are
// prepended to sys.path in the main interpreter and in every sub-interpreter
// (before their own [InterpreterConfig.Paths]). Later calls for the same
// library return the same Runtime and ignore paths; a call for another
// library, or for another environment of it (py.Prefix), fails with
// [ErrAlreadyLoaded]. A failure after the library was opened is
// kept and returned by every later call: CPython cannot be initialised twice.
func Load(py locate.Python, paths ...string) (*Runtime, error) {
	loadMu.Lock()
	defer loadMu.Unlock()
	if py.LibPython == "" {
		return nil, &NoLibPythonError{Python: py}
	}
	if py.FreeThreaded {
		return nil, fmt.Errorf("%w (%s)", ErrFreeThreaded, py.LibPython)
	}
	if loaded != nil {
		if !sameFile(loaded.py.LibPython, py.LibPython) {
			return nil, fmt.Errorf("%w: %s is loaded, %s was asked for", ErrAlreadyLoaded, loaded.py.LibPython, py.LibPython)
		}
		// A bare library asks for no environment; an interpreter asks for
		// its own, which is fixed when Python starts.
		if py.Prefix != "" && !sameFile(envPrefix(loaded.py), envPrefix(py)) {
			return nil, fmt.Errorf("%w: %s runs the environment %s (%s), %s was asked for (%s): one process runs one Python environment; the process profile can run the other",
				ErrAlreadyLoaded, loaded.py.LibPython, envPrefix(loaded.py), orUnknown(loaded.py.Executable), envPrefix(py), orUnknown(py.Executable))
		}
		return loaded, nil
	}
	if poisoned != nil {
		return nil, poisoned
	}
	cpath := C.CString(py.LibPython)
	defer C.free(unsafe.Pointer(cpath))
	var cerr *C.char
	if C.spk_load(cpath, &cerr) != 0 {
		// Nothing stays loaded: a later call may try another library.
		return nil, fmt.Errorf("embed: load %s: %s", py.LibPython, takeCString(cerr))
	}
	rt, err := initialise(py, paths)
	if err != nil {
		poisoned = err
		return nil, err
	}
	loaded = rt
	return rt, nil
}

// envPrefix is the sys.prefix py starts with: its environment's, or its
// installation's.
func envPrefix(py locate.Python) string {
	if py.Prefix != "" {
		return py.Prefix
	}
	return py.Home
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

func takeCString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.free(unsafe.Pointer(s))
	return C.GoString(s)
}

// parseVersion reads "3.14.6 (main, ...)" or "3.13.0rc1 (...)".
func parseVersion(full string) (Version, error) {
	v := Version{Full: full}
	head, _, _ := strings.Cut(full, " ")
	parts := strings.SplitN(head, ".", 3)
	if len(parts) < 2 {
		return v, fmt.Errorf("embed: cannot parse Python version %q", full)
	}
	var err error
	if v.Major, err = strconv.Atoi(parts[0]); err != nil {
		return v, fmt.Errorf("embed: cannot parse Python version %q", full)
	}
	if v.Minor, err = strconv.Atoi(parts[1]); err != nil {
		return v, fmt.Errorf("embed: cannot parse Python version %q", full)
	}
	if len(parts) == 3 {
		micro := parts[2] // may carry a suffix: "0rc1", "6+"
		for i, r := range micro {
			if r < '0' || r > '9' {
				micro = micro[:i]
				break
			}
		}
		v.Micro, _ = strconv.Atoi(micro)
	}
	return v, nil
}

func initialise(py locate.Python, paths []string) (*Runtime, error) {
	v, err := parseVersion(C.GoString(C.spk_version()))
	if err != nil {
		return nil, err
	}
	if v.Major != 3 || v.Minor < MinMinor || v.Minor > MaxMinor {
		return nil, fmt.Errorf("%w: %s is Python %s", ErrUnsupportedVersion, py.LibPython, v)
	}
	// _Py_MergeZeroLocalRefcount exists only in free-threaded builds.
	if has("_Py_MergeZeroLocalRefcount") {
		return nil, fmt.Errorf("%w (%s)", ErrFreeThreaded, py.LibPython)
	}
	var need []string
	switch {
	case v.Minor >= 14:
		need = []string{"PyInitConfig_Create", "PyInitConfig_Free", "PyInitConfig_SetInt", "PyInitConfig_SetStr", "PyInitConfig_GetError", "Py_InitializeFromInitConfig", "Py_NewInterpreterFromConfig"}
	case v.Minor >= 12:
		need = []string{"Py_SetPythonHome", "Py_SetProgramName", "Py_NewInterpreterFromConfig"}
	default:
		need = []string{"Py_SetPythonHome", "Py_SetProgramName"}
	}
	for _, sym := range need {
		if !has(sym) {
			return nil, fmt.Errorf("embed: %s (Python %s): missing symbol %s", py.LibPython, v, sym)
		}
	}
	if C.spk_is_initialized() != 0 {
		return nil, errors.New("embed: libpython is already initialised by other code in this process")
	}
	// An unusable home makes CPython abort the process during start-up, so
	// check it first.
	if py.Home == "" {
		return nil, fmt.Errorf("embed: no Python home for %s: set %s to the installation prefix", py.LibPython, locate.EnvPythonHome)
	}
	stdlib := filepath.Join(py.Home, "lib", fmt.Sprintf("python%d.%d", v.Major, v.Minor))
	if _, err := os.Stat(filepath.Join(stdlib, "os.py")); err != nil {
		return nil, fmt.Errorf("embed: Python home %s has no standard library for %s (%s missing): set %s", py.Home, v, filepath.Join(stdlib, "os.py"), locate.EnvPythonHome)
	}

	rt := &Runtime{py: py, version: v, paths: append([]string(nil), paths...)}
	errc := make(chan error)
	go func() {
		// The thread that initialises Python keeps the main thread state and
		// never runs other code, so it stays locked and parked for the life of
		// the process. If initialisation fails the goroutine returns while
		// locked, and Go ends the thread.
		runtime.LockOSThread()
		home := C.CString(py.Home)
		prog := C.CString(py.Executable)
		var cerr *C.char
		rc := C.spk_init(C.int(v.Minor), home, prog, &cerr)
		C.free(unsafe.Pointer(home))
		C.free(unsafe.Pointer(prog))
		if rc != 0 {
			errc <- fmt.Errorf("embed: initialise Python %s: %s", v, takeCString(cerr))
			return
		}
		if C.spk_anchor_init(&cerr) != 0 {
			errc <- fmt.Errorf("embed: initialise Python %s: create the anchor interpreter: %s", v, takeCString(cerr))
			return
		}
		errc <- nil
		select {}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	main, err := startInterpreter(rt, true, InterpreterConfig{})
	if err != nil {
		return nil, err
	}
	rt.main = main
	return rt, nil
}

func has(sym string) bool {
	cs := C.CString(sym)
	defer C.free(unsafe.Pointer(cs))
	return C.spk_has(cs) != 0
}

// Version returns the loaded CPython's version.
func (rt *Runtime) Version() Version { return rt.version }

// Python returns the installation the runtime was loaded from.
func (rt *Runtime) Python() locate.Python { return rt.py }

// OwnGIL reports whether sub-interpreters get their own GIL (Python ≥ 3.12).
func (rt *Runtime) OwnGIL() bool { return rt.version.Minor >= 12 }

// Main returns the main interpreter. It lives as long as the process and
// cannot be closed. Code that needs isolation from other users of the
// process belongs in a sub-interpreter.
func (rt *Runtime) Main() *Interpreter { return rt.main }
