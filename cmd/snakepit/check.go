package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

func init() {
	register(command{
		name: "check",
		args: "MODULE",
		summary: `Import an adapter module in a sub-interpreter and in a child process, list its commands and say which profiles run it.

Each command is listed with its signature (without ctx), its description
and docstring, and whether it streams or is async. For each profile that
cannot run the module, the reason is given (for example a module that
refuses sub-interpreters, named in the error). The adapter's setup() runs
in both; teardown() too. Exit status 0 when at least one profile runs the
module, 1 when none does.`,
		flags: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
			var o checkOptions
			fs.Var(&o.paths, "path", "`DIR` to put on the adapter's sys.path (repeatable); default: the current directory")
			fs.StringVar(&o.python, "python", "", "the `PATH` of the Python interpreter to use, as SNAKEPIT_PYTHON (the thread profile loads its libpython); default: SNAKEPIT_PYTHON/SNAKEPIT_LIBPYTHON, else the hermetic CPython 3.14")
			fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "bound on each profile's start (import and setup())")
			fs.BoolVar(&o.json, "json", false, "print the report as JSON")
			fs.BoolVar(&o.verbose, "v", false, "log the adapter's log records on stderr")
			return o.run
		},
	})
}

type checkOptions struct {
	paths         stringList
	python        string
	timeout       time.Duration
	json, verbose bool
}

// profileCheck is what trying one profile found.
type profileCheck struct {
	Runs bool `json:"runs"`
	// Python is the interpreter or library used, with its version.
	Python string `json:"python,omitempty"`
	// Detail is what else is worth knowing (own GIL).
	Detail string `json:"detail,omitempty"`
	// Error says why the profile does not run the module.
	Error string `json:"error,omitempty"`
	// NotSubinterpreterSafe: the module, or one it imports, refuses
	// sub-interpreters.
	NotSubinterpreterSafe bool `json:"not_subinterpreter_safe,omitempty"`
}

type checkReport struct {
	Module   string        `json:"module"`
	Thread   profileCheck  `json:"thread"`
	Process  profileCheck  `json:"process"`
	Auto     string        `json:"auto"` // the profile pool.Auto would choose; "" when none
	Commands []commandInfo `json:"commands"`
}

func (o *checkOptions) run(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintf(stderr, "snakepit check: want one MODULE, got %d arguments (snakepit check -h explains)\n", len(args))
		return exitUsage
	}
	usePython(o.python)
	paths, err := absPaths(o.paths)
	if err != nil {
		fmt.Fprintf(stderr, "snakepit check: -path: %v\n", err)
		return exitUsage
	}
	r := checkReport{Module: args[0]}
	log := logger(o.verbose, stderr)
	var desc *description
	var descErr error

	// Thread profile: a sub-interpreter worker of the runtime the library
	// would load.
	if rt, err := gil.LoadRuntime(""); err != nil {
		r.Thread.Error = "cannot load libpython: " + err.Error()
	} else {
		py := rt.Python()
		r.Thread.Python = fmt.Sprintf("%s (Python %s)", py.LibPython, rt.Version())
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		w, err := gil.Start(ctx, gil.Config{Module: r.Module, Paths: paths, Runtime: rt, ID: "check-thread", Logger: log})
		cancel()
		if err != nil {
			r.Thread.Error = err.Error()
			r.Thread.NotSubinterpreterSafe = errors.Is(err, worker.ErrNotSubinterpreterSafe)
		} else {
			r.Thread.Runs = true
			if w.Interpreter().OwnGIL() {
				r.Thread.Detail = "own GIL per worker: workers run in parallel"
			} else {
				r.Thread.Detail = "shared GIL (Python < 3.12): workers take turns"
			}
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			v, err := w.Interpreter().Call(ctx, "snakepit._describe", "describe", []any{r.Module}, nil)
			if err == nil {
				var d description
				if d, err = describeValue(v); err == nil {
					desc = &d
				}
			}
			descErr = err
			_ = w.Close(ctx)
			cancel()
		}
	}

	// Process profile: a child process of the interpreter the library
	// would run.
	if exe, err := processPython(); err != nil {
		r.Process.Error = "no Python interpreter: " + err.Error()
	} else {
		r.Process.Python = exe
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		w, err := subproc.Start(ctx, subproc.Config{Module: r.Module, Paths: paths, Python: exe, ID: "check-process", Logger: log})
		if err != nil {
			r.Process.Error = err.Error()
		} else {
			r.Process.Runs = true
			r.Process.Detail = fmt.Sprintf("pid %d", w.PID())
			_ = w.Close(ctx)
			if desc == nil {
				d, err := describeInChild(ctx, exe, r.Module, paths)
				if err == nil {
					desc = &d
				}
				descErr = err
			}
		}
		cancel()
	}
	switch {
	case r.Thread.Runs:
		r.Auto = "thread"
	case r.Process.Runs:
		r.Auto = "process"
	}
	if desc != nil {
		r.Commands = desc.Commands
	}
	if r.Commands == nil {
		r.Commands = []commandInfo{}
	}

	status := exitOK
	if !r.Thread.Runs && !r.Process.Runs {
		status = exitFail
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
		return status
	}
	printCheck(stdout, r)
	if desc == nil && descErr != nil && status == exitOK {
		fmt.Fprintf(stderr, "snakepit check: listing the commands failed: %v\n", descErr)
	}
	return status
}

func printCheck(w io.Writer, r checkReport) {
	fmt.Fprintf(w, "module %s\n\n", r.Module)
	line := func(name string, c profileCheck) {
		if c.Runs {
			fmt.Fprintf(w, "ok    %-8s runs it: %s", name, c.Python)
			if c.Detail != "" {
				fmt.Fprintf(w, "; %s", c.Detail)
			}
			fmt.Fprintln(w)
			return
		}
		fmt.Fprintf(w, "no    %-8s does not run it", name)
		if c.NotSubinterpreterSafe {
			fmt.Fprint(w, " (the module or one it imports refuses sub-interpreters: use the process profile)")
		}
		fmt.Fprintf(w, ":\n      %s\n", indent(c.Error, "      "))
	}
	line("thread", r.Thread)
	line("process", r.Process)
	switch r.Auto {
	case "":
		fmt.Fprintln(w, "\nno profile runs it")
	default:
		fmt.Fprintf(w, "\nprofile auto would run it in the %s profile\n", r.Auto)
	}
	if len(r.Commands) == 0 {
		fmt.Fprintln(w, "\nno commands (functions decorated with @snakepit.command)")
		return
	}
	fmt.Fprintf(w, "\ncommands:\n")
	for _, c := range r.Commands {
		var tags []string
		if c.Stream {
			tags = append(tags, "stream")
		}
		if c.Async {
			tags = append(tags, "async")
		}
		if c.ThreadSafe {
			tags = append(tags, "thread-safe")
		}
		fmt.Fprintf(w, "  %s%s", c.Name, c.Signature)
		if len(tags) > 0 {
			fmt.Fprintf(w, "  [%s]", strings.Join(tags, ", "))
		}
		fmt.Fprintln(w)
		doc := c.Doc
		if doc == "" {
			doc = c.Description
		}
		if doc != "" {
			fmt.Fprintf(w, "      %s\n", indent(doc, "      "))
		}
	}
}

// indent puts prefix before every line of s but the first (and the empty
// ones).
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := 1; i < len(lines); i++ {
		if lines[i] != "" {
			lines[i] = prefix + lines[i]
		}
	}
	return strings.Join(lines, "\n")
}
