package embed_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/valuetest"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

const echoCode = `
def echo(x):
    return x

def describe(x):
    return [type(x).__name__, x]

def kw(a, b=2, *rest, **more):
    return {"a": a, "b": b, "rest": list(rest), "more": more}

def noop():
    pass
`

type point struct {
	X     int     `json:"x"`
	Y     float64 `json:"y"`
	Label string  `json:"label,omitempty"`
	Note  string  `json:"-"`
}

// TestValueRoundTrip sends values Go → Python → Go through an identity
// function, on the home thread and on an attached Thread.
func TestValueRoundTrip(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, echoCode)
	deep := any("leaf")
	for range 500 {
		deep = []any{deep}
	}
	cases := []struct {
		name string
		in   any
		want any
	}{
		{"nil", nil, nil},
		{"true", true, true},
		{"false", false, false},
		{"zero", 0, int64(0)},
		{"int32 edge", int64(math.MaxInt32) + 1, int64(math.MaxInt32) + 1},
		{"max int64", int64(math.MaxInt64), int64(math.MaxInt64)},
		{"min int64", int64(math.MinInt64), int64(math.MinInt64)},
		{"uint8", uint8(200), int64(200)},
		{"float", 3.25, 3.25},
		{"+inf", math.Inf(1), math.Inf(1)},
		{"-inf", math.Inf(-1), math.Inf(-1)},
		{"empty string", "", ""},
		{"unicode", "héllo ✓ 😀", "héllo ✓ 😀"},
		{"nul in string", "a\x00b", "a\x00b"},
		{"long string", strings.Repeat("x", 100000), strings.Repeat("x", 100000)},
		{"bytes", []byte{0, 1, 255}, []byte{0, 1, 255}},
		{"empty bytes", []byte{}, []byte{}},
		{"big bytes", make([]byte, 1<<20), make([]byte, 1<<20)},
		{"list", []any{1, "a", nil, 2.5}, []any{int64(1), "a", nil, 2.5}},
		{"typed slice", []string{"a", "b"}, []any{"a", "b"}},
		{"tuple", pymarshal.Tuple{1, 2}, []any{int64(1), int64(2)}},
		{"empty list", []any{}, []any{}},
		{"dict", map[string]any{"a": 1, "b": []any{true}}, map[string]any{"a": int64(1), "b": []any{true}}},
		{"typed map", map[string]int{"n": 7}, map[string]any{"n": int64(7)}},
		{"struct", point{X: 1, Y: 2.5, Note: "dropped"}, map[string]any{"x": int64(1), "y": 2.5}},
		{"struct pointer", &point{X: 1, Label: "p"}, map[string]any{"x": int64(1), "y": 0.0, "label": "p"}},
		{"nil pointer", (*point)(nil), nil},
		{"deep", deep, deep},
	}
	th, err := in.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	f, err := th.Func("__main__", "echo")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := th.Call(f, []any{tc.in}, nil)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("thread: got %.200s, %v; want %.200s", fmtV(got), err, fmtV(tc.want))
			}
			got, err = in.Call(ctx, "__main__", "echo", []any{tc.in}, nil)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("home: got %.200s, %v; want %.200s", fmtV(got), err, fmtV(tc.want))
			}
		})
	}

	t.Run("NaN", func(t *testing.T) {
		got, err := th.Call(f, []any{math.NaN()}, nil)
		if g, ok := got.(float64); err != nil || !ok || !math.IsNaN(g) {
			t.Fatalf("got %v, %v; want NaN", got, err)
		}
	})
	t.Run("python types", func(t *testing.T) {
		d, _ := th.Func("__main__", "describe")
		for _, c := range []struct {
			in   any
			want string
		}{{pymarshal.Tuple{1}, "tuple"}, {[]any{1}, "list"}, {[]byte("x"), "bytes"}, {"x", "str"}, {int64(1) << 62, "int"}, {true, "bool"}, {nil, "NoneType"}, {map[string]any{}, "dict"}, {1.0, "float"}} {
			got, err := th.Call(d, []any{c.in}, nil)
			if err != nil || got.([]any)[0] != c.want {
				t.Errorf("type of %#v in Python: got %v, %v; want %s", c.in, got, err, c.want)
			}
		}
	})
	t.Run("kwargs", func(t *testing.T) {
		got, err := in.Call(ctx, "__main__", "kw", []any{1, 2, 3}, map[string]any{"z": "zz"})
		want := map[string]any{"a": int64(1), "b": int64(2), "rest": []any{int64(3)}, "more": map[string]any{"z": "zz"}}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("got %v, %v; want %v", got, err, want)
		}
	})
	t.Run("into struct", func(t *testing.T) {
		out, err := th.CallRaw(f, mustMarshal(t, pymarshal.Tuple{point{X: 3, Y: 4}}), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var p point
		if err := pymarshal.Unmarshal(out, &p); err != nil || p.X != 3 || p.Y != 4 {
			t.Fatalf("got %+v, %v; want {X:3 Y:4}", p, err)
		}
	})
}

