package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/subproc"
)

func init() {
	register(command{
		name: "doctor",
		summary: `Check the Python setup: the Pythons found, which one each profile uses, and whether they run.

Each line is a check: "ok", "warn" (works, with a limit worth knowing) or
"FAIL". It lists the hermetic CPython 3.14 this binary carries (its cache
directory and state), SNAKEPIT_PYTHON/SNAKEPIT_LIBPYTHON, python3 on PATH,
then tries the thread profile (loads the libpython it would use and starts
a sub-interpreter worker on an adapter that does nothing: version, own GIL
per worker) and the process profile (starts a worker process with the
interpreter it would run). It reads the process registry (hosts alive with
their worker process groups, groups left running by hosts that died; the
next program that starts a process worker kills those, and so does this
check). Exit status 1 when a check failed: a Python named by the
environment that does not work, or no profile that runs.`,
		flags: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
			var o doctorOptions
			fs.BoolVar(&o.json, "json", false, "print the checks as JSON: {\"ok\": bool, \"checks\": [{\"name\", \"status\", \"detail\", ...}]}")
			fs.BoolVar(&o.verify, "verify", false, "also check every file of the hermetic CPython against its recorded SHA-256 digest (slower)")
			fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "bound on each worker start")
			fs.BoolVar(&o.verbose, "v", false, "log the workers' events on stderr")
			return o.run
		},
	})
}

type doctorOptions struct {
	json, verify, verbose bool
	timeout               time.Duration
}

// Check statuses.
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "FAIL"
)

// doctorCheck is one line of the report.
type doctorCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	// Python, Version, LibPython: the installation the check is about.
	Python    string `json:"python,omitempty"`
	Version   string `json:"version,omitempty"`
	LibPython string `json:"libpython,omitempty"`
}

type doctorReport struct {
	OK     bool          `json:"ok"`
	Checks []doctorCheck `json:"checks"`
}

func (r *doctorReport) add(c doctorCheck) { r.Checks = append(r.Checks, c) }

func (o *doctorOptions) run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "snakepit doctor: takes no arguments, got %q (snakepit doctor -h explains)\n", args)
		return exitUsage
	}
	var r doctorReport
	// The registry first: the process check below sweeps it.
	registry := registryCheck(subproc.DefaultRegistryDir())

	r.add(hermeticCheck(o.verify))
	envFailed := false
	if c, ok := envCheck(); ok {
		envFailed = c.Status == statusFail
		r.add(c)
	}
	r.add(pathCheck())
	r.add(packageCheck())

	dir, err := os.MkdirTemp("", "snakepit-doctor-")
	if err != nil {
		r.add(doctorCheck{Name: "workers", Status: statusFail, Detail: "temporary directory: " + err.Error()})
	} else {
		defer os.RemoveAll(dir)
		err = os.WriteFile(filepath.Join(dir, noopModule+".py"), []byte(noopAdapter), 0o644)
		if err != nil {
			r.add(doctorCheck{Name: "workers", Status: statusFail, Detail: "temporary adapter: " + err.Error()})
		}
	}
	threadOK, processOK := false, false
	if err == nil {
		var c doctorCheck
		c, threadOK = o.threadCheck(dir, envFailed, stderr)
		r.add(c)
		c, processOK = o.processCheck(dir, stderr)
		r.add(c)
	}
	r.add(registry)
	if !threadOK && !processOK {
		r.add(doctorCheck{Name: "setup", Status: statusFail, Detail: "no usable Python: neither profile can start a worker (see above)"})
	} else if envFailed {
		r.add(doctorCheck{Name: "setup", Status: statusFail, Detail: "the Python the environment names does not work (see above): programs fail or run another Python"})
	}
	r.OK = true
	for _, c := range r.Checks {
		if c.Status == statusFail {
			r.OK = false
		}
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	} else {
		for _, c := range r.Checks {
			fmt.Fprintf(stdout, "%-4s  %-16s %s\n", c.Status, c.Name, indent(c.Detail, strings.Repeat(" ", 23)))
		}
	}
	if !r.OK {
		return exitFail
	}
	return exitOK
}

const (
	noopModule  = "snakepit_doctor_noop"
	noopAdapter = `import snakepit


@snakepit.command
def noop():
    return None
`
)

