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
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

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
	require.NoError(t, err)
	defer th.Close()
	f, err := th.Func("__main__", "echo")
	require.NoError(t, err)
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := th.Call(f, []any{tc.in}, nil)
			require.NoError(t, err, "thread")
			require.True(t, reflect.DeepEqual(got, tc.want), "thread: got %.200s, want %.200s", fmtV(got), fmtV(tc.want))
			got, err = in.Call(ctx, "__main__", "echo", []any{tc.in}, nil)
			require.NoError(t, err, "home")
			require.True(t, reflect.DeepEqual(got, tc.want), "home: got %.200s, want %.200s", fmtV(got), fmtV(tc.want))
		})
	}

	t.Run("NaN", func(t *testing.T) {
		got, err := th.Call(f, []any{math.NaN()}, nil)
		require.NoError(t, err)
		g, ok := got.(float64)
		assert.True(t, ok && math.IsNaN(g), "got %v, want NaN", got)
	})
	t.Run("python types", func(t *testing.T) {
		d, _ := th.Func("__main__", "describe")
		for _, c := range []struct {
			in   any
			want string
		}{{pymarshal.Tuple{1}, "tuple"}, {[]any{1}, "list"}, {[]byte("x"), "bytes"}, {"x", "str"}, {int64(1) << 62, "int"}, {true, "bool"}, {nil, "NoneType"}, {map[string]any{}, "dict"}, {1.0, "float"}} {
			got, err := th.Call(d, []any{c.in}, nil)
			if assert.NoError(t, err, "type of %#v in Python", c.in) {
				assert.Equal(t, c.want, got.([]any)[0], "type of %#v in Python", c.in)
			}
		}
	})
	t.Run("kwargs", func(t *testing.T) {
		got, err := in.Call(ctx, "__main__", "kw", []any{1, 2, 3}, map[string]any{"z": "zz"})
		want := map[string]any{"a": int64(1), "b": int64(2), "rest": []any{int64(3)}, "more": map[string]any{"z": "zz"}}
		require.NoError(t, err)
		assert.Equal(t, want, got)
	})
	t.Run("into struct", func(t *testing.T) {
		out, err := th.CallRaw(f, mustMarshal(t, pymarshal.Tuple{point{X: 3, Y: 4}}), nil, nil)
		require.NoError(t, err)
		var p point
		require.NoError(t, pymarshal.Unmarshal(out, &p))
		assert.Equal(t, point{X: 3, Y: 4}, p)
	})
}

var pymarshalDecode = pymarshal.Decode

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := pymarshal.Marshal(v)
	require.NoError(t, err)
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
			require.ErrorAs(t, err, &nse)
			require.ErrorIs(t, err, worker.ErrNotSerializable)
			assert.Equal(t, "result", nse.What)
			if r.sentinel != nil {
				assert.ErrorIs(t, err, r.sentinel)
			}
			assert.ErrorContains(t, err, r.wantDetail)
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
			require.ErrorAs(t, err, &nse)
			assert.Equal(t, "argument", nse.What)
			assert.ErrorIs(t, err, a.sentinel)
		})
	}
	// The interpreter is still fine afterwards.
	assert.Equal(t, int64(2), mustEval(t, in, "1 + 1"), "after errors")
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
	require.NoError(t, err)
	defer th.Close()
	for _, c := range cases {
		t.Run(c.fn, func(t *testing.T) {
			f, err := th.Func("__main__", c.fn)
			require.NoError(t, err)
			for _, call := range []func() (any, error){
				func() (any, error) { return th.Call(f, nil, nil) },
				func() (any, error) { return in.Call(ctx, "__main__", c.fn, nil, nil) },
			} {
				_, err := call()
				var pe *worker.PythonError
				require.ErrorAs(t, err, &pe)
				require.ErrorIs(t, err, worker.ErrPython)
				assert.Equal(t, c.typ, pe.Type)
				assert.Contains(t, pe.Message, c.msg)
				for _, want := range c.tb {
					assert.Contains(t, pe.Traceback, want, "traceback")
				}
			}
		})
	}
	_, err = in.Eval(ctx, "nope +")
	require.ErrorIs(t, err, worker.ErrPython, "syntax error")
	assert.ErrorContains(t, err, "SyntaxError")
	_, err = in.Call(ctx, "no_such_module_xyz", "f", nil, nil)
	assert.ErrorContains(t, err, "ModuleNotFoundError", "missing module")
	_, err = in.Call(ctx, "__main__", "no_such_function", nil, nil)
	assert.ErrorContains(t, err, "AttributeError", "missing function")
	assert.Equal(t, "still alive", mustEval(t, in, "'still alive'"))
}