var pymarshalDecode = pymarshal.Decode

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := pymarshal.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestValueErrors: what cannot cross fails with a typed error naming it.
func TestValueErrors(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, echoCode+`
import datetime, enum
class Color(enum.IntEnum):
    RED = 1
rec = []
rec.append(rec)
deep = []
for _ in range(2500):
    deep = [deep]
`)
	ctx := context.Background()
	results := []struct {
		expr       string
		sentinel   error
		wantDetail string
	}{
		{"2**64", pymarshal.ErrIntRange, "out of range"},
		{"-2**63 - 1", pymarshal.ErrIntRange, "out of range"},
		{"'\\ud800'", pymarshal.ErrInvalidUTF8, "UTF-8"},
		{"{'when': datetime.datetime(2020, 1, 1)}", nil, "['when']: datetime.datetime"},
		{"[1, {'c': Color.RED}]", nil, "[1]['c']: __main__.Color"},
		{"{1: 2}", nil, "dict key of type int"},
		{"{1, 2}", pymarshal.ErrUnsupported, "set"},
		{"1j", pymarshal.ErrUnsupported, "complex"},
		{"rec", pymarshal.ErrUnsupported, "recursive"},
		{"object()", nil, "object"},
		{"(lambda: 0)", nil, "function"},
		{"deep", nil, "nested more than 2000 levels"},
	}
	for _, r := range results {
		t.Run(r.expr, func(t *testing.T) {
			_, err := in.Eval(ctx, r.expr)
			var nse *worker.NotSerializableError
			if !errors.As(err, &nse) || !errors.Is(err, worker.ErrNotSerializable) || nse.What != "result" {
				t.Fatalf("got %v, want a result NotSerializableError", err)
			}
			if r.sentinel != nil && !errors.Is(err, r.sentinel) {
				t.Fatalf("got %v, want it to match %v", err, r.sentinel)
			}
			if !strings.Contains(err.Error(), r.wantDetail) {
				t.Fatalf("got %q, want it to mention %q", err, r.wantDetail)
			}
		})
	}
	args := []struct {
		name     string
		arg      any
		sentinel error
	}{
		{"invalid UTF-8", "\xff\xfe", pymarshal.ErrInvalidUTF8},
		{"uint64 beyond int64", uint64(math.MaxUint64), pymarshal.ErrIntRange},
		{"channel", make(chan int), pymarshal.ErrUnsupported},
		{"int map keys", map[int]int{1: 1}, pymarshal.ErrUnsupported},
	}
	for _, a := range args {
		t.Run("argument "+a.name, func(t *testing.T) {
			_, err := in.Call(ctx, "__main__", "echo", []any{a.arg}, nil)
			var nse *worker.NotSerializableError
			if !errors.As(err, &nse) || nse.What != "argument" || !errors.Is(err, a.sentinel) {
				t.Fatalf("got %v, want an argument NotSerializableError matching %v", err, a.sentinel)
			}
		})
	}
	// The interpreter is still fine afterwards.
	if v := mustEval(t, in, "1 + 1"); v != int64(2) {
		t.Fatalf("after errors: got %v, want 2", v)
	}
}

