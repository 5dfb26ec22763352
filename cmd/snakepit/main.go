// Command snakepit inspects and exercises a snakepit for Go setup from the
// shell: which Pythons it finds, whether an adapter module runs in the
// thread and process profiles, one call to an adapter's command, and a
// pool of an adapter served over NATS.
//
// Install it with
//
//	go install github.com/snakepit-go/snakepit/cmd/snakepit@latest
//
// Usage:
//
//	snakepit doctor [-json]
//	snakepit check [-path DIR]... [-python PATH] [-json] MODULE
//	snakepit call [-profile thread|process|auto] [-python PATH] [-path DIR]...
//	              [-timeout DUR] [-session ID] [-v] MODULE COMMAND [JSON]
//	snakepit serve [-nats URL] [-name NAME] [-profile P] [-size N] [-concurrency N]
//	               [-grace DUR] [-creds FILE | -nkey FILE] [-tls-ca FILE] MODULE
//	snakepit bench
//	snakepit help [COMMAND]
//
// doctor lists the Pythons found (the hermetic CPython 3.14 this binary
// carries, SNAKEPIT_PYTHON/SNAKEPIT_LIBPYTHON, python3 on PATH), which one
// each profile would use, and tries them: it starts a sub-interpreter worker
// and a process worker on an adapter that does nothing. It reports the
// hermetic distribution's cache and the process registry's state (hosts
// alive, process groups left by hosts that died). Each line is a check,
// "ok", "warn" or "FAIL"; the exit status is 1 when a check failed (a
// Python named by the environment that does not work, no usable Python).
//
// check imports an adapter in a sub-interpreter and in a child process,
// lists its commands (signature, description, docstring) and says which
// profiles run it, and why not the others. Exit status 0 when at least one
// profile runs it, 1 when none does.
//
// call runs one command: the JSON object is its keyword arguments (none
// when absent), the result is printed as JSON on stdout, a stream's items
// one JSON value per line. Python bytes are printed as base64 strings
// (standard encoding, with padding); a float that JSON cannot hold (NaN,
// infinities) is an error. Errors go to stderr with exit status 1 (a
// Python exception prints its traceback too).
//
// serve runs a pool of the adapter and serves it over NATS (package
// remote) until SIGINT or SIGTERM, then drains: calls in progress finish,
// new ones go to the other instances. A user and password come from
// SNAKEPIT_NATS_USER and SNAKEPIT_NATS_PASSWORD, never the command line.
//
// bench prints how to run the benchmark, which lives in the module's
// source tree (go run ./bench, make bench).
//
// Exit status 2 is a usage error: an unknown command or flag, a missing
// argument, arguments that are not a JSON object.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
)

// command is one subcommand.
type command struct {
	name    string
	args    string // the positional arguments, for the usage line
	summary string
	// flags returns the command's flag set; run runs it with the parsed
	// flags' values bound by flags.
	flags func(fs *flag.FlagSet) func(args []string, stdout, stderr io.Writer) int
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

// usageError is returned by a command's argument checks: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			c, ok := commands[args[1]]
			if !ok {
				fmt.Fprintf(stderr, "snakepit: unknown command %q\n\n", args[1])
				usage(stderr)
				return exitUsage
			}
			fs, _ := newFlagSet(c, stdout)
			fs.Usage()
			return exitOK
		}
		usage(stdout)
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "snakepit: unknown command %q\n\n", args[0])
		usage(stderr)
		return exitUsage
	}
	fs, runFn := newFlagSet(c, stderr)
	printUsage := fs.Usage
	fs.Usage = func() {} // printed below, to stdout for -h
	pos, err := parseInterleaved(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		printUsage()
		return exitOK
	}
	if err != nil {
		printUsage() // after the flag package's line saying what is wrong
		return exitUsage
	}
	return runFn(pos, stdout, stderr)
}

// newFlagSet returns c's flag set, printing to out, and its run function.
func newFlagSet(c command, out io.Writer) (*flag.FlagSet, func([]string, io.Writer, io.Writer) int) {
	fs := flag.NewFlagSet("snakepit "+c.name, flag.ContinueOnError)
	fs.SetOutput(out)
	runFn := c.flags(fs)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: snakepit %s [flags] %s\n\n%s\n", c.name, c.args, c.summary)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintf(w, "\nflags:\n")
			fs.PrintDefaults()
		}
	}
	return fs, runFn
}

// parseInterleaved parses flags that may come before, between and after
// the positional arguments ("check MODULE -path DIR"); "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `snakepit: inspect and exercise snakepit for Go from the shell

usage: snakepit COMMAND [flags] [arguments]

commands:
`)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := commands[n]
		fmt.Fprintf(w, "  %-8s %s\n", n, firstLine(c.summary))
	}
	fmt.Fprint(w, `
"snakepit help COMMAND" or "snakepit COMMAND -h" explains a command and its flags.
Exit status: 0 success, 1 failure, 2 usage error.
`)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func init() {
	register(command{
		name:    "bench",
		summary: "Say how to run the benchmark (thread vs process vs baselines).",
		flags: func(*flag.FlagSet) func([]string, io.Writer, io.Writer) int {
			return func(args []string, stdout, stderr io.Writer) int {
				if len(args) > 0 {
					fmt.Fprintf(stderr, "snakepit bench: takes no arguments, got %q\n", args)
					return exitUsage
				}
				fmt.Fprint(stdout, `The benchmark lives in the source tree of github.com/snakepit-go/snakepit:

  git clone https://github.com/snakepit-go/snakepit && cd snakepit
  go run ./bench -quick       # a short run, results printed
  make bench                  # the full run (make bench-quick: the short one)

go run ./bench -h lists its flags (where results are written, which
profiles and sizes run).
`)
				return exitOK
			}
		},
	})
}