// TestIsolation: sub-interpreters do not see each other's globals or modules.
func TestIsolation(t *testing.T) {
	a := newInterp(t, embed.InterpreterConfig{})
	b := newInterp(t, embed.InterpreterConfig{})
	require.NotZero(t, a.ID(), "interpreter id")
	require.NotEqual(t, a.ID(), b.ID(), "interpreter ids")
	mustExec(t, a, "secret = 'a'\nimport sys\nsys.snakepit_mark = 'a'")
	mustExec(t, b, "secret = 'b'")
	assert.Equal(t, "a", mustEval(t, a, "secret"), "a.secret")
	assert.Equal(t, "b", mustEval(t, b, "secret"), "b.secret")
	assert.Equal(t, false, mustEval(t, b, "hasattr(__import__('sys'), 'snakepit_mark')"), "b sees a's sys attribute")
	assert.Equal(t, false, mustEval(t, testRuntime(t).Main(), "'secret' in globals()"), "the main interpreter sees a sub-interpreter's global")
}

// TestPaths: InterpreterConfig.Paths lead sys.path, and modules load from them.
func TestPaths(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(dir+"/snakepit_paths_probe.py", []byte("VALUE = 'from path'\n"), 0o600))
	in := newInterp(t, embed.InterpreterConfig{Paths: []string{dir, "/another 'quoted\" path"}})
	got := mustEval(t, in, "__import__('sys').path[:2]")
	want := []any{dir, "/another 'quoted\" path"}
	assert.Equal(t, want, got, "sys.path[:2]")
	v, err := in.Call(context.Background(), "snakepit_paths_probe", "__getattribute__", []any{"VALUE"}, nil)
	require.NoError(t, err)
	assert.Equal(t, "from path", v)
}

// TestStartupSettings: sys.executable is a real interpreter, PYTHON*
// variables are ignored, Python installed no signal handlers, and Go still
// receives SIGINT.
func TestStartupSettings(t *testing.T) {
	r := testRuntime(t)
	main := r.Main()
	exe, _ := mustEval(t, main, "__import__('sys').executable").(string)
	require.FileExists(t, exe, "sys.executable")
	assert.Equal(t, int64(1), mustEval(t, main, "__import__('sys').flags.ignore_environment"), "sys.flags.ignore_environment")
	assert.Equal(t, false, mustEval(t, main, "any('snakepit-environment-leak' in p for p in __import__('sys').path)"), "PYTHONPATH leaked into sys.path")
	assert.Equal(t, r.Python().Home, mustEval(t, main, "__import__('sys').prefix"), "sys.prefix")
	// Python's own SIGINT handler would be signal.default_int_handler.
	assert.Equal(t, false, mustEval(t, main, "__import__('signal').getsignal(__import__('signal').SIGINT) is __import__('signal').default_int_handler"),
		"Python installed its SIGINT handler")
	c := make(chan os.Signal, 1)
	signal.Notify(c, unix.SIGINT)
	defer signal.Stop(c)
	require.NoError(t, unix.Kill(os.Getpid(), unix.SIGINT))
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
		require.NoError(t, in.Import(ctx, "readline"), "3.11 import readline in a sub-interpreter")
		return
	}
	err := in.Import(ctx, "_testsinglephase")
	require.ErrorIs(t, err, worker.ErrNotSubinterpreterSafe)
	assert.ErrorContains(t, err, "process profile")
	require.NoError(t, r.Main().Import(ctx, "_testsinglephase"), "main interpreter import")
	assert.Equal(t, "usable", mustEval(t, in, "'usable'"), "after the refusal")
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
		require.NoError(t, err)
	}
}