// TestPythonError: exceptions cross as *worker.PythonError with a traceback;
// SystemExit and KeyboardInterrupt are exceptions, not process exits.
func TestPythonError(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, `
import json
def inner(n):
    raise ValueError("bad value %d" % n)
def outer():
    inner(42)
def bad_json():
    return json.loads("{")
def chained():
    try:
        inner(1)
    except ValueError as e:
        raise RuntimeError("wrapped") from e
def bye():
    raise SystemExit(3)
def interrupt():
    raise KeyboardInterrupt
def empty():
    raise KeyError
`)
	ctx := context.Background()
	cases := []struct {
		fn, typ, msg string
		tb           []string
	}{
		{"outer", "ValueError", "bad value 42", []string{"Traceback (most recent call last)", "in outer", "in inner", "ValueError: bad value 42"}},
		{"bad_json", "json.decoder.JSONDecodeError", "Expecting property name", []string{"in bad_json"}},
		{"chained", "RuntimeError", "wrapped", []string{"direct cause", "ValueError: bad value 1", "RuntimeError: wrapped"}},
		{"bye", "SystemExit", "3", []string{"in bye"}},
		{"interrupt", "KeyboardInterrupt", "", []string{"in interrupt"}},
		{"empty", "KeyError", "", nil},
	}
	th, err := in.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	for _, c := range cases {
		t.Run(c.fn, func(t *testing.T) {
			f, err := th.Func("__main__", c.fn)
			if err != nil {
				t.Fatal(err)
			}
			for _, call := range []func() (any, error){
				func() (any, error) { return th.Call(f, nil, nil) },
				func() (any, error) { return in.Call(ctx, "__main__", c.fn, nil, nil) },
			} {
				_, err := call()
				var pe *worker.PythonError
				if !errors.As(err, &pe) || !errors.Is(err, worker.ErrPython) {
					t.Fatalf("got %v, want a *worker.PythonError", err)
				}
				if pe.Type != c.typ || !strings.Contains(pe.Message, c.msg) {
					t.Fatalf("got %s: %q, want %s: %q", pe.Type, pe.Message, c.typ, c.msg)
				}
				for _, want := range c.tb {
					if !strings.Contains(pe.Traceback, want) {
						t.Fatalf("traceback lacks %q:\n%s", want, pe.Traceback)
					}
				}
			}
		})
	}
	if _, err := in.Eval(ctx, "nope +"); !errors.Is(err, worker.ErrPython) || !strings.Contains(err.Error(), "SyntaxError") {
		t.Fatalf("syntax error: got %v", err)
	}
	if _, err := in.Call(ctx, "no_such_module_xyz", "f", nil, nil); !strings.Contains(err.Error(), "ModuleNotFoundError") {
		t.Fatalf("missing module: got %v", err)
	}
	if _, err := in.Call(ctx, "__main__", "no_such_function", nil, nil); !strings.Contains(err.Error(), "AttributeError") {
		t.Fatalf("missing function: got %v", err)
	}
	if v := mustEval(t, in, "'still alive'"); v != "still alive" {
		t.Fatalf("got %v", v)
	}
}

// TestIsolation: sub-interpreters do not see each other's globals or modules.
func TestIsolation(t *testing.T) {
	a := newInterp(t, embed.InterpreterConfig{})
	b := newInterp(t, embed.InterpreterConfig{})
	if a.ID() == b.ID() || a.ID() == 0 {
		t.Fatalf("interpreter ids %d and %d: want distinct and non-zero", a.ID(), b.ID())
	}
	mustExec(t, a, "secret = 'a'\nimport sys\nsys.snakepit_mark = 'a'")
	mustExec(t, b, "secret = 'b'")
	if v := mustEval(t, a, "secret"); v != "a" {
		t.Fatalf("a.secret: got %v, want a", v)
	}
	if v := mustEval(t, b, "secret"); v != "b" {
		t.Fatalf("b.secret: got %v, want b", v)
	}
	if v := mustEval(t, b, "hasattr(__import__('sys'), 'snakepit_mark')"); v != false {
		t.Fatalf("b sees a's sys attribute")
	}
	if v := mustEval(t, testRuntime(t).Main(), "'secret' in globals()"); v != false {
		t.Fatalf("the main interpreter sees a sub-interpreter's global")
	}
}

