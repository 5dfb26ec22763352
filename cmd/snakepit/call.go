package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

func init() {
	register(command{
		name: "call",
		args: "MODULE COMMAND [JSON]",
		summary: `Run one command of an adapter module and print its result as JSON.

JSON is an object: the command's keyword arguments (none when absent).
Integers stay integers, other numbers are floats. The result is printed on
stdout as one JSON value; a stream (a generator command) prints one JSON
value per line, as the items come. Python bytes are printed as base64
strings (standard encoding, padded); a numpy array (or other marshalled
array) as {"dtype", "shape", "data" (base64)}. A float JSON cannot hold
(NaN, infinities) is an error. Errors are printed on stderr (a Python
exception with its traceback) with exit status 1; bad arguments exit 2.`,
		flags: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
			var o callOptions
			fs.StringVar(&o.profile, "profile", "auto", "worker profile: thread (a sub-interpreter in this process), process (a child process) or auto (thread, else process when the adapter or the Python cannot run in a sub-interpreter)")
			fs.StringVar(&o.python, "python", "", "the `PATH` of the Python interpreter to use, as SNAKEPIT_PYTHON (the thread profile loads its libpython); default: SNAKEPIT_PYTHON/SNAKEPIT_LIBPYTHON, else the hermetic CPython 3.14")
			fs.Var(&o.paths, "path", "`DIR` to put on the adapter's sys.path (repeatable); default: the current directory")
			fs.DurationVar(&o.timeout, "timeout", 0, "bound on the call (or the whole stream), e.g. 30s; 0: none. The worker's start is bounded separately (60s)")
			fs.StringVar(&o.session, "session", "", "session `ID`: the handler's ctx.session_id (its ctx.session starts empty: the state lives as long as this command)")
			fs.BoolVar(&o.verbose, "v", false, "log the adapter's log records and the pool's events on stderr")
			return o.run
		},
	})
}

type callOptions struct {
	profile, python, session string
	paths                    stringList
	timeout                  time.Duration
	verbose                  bool
}

func (o *callOptions) run(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 || len(args) > 3 {
		fmt.Fprintf(stderr, "snakepit call: want MODULE COMMAND [JSON], got %d arguments (snakepit call -h explains)\n", len(args))
		return exitUsage
	}
	module, cmdName := args[0], args[1]
	var kwargs map[string]any
	if len(args) == 3 {
		var err error
		if kwargs, err = parseKwargs(args[2]); err != nil {
			fmt.Fprintf(stderr, "snakepit call: arguments: %v\n", err)
			return exitUsage
		}
	}
	var profile pool.Profile
	switch o.profile {
	case "thread":
		profile = pool.Thread
	case "process":
		profile = pool.Process
	case "auto":
		profile = pool.Auto
	default:
		fmt.Fprintf(stderr, "snakepit call: -profile must be thread, process or auto, got %q\n", o.profile)
		return exitUsage
	}
	usePython(o.python)
	paths, err := absPaths(o.paths)
	if err != nil {
		fmt.Fprintf(stderr, "snakepit call: -path: %v\n", err)
		return exitUsage
	}
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{
		Name: "snakepit-call", Profile: profile, Module: module, Paths: paths, Python: o.python,
		Size: 1, QueueSize: -1, Logger: logger(o.verbose, stderr),
	})
	if err != nil {
		return fail(stderr, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Close(cctx)
	}()
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	var (
		callFn   = p.Call
		streamFn = p.Stream
	)
	if o.session != "" {
		s := p.Session(o.session, pool.Hint)
		callFn, streamFn = s.Call, s.Stream
	}
	var out any
	err = callFn(ctx, cmdName, kwargs, &out)
	if errors.Is(err, worker.ErrStreamMismatch) {
		return streamOut(stdout, stderr, streamFn(ctx, cmdName, kwargs))
	}
	if err != nil {
		return fail(stderr, err)
	}
	if err := printJSON(stdout, out); err != nil {
		return fail(stderr, err)
	}
	return exitOK
}

// streamOut prints a stream's items, one JSON value per line.
func streamOut(stdout, stderr io.Writer, items func(func(pool.Chunk, error) bool)) int {
	for chunk, err := range items {
		if err != nil {
			return fail(stderr, err)
		}
		var v any
		if err := chunk.Decode(&v); err != nil {
			return fail(stderr, err)
		}
		if err := printJSON(stdout, v); err != nil {
			return fail(stderr, err)
		}
	}
	return exitOK
}

// fail prints err (and a Python traceback) on stderr and returns exit
// status 1.
func fail(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "snakepit: %v\n", err)
	var pe *worker.PythonError
	if errors.As(err, &pe) && pe.Traceback != "" {
		fmt.Fprintf(stderr, "\n%s\n", strings.TrimRight(pe.Traceback, "\n"))
	}
	return exitFail
}

// parseKwargs decodes a JSON object into keyword arguments: integers as
// int64 (float64 when beyond it), other numbers as float64.
func parseKwargs(s string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("not valid JSON: more than one value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid JSON: data after the object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a JSON object (the keyword arguments), got %s", jsonKind(v))
	}
	return numbers(m).(map[string]any), nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

// numbers replaces json.Numbers in v with int64 or float64.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = numbers(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = numbers(x[k])
		}
	}
	return v
}

// jsonValue converts a decoded Python value for encoding/json: []byte is
// left to it (base64), an array becomes {"dtype", "shape", "data"}.
func jsonValue(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = jsonValue(x[i])
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonValue(e)
		}
		return out
	case pymarshal.Array:
		return map[string]any{"dtype": x.DType, "shape": x.Shape, "data": x.Data}
	case *pymarshal.Array:
		return map[string]any{"dtype": x.DType, "shape": x.Shape, "data": x.Data}
	}
	return v
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(jsonValue(v)); err != nil {
		return fmt.Errorf("result cannot be printed as JSON: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}