// TestLifecycleRules: what the API refuses, and that refusals leave nothing
// broken.
func TestLifecycleRules(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	require.Error(t, r.Main().Close(ctx), "closing the main interpreter")
	in, err := r.NewInterpreter(embed.InterpreterConfig{})
	require.NoError(t, err)
	th, err := in.Attach()
	require.NoError(t, err)
	require.ErrorContains(t, in.Close(ctx), "attached", "Close with an attached Thread")
	th.Close()
	th.Close() // idempotent

	// A context that ends while the home thread is busy: the call never runs.
	pr, pw, err := os.Pipe()
	require.NoError(t, err)
	defer pr.Close()
	defer pw.Close()
	go func() {
		// Tells the test (through the pipe) that the home thread is busy.
		code := fmt.Sprintf("import os, time; os.write(%d, b'x'); time.sleep(1)", pw.Fd())
		if err := in.Exec(ctx, code); err != nil {
			pw.Close() // the test's Read ends
		}
	}()
	_, err = pr.Read(make([]byte, 1))
	require.NoError(t, err, "the blocking call did not start")
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, in.Exec(short, "ran = True"), context.DeadlineExceeded, "busy home thread")
	assert.Equal(t, false, mustEval(t, in, "'ran' in globals()"), "a call whose context ended before it started ran anyway")

	require.NoError(t, in.Close(ctx))
	require.NoError(t, in.Close(ctx), "second Close")
	_, err = in.Eval(ctx, "1")
	assert.ErrorIs(t, err, embed.ErrClosed, "Eval after Close")
	_, err = in.Attach()
	assert.ErrorIs(t, err, embed.ErrClosed, "Attach after Close")
}

// TestLoadRules: Load refuses what it cannot run, and one process keeps one
// Python.
func TestLoadRules(t *testing.T) {
	r := testRuntime(t)
	py := r.Python()
	again, err := embed.Load(py)
	require.NoError(t, err, "Load of the loaded library")
	assert.Same(t, r, again, "Load of the loaded library")
	other := py
	other.LibPython = "/usr/lib/x86_64-linux-gnu/libm.so.6"
	_, err = embed.Load(other)
	assert.ErrorIs(t, err, embed.ErrAlreadyLoaded, "Load of another library")
	ft := py
	ft.FreeThreaded = true
	_, err = embed.Load(ft)
	assert.ErrorIs(t, err, embed.ErrFreeThreaded, "free-threaded")
	none := py
	none.LibPython = ""
	_, err = embed.Load(none)
	assert.ErrorIs(t, err, embed.ErrNoLibPython, "no library")
	assert.ErrorContains(t, err, "enable-shared", "no library")
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
	require.NoError(f, err)
	f.Cleanup(func() { in.Close(context.Background()) })
	ctx := context.Background()
	require.NoError(f, in.Exec(ctx, echoCode))
	echo, err := in.Func(ctx, "__main__", "echo")
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, data []byte) {
		want, err := pymarshal.Decode(data)
		if err != nil {
			return
		}
		args, err := pymarshal.Marshal(pymarshal.Tuple{pymarshal.RawValue(data)})
		require.NoError(t, err)
		out, err := in.CallRaw(ctx, echo, args, nil, nil)
		require.NoError(t, err, "Python rejected bytes Go accepted (%x)", data)
		got, err := pymarshal.Decode(out)
		require.NoError(t, err, "Go cannot decode what CPython wrote back (%x)", out)
		require.True(t, valuetest.Equal(got, want), "round trip through Python: got %#v, want %#v", got, want)
	})
}