// TestPaths: InterpreterConfig.Paths lead sys.path, and modules load from them.
func TestPaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/snakepit_paths_probe.py", []byte("VALUE = 'from path'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := newInterp(t, embed.InterpreterConfig{Paths: []string{dir, "/another 'quoted\" path"}})
	got := mustEval(t, in, "__import__('sys').path[:2]")
	want := []any{dir, "/another 'quoted\" path"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("sys.path[:2]: got %v, want %v", got, want)
	}
	v, err := in.Call(context.Background(), "snakepit_paths_probe", "__getattribute__", []any{"VALUE"}, nil)
	if err != nil || v != "from path" {
		t.Fatalf("got %v, %v; want 'from path'", v, err)
	}
}

// TestStartupSettings: sys.executable is a real interpreter, PYTHON*
// variables are ignored, Python installed no signal handlers, and Go still
// receives SIGINT.
func TestStartupSettings(t *testing.T) {
	r := testRuntime(t)
	main := r.Main()
	exe, _ := mustEval(t, main, "__import__('sys').executable").(string)
	if st, err := os.Stat(exe); err != nil || st.IsDir() {
		t.Fatalf("sys.executable %q: not a file (%v)", exe, err)
	}
	if v := mustEval(t, main, "__import__('sys').flags.ignore_environment"); v != int64(1) {
		t.Fatalf("sys.flags.ignore_environment: got %v, want 1", v)
	}
	if v := mustEval(t, main, "any('snakepit-environment-leak' in p for p in __import__('sys').path)"); v != false {
		t.Fatalf("PYTHONPATH leaked into sys.path")
	}
	if v := mustEval(t, main, "__import__('sys').prefix"); v != r.Python().Home {
		t.Fatalf("sys.prefix: got %v, want %s", v, r.Python().Home)
	}
	// Python's own SIGINT handler would be signal.default_int_handler.
	if v := mustEval(t, main, "__import__('signal').getsignal(__import__('signal').SIGINT) is __import__('signal').default_int_handler"); v != false {
		t.Fatalf("Python installed its SIGINT handler")
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT)
	defer signal.Stop(c)
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGINT did not reach Go's os/signal")
	}
}

// TestSubinterpreterRefusal: an extension without sub-interpreter support
// fails to import with the typed error (3.12+); the main interpreter loads it.
func TestSubinterpreterRefusal(t *testing.T) {
	r := testRuntime(t)
	in := newInterp(t, embed.InterpreterConfig{})
	ctx := context.Background()
	if r.Version().Minor < 12 {
		// 3.11 has no per-module check: sub-interpreters share the GIL and
		// load any extension.
		if err := in.Import(ctx, "readline"); err != nil {
			t.Fatalf("3.11 import readline in a sub-interpreter: %v", err)
		}
		return
	}
	err := in.Import(ctx, "_testsinglephase")
	if !errors.Is(err, worker.ErrNotSubinterpreterSafe) {
		t.Fatalf("got %v, want ErrNotSubinterpreterSafe", err)
	}
	if !strings.Contains(err.Error(), "process profile") {
		t.Fatalf("error %q does not name the process profile", err)
	}
	if err := r.Main().Import(ctx, "_testsinglephase"); err != nil {
		t.Fatalf("main interpreter import: %v", err)
	}
	if v := mustEval(t, in, "'usable'"); v != "usable" {
		t.Fatalf("after the refusal: got %v", v)
	}
}