// hermeticCheck reports the hermetic CPython: where its cache is and
// whether it is extracted (it is extracted now if not).
func hermeticCheck(verify bool) doctorCheck {
	c := doctorCheck{Name: "hermetic python"}
	dir, err := dist.Dir(dist.Options{})
	if err != nil {
		c.Status, c.Detail = statusFail, "cache directory: "+err.Error()
		return c
	}
	state := "extracted"
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		state = "extracted now (it was not yet)"
	}
	py, err := dist.Default()
	if err != nil {
		c.Status, c.Detail = statusFail, fmt.Sprintf("CPython %s in %s: %v", dist.PythonVersion, dir, err)
		return c
	}
	if verify {
		if err := dist.Verify(dist.Options{}); err != nil {
			c.Status, c.Detail = statusFail, fmt.Sprintf("CPython %s in %s: verification failed: %v (remove the directory: it is extracted again)", dist.PythonVersion, dir, err)
			return c
		}
		state += ", every file matches its digest"
	}
	c.Status = statusOK
	c.Python, c.Version, c.LibPython = py.Executable, py.Version, py.LibPython
	c.Detail = fmt.Sprintf("CPython %s, %s, cache %s (%s=... moves it)", py.Version, state, dir, python.EnvCacheDir)
	return c
}

// envCheck reports SNAKEPIT_PYTHON/SNAKEPIT_LIBPYTHON; ok is false when
// neither is set.
func envCheck() (doctorCheck, bool) {
	lib, exe := os.Getenv(locate.EnvLibPython), os.Getenv(locate.EnvPython)
	if lib == "" && exe == "" {
		return doctorCheck{}, false
	}
	var set []string
	if exe != "" {
		set = append(set, locate.EnvPython+"="+exe)
	}
	if lib != "" {
		set = append(set, locate.EnvLibPython+"="+lib)
	}
	c := doctorCheck{Name: "environment"}
	py, err := locate.Find(locate.Options{})
	if err != nil {
		c.Status = statusFail
		c.Detail = fmt.Sprintf("%s: does not work: %v", strings.Join(set, " "), err)
		return c, true
	}
	c.Python, c.Version, c.LibPython = py.Executable, py.Version, py.LibPython
	c.Status = statusOK
	c.Detail = fmt.Sprintf("%s: CPython %s, used by both profiles instead of the hermetic one", strings.Join(set, " "), orNone(py.Version))
	if py.LibPython == "" {
		c.Status = statusWarn
		c.Detail += "; no shared libpython: the process profile only"
	}
	return c, true
}

// pathCheck reports python3 on PATH, which the library uses only when
// neither the environment nor the hermetic CPython gives a Python.
func pathCheck() doctorCheck {
	c := doctorCheck{Name: "python3 on PATH"}
	exe, err := exec.LookPath("python3")
	if err != nil {
		c.Status, c.Detail = statusOK, "not found (not needed: the environment or the hermetic CPython is used)"
		return c
	}
	py, err := locate.Query(exe)
	if err != nil {
		c.Status, c.Detail = statusWarn, fmt.Sprintf("%s: does not answer: %v", exe, err)
		return c
	}
	c.Status = statusOK
	c.Python, c.Version, c.LibPython = py.Executable, py.Version, py.LibPython
	lib := "shared libpython " + py.LibPython
	if py.LibPython == "" {
		lib = "no shared libpython (process profile only)"
	}
	c.Detail = fmt.Sprintf("%s: CPython %s, %s (used when neither the environment nor the hermetic CPython gives a Python, or with SNAKEPIT_PYTHON=%s)", py.Executable, py.Version, lib, exe)
	if py.FreeThreaded {
		c.Status = statusWarn
		c.Detail += "; a free-threaded build, which the thread profile refuses"
	}
	return c
}

// packageCheck reports where the snakepit Python package is written.
func packageCheck() doctorCheck {
	dir, err := python.Path()
	if err != nil {
		return doctorCheck{Name: "snakepit package", Status: statusFail, Detail: err.Error()}
	}
	return doctorCheck{Name: "snakepit package", Status: statusOK, Detail: dir}
}