// TestConcurrentThreads: goroutines calling several interpreters at once on
// their own threads get their own answers.
func TestConcurrentThreads(t *testing.T) {
	const n, calls = 3, 2000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		in := newInterp(t, embed.InterpreterConfig{})
		mustExec(t, in, "me = "+string(rune('0'+i))+"\ndef who(x):\n    return [me, x]\n")
		wg.Add(1)
		go func() {
			defer wg.Done()
			th, err := in.Attach()
			if err != nil {
				errs <- err
				return
			}
			defer th.Close()
			f, err := th.Func("__main__", "who")
			if err != nil {
				errs <- err
				return
			}
			for j := range calls {
				got, err := th.Call(f, []any{j}, nil)
				if err != nil || !reflect.DeepEqual(got, []any{int64(i), int64(j)}) {
					errs <- errors.New("wrong answer: " + fmtV(got))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestLifecycleRules: what the API refuses, and that refusals leave nothing
// broken.
func TestLifecycleRules(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	if err := r.Main().Close(ctx); err == nil {
		t.Fatal("closing the main interpreter: got nil error")
	}
	in, err := r.NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	th, err := in.Attach()
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Close(ctx); err == nil || !strings.Contains(err.Error(), "attached") {
		t.Fatalf("Close with an attached Thread: got %v", err)
	}
	th.Close()
	th.Close() // idempotent

	// A context that ends while the home thread is busy: the call never runs.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	go func() {
		// Tells the test (through the pipe) that the home thread is busy.
		code := fmt.Sprintf("import os, time; os.write(%d, b'x'); time.sleep(1)", pw.Fd())
		if err := in.Exec(ctx, code); err != nil {
			pw.Close() // the test's Read ends
		}
	}()
	if _, err := pr.Read(make([]byte, 1)); err != nil {
		t.Fatalf("the blocking call did not start: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := in.Exec(short, "ran = True"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("busy home thread: got %v, want DeadlineExceeded", err)
	}
	if v := mustEval(t, in, "'ran' in globals()"); v != false {
		t.Fatal("a call whose context ended before it started ran anyway")
	}

	if err := in.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := in.Eval(ctx, "1"); !errors.Is(err, embed.ErrClosed) {
		t.Fatalf("Eval after Close: got %v, want ErrClosed", err)
	}
	if _, err := in.Attach(); !errors.Is(err, embed.ErrClosed) {
		t.Fatalf("Attach after Close: got %v, want ErrClosed", err)
	}
}

// TestLoadRules: Load refuses what it cannot run, and one process keeps one
// Python.
func TestLoadRules(t *testing.T) {
	r := testRuntime(t)
	py := r.Python()
	again, err := embed.Load(py)
	if err != nil || again != r {
		t.Fatalf("Load of the loaded library: got %p, %v; want the same runtime", again, err)
	}
	other := py
	other.LibPython = "/usr/lib/x86_64-linux-gnu/libm.so.6"
	if _, err := embed.Load(other); !errors.Is(err, embed.ErrAlreadyLoaded) {
		t.Fatalf("Load of another library: got %v, want ErrAlreadyLoaded", err)
	}
	ft := py
	ft.FreeThreaded = true
	if _, err := embed.Load(ft); !errors.Is(err, embed.ErrFreeThreaded) {
		t.Fatalf("free-threaded: got %v, want ErrFreeThreaded", err)
	}
	none := py
	none.LibPython = ""
	if _, err := embed.Load(none); err == nil || !strings.Contains(err.Error(), "enable-shared") {
		t.Fatalf("no library: got %v", err)
	}
}

// FuzzPythonRoundTrip is a differential fuzz of the codec against CPython:
// bytes the Go decoder accepts are handed to Python unchanged, read there by
// PyMarshal_ReadObjectFromString, returned by an identity function, written
// back by CPython and decoded by Go, which must give the same value.
func FuzzPythonRoundTrip(f *testing.F) {
	for _, v := range []any{
		nil, true, int64(-1) << 40, math.Inf(-1), "héllo", []byte{0, 1},
		[]any{int64(1), "a", pymarshal.Tuple{2.5}}, map[string]any{"k": []any{map[string]any{}}},
	} {
		b, _ := pymarshal.Marshal(v)
		f.Add(b)
	}
	in, err := testRuntime(f).NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { in.Close(context.Background()) })
	ctx := context.Background()
	if err := in.Exec(ctx, echoCode); err != nil {
		f.Fatal(err)
	}
	echo, err := in.Func(ctx, "__main__", "echo")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, err := pymarshal.Decode(data)
		if err != nil {
			return
		}
		args, err := pymarshal.Marshal(pymarshal.Tuple{pymarshal.RawValue(data)})
		if err != nil {
			t.Fatal(err)
		}
		out, err := in.CallRaw(ctx, echo, args, nil, nil)
		if err != nil {
			t.Fatalf("Python rejected bytes Go accepted (%x): %v", data, err)
		}
		got, err := pymarshal.Decode(out)
		if err != nil {
			t.Fatalf("Go cannot decode what CPython wrote back (%x): %v", out, err)
		}
		if !valuetest.Equal(got, want) {
			t.Fatalf("round trip through Python: got %#v, want %#v", got, want)
		}
	})
}