// threadCheck loads the libpython the thread profile would use and starts
// a worker on the no-op adapter.
func (o *doctorOptions) threadCheck(dir string, envFailed bool, stderr io.Writer) (doctorCheck, bool) {
	c := doctorCheck{Name: "thread profile"}
	rt, err := gil.LoadRuntime("")
	if err != nil {
		c.Status, c.Detail = statusWarn, "unavailable (the process profile still works if it is ok below): "+err.Error()
		if envFailed {
			c.Status, c.Detail = statusFail, "the Python the environment names does not work: "+err.Error()
		}
		return c, false
	}
	py := rt.Python()
	c.Python, c.Version, c.LibPython = py.Executable, rt.Version().String(), py.LibPython
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	w, err := gil.Start(ctx, gil.Config{Module: noopModule, Paths: []string{dir}, Runtime: rt, ID: "doctor-thread", Logger: logger(o.verbose, stderr)})
	if err != nil {
		c.Status, c.Detail = statusFail, fmt.Sprintf("%s (CPython %s, from %s) loads, but a sub-interpreter worker does not start: %v", py.LibPython, rt.Version(), py.Source, err)
		return c, false
	}
	own := w.Interpreter().OwnGIL()
	_ = w.Close(ctx)
	c.Status = statusOK
	c.Detail = fmt.Sprintf("%s (CPython %s, from %s): sub-interpreter worker started, own GIL per worker: workers run in parallel", py.LibPython, rt.Version(), py.Source)
	if !own {
		c.Status = statusWarn
		c.Detail = fmt.Sprintf("%s (CPython %s, from %s): sub-interpreter worker started, but sub-interpreters share one GIL before Python 3.12: thread workers take turns (use 3.12+ or the process profile for parallelism)", py.LibPython, rt.Version(), py.Source)
	}
	return c, true
}

// processCheck starts a worker process with the interpreter the process
// profile would run.
func (o *doctorOptions) processCheck(dir string, stderr io.Writer) (doctorCheck, bool) {
	c := doctorCheck{Name: "process profile"}
	exe, err := processPython()
	if err != nil {
		c.Status, c.Detail = statusFail, "no Python interpreter: "+err.Error()
		return c, false
	}
	c.Python = exe
	if py, err := locate.Query(exe); err == nil {
		c.Version, c.LibPython = py.Version, py.LibPython
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	w, err := subproc.Start(ctx, subproc.Config{Module: noopModule, Paths: []string{dir}, Python: exe, ID: "doctor-process", Logger: logger(o.verbose, stderr)})
	if err != nil {
		c.Status, c.Detail = statusFail, fmt.Sprintf("%s: a worker process does not start: %v", exe, err)
		return c, false
	}
	_ = w.Close(ctx)
	c.Status, c.Detail = statusOK, fmt.Sprintf("%s (CPython %s): worker process started", exe, orNone(c.Version))
	return c, true
}

// registryCheck reads the process registry without changing it: run files
// of live hosts (locked by them) and of dead ones, with the worker groups
// they list that still run.
func registryCheck(dir string) doctorCheck {
	c := doctorCheck{Name: "process registry"}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		c.Status, c.Detail = statusOK, dir+": empty (created when a process worker first starts)"
		return c
	}
	if err != nil {
		c.Status, c.Detail = statusWarn, fmt.Sprintf("%s: unreadable (orphan cleanup cannot work): %v", dir, err)
		return c
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		c.Status, c.Detail = statusWarn, "/proc: "+err.Error()
		return c
	}
	var liveHosts, liveGroups, deadHosts, orphans int
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "run-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		live, groups, err := readRunFile(filepath.Join(dir, name))
		if err != nil {
			continue // removed meanwhile, or not ours
		}
		running := 0
		for _, g := range groups {
			p, err := fs.Proc(g.PGID)
			if err != nil {
				continue
			}
			if st, err := p.Stat(); err == nil && st.Starttime == g.Start {
				running++
			}
		}
		if live {
			liveHosts++
			liveGroups += running
		} else {
			deadHosts++
			orphans += running
		}
	}
	c.Status = statusOK
	c.Detail = fmt.Sprintf("%s: %d live host(s) with %d worker process group(s)", dir, liveHosts, liveGroups)
	if deadHosts > 0 {
		c.Detail += fmt.Sprintf("; %d run file(s) of hosts that died", deadHosts)
	}
	if orphans > 0 {
		c.Status = statusWarn
		c.Detail += fmt.Sprintf(", with %d orphaned worker group(s) still running (killed by the next program that starts a process worker, this check's included)", orphans)
	}
	return c
}

// runGroup is a process group a run file lists.
type runGroup struct {
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"`
}

// readRunFile reads a run file and says whether its host is alive (it
// holds the file's lock).
func readRunFile(path string) (live bool, groups []runGroup, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, nil, err
	}
	defer f.Close()
	switch err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); {
	case errors.Is(err, unix.EWOULDBLOCK):
		live = true
	case err != nil:
		return false, nil, err
	default:
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	}
	var rf struct {
		Groups []runGroup `json:"groups"`
	}
	data, err := io.ReadAll(io.LimitReader(f, subproc.MaxRunFileSize))
	if err != nil {
		return live, nil, err
	}
	if err := json.Unmarshal(data, &rf); err != nil {
		return live, nil, err
	}
	return live, rf.Groups, nil
}

func orNone(s string) string {
	if s == "" {
		return "(version unknown)"
	}
	return s
}
