package embed_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

type hostArgs struct {
	token   uint64
	name    string
	payload []byte
}

// TestHostCallBuiltin: _snakepit_embed.host_call hands its arguments to the
// interpreter's handler and returns the handler's reply as bytes, small or
// larger than the builtin's own buffer.
func TestHostCallBuiltin(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	var mu sync.Mutex
	var got []hostArgs
	in.SetHostHandler(plainHandler(func(token uint64, name string, payload, buf []byte) []byte {
		mu.Lock()
		got = append(got, hostArgs{token, name, bytes.Clone(payload)})
		mu.Unlock()
		switch name {
		case "big": // outgrows buf
			return append(buf, bytes.Repeat([]byte{'x'}, 100000)...)
		case "own": // a slice of its own
			return append([]byte("own:"), payload...)
		}
		return append(append(buf, "reply:"...), payload...)
	}))
	mustExec(t, in, "import _snakepit_embed\nhc = _snakepit_embed.host_call\n")
	if v := mustEval(t, in, "hc(7, 'fn', b'abc')"); !bytes.Equal(v.([]byte), []byte("reply:abc")) {
		t.Fatalf("got %s, want reply:abc", fmtV(v))
	}
	if v := mustEval(t, in, "hc(2**64 - 1, 'fn', bytearray(b'xy'))"); !bytes.Equal(v.([]byte), []byte("reply:xy")) {
		t.Fatalf("got %s, want reply:xy", fmtV(v))
	}
	if v := mustEval(t, in, "hc(1, 'big', b'') == b'x' * 100000"); v != true {
		t.Fatalf("got %s, want True", fmtV(v))
	}
	if v := mustEval(t, in, "hc(3, 'own', b'z')"); !bytes.Equal(v.([]byte), []byte("own:z")) {
		t.Fatalf("got %s, want own:z", fmtV(v))
	}
	want := []hostArgs{{7, "fn", []byte("abc")}, {1<<64 - 1, "fn", []byte("xy")}, {1, "big", nil}, {3, "own", []byte("z")}}
	// Many names (more than the interpreter keeps), each twice: each call
	// gets its own name.
	if v := mustEval(t, in, "all(hc(0, 'n%d' % (i % 300), b'') == b'reply:' for i in range(600))"); v != true {
		t.Fatalf("got %s, want True", fmtV(v))
	}
	for i, a := range got[4:] {
		if w := fmt.Sprintf("n%d", i%300); a.name != w {
			t.Fatalf("call %d: got name %q, want %q", i+4, a.name, w)
		}
	}
	got = got[:4]
	if len(got) != len(want) {
		t.Fatalf("got %d calls, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].token != want[i].token || got[i].name != want[i].name || !bytes.Equal(got[i].payload, want[i].payload) {
			t.Fatalf("call %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestHostCallBadUse: wrong arguments raise TypeError, no handler or a
// panicking one RuntimeError; nothing crashes.
func TestHostCallBadUse(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, "import _snakepit_embed\nhc = _snakepit_embed.host_call\n")
	check := func(expr, wantType, wantMsg string) {
		t.Helper()
		_, err := in.Eval(context.Background(), expr)
		pe, ok := err.(*worker.PythonError)
		if !ok || pe.Type != wantType || !strings.Contains(pe.Message, wantMsg) {
			t.Fatalf("%s: got %v, want %s containing %q", expr, err, wantType, wantMsg)
		}
	}
	check("hc(1, 'f', b'')", "RuntimeError", "no host handler")
	in.SetHostHandler(plainHandler(func(uint64, string, []byte, []byte) []byte { panic("handler bug") }))
	check("hc(1, 'f', b'')", "RuntimeError", "handler bug")
	in.SetHostHandler(plainHandler(func(uint64, string, []byte, []byte) []byte { return nil }))
	if v := mustEval(t, in, "hc(1, 'f', b'')"); len(v.([]byte)) != 0 {
		t.Fatalf("got %s, want b''", fmtV(v))
	}
	for _, c := range []struct{ expr, msg string }{
		{"hc()", "takes 3 to 5 arguments"},
		{"hc(1, 'f')", "takes 3 to 5 arguments"},
		{"hc(1, 'f', b'', 4, 5, 6)", "takes 3 to 5 arguments"},
		{"hc(1, 'f', 'text', str)", "payload"},
		{"hc(1, 'f', [1], str)", "payload"},
		{"hc('1', 'f', b'')", "token"},
		{"hc(-1, 'f', b'')", "token"},
		{"hc(2**64, 'f', b'')", "token"},
		{"hc(None, 'f', b'')", "token"},
		{"hc(1, b'f', b'')", "name"},
		{"hc(1, '\\ud800', b'')", "name"},
		{"hc(1, 'f', 'text')", "payload"},
		{"hc(1, 'f', None)", "payload"},
		{"hc(1, 'f', b'', x=1)", "keyword"},
	} {
		check(c.expr, "TypeError", c.msg)
	}
	in.SetHostHandler(nil)
	check("hc(1, 'f', b'')", "RuntimeError", "no host handler")
}

// TestHostCallDecoded: host_call's four-argument form marshals a kwargs
// dict itself, exactly as marshal.dumps(d, 2) does (its own encoder for the
// common values, marshal for the rest), returns NotImplemented for values
// marshal refuses, decodes the reply, and hands an error reply to raise_.
func TestHostCallDecoded(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	in.SetHostHandler(plainHandler(func(token uint64, name string, payload, buf []byte) []byte {
		switch name {
		case "bytes": // the payload as it arrived, as a bytes value
			return pymarshal.AppendBytes(buf, payload)
		case "echo": // the payload as the reply: the dict itself
			return append(buf, payload...)
		case "fail":
			return append(buf, 0x01, 'N')
		case "empty":
			return buf
		}
		return append(buf, "garbage"...)
	}))
	mustExec(t, in, `import marshal, _snakepit_embed
hc = _snakepit_embed.host_call
class Err(Exception):
    pass
def raise_(reply):
    raise Err(reply)
class S(str):
    pass
cases = [
    {},
    {"a": 1, "b": "x"},
    {"n": None, "t": True, "f": False, "i": -2**31, "j": 2**31 - 1, "k": 2**31, "m": -2**31 - 1,
     "g": 1.5, "nan": float("inf"), "neg": -0.0, "s": "h\u00e9llo \U0001f600", "e": "", "b": b"\x00\xff", "eb": b""},
    {"big": 2**100, "l": [1, [2, "x"]], "d": {"k": {"z": 1}}, "tu": (1, 2), "c": 1j, "fs": frozenset([1])},
    {"flag": 1 == 1, "surrogate": "\ud800"},
    {"long": "x" * 600},
    {"k%d" % i: i for i in range(200)},
]
def same_bytes():
    return [hc(1, "bytes", d, raise_) == marshal.dumps(d, 2) for d in cases]
def same_values():
    return [hc(1, "echo", d, raise_) == d for d in cases[:3]]
def refused():
    return [hc(1, "bytes", d, raise_) is NotImplemented for d in ({"o": object()}, {"sub": S("x")})] == [True, True]
def failed():
    try:
        hc(1, "fail", {}, raise_)
    except Err as e:
        return e.args[0]
`)
	v := mustEval(t, in, "same_bytes()")
	for i, ok := range v.([]any) {
		if ok != true {
			t.Errorf("case %d: the payload Go got is not marshal.dumps(d, 2)", i)
		}
	}
	if v := mustEval(t, in, "same_values()"); fmt.Sprint(v) != "[true true true]" {
		t.Errorf("decoded replies: got %s, want all equal", fmtV(v))
	}
	if v := mustEval(t, in, "refused()"); v != true {
		t.Errorf("a value marshal refuses: got %s, want NotImplemented", fmtV(v))
	}
	if v := mustEval(t, in, "failed()"); !bytes.Equal(v.([]byte), []byte{0x01, 'N'}) {
		t.Errorf("error reply: got %s, want raise_(b'\\x01N')", fmtV(v))
	}
	for _, expr := range []string{"hc(1, 'empty', {}, raise_)", "hc(1, 'garbage', {}, raise_)"} {
		if _, err := in.Eval(context.Background(), expr); err == nil {
			t.Errorf("%s: got no error, want one", expr)
		}
	}
}

// TestHostCallThreads: Python threads call Go at the same time, each on its
// own OS thread with the GIL released (every call waits until all are in).
func TestHostCallThreads(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	const n = 4
	var mu sync.Mutex
	arrived := 0
	all := make(chan struct{})
	in.SetHostHandler(plainHandler(func(token uint64, name string, payload, _ []byte) []byte {
		mu.Lock()
		arrived++
		if arrived == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
			return []byte(name)
		case <-time.After(30 * time.Second): // hang guard
			return []byte("timeout")
		}
	}))
	mustExec(t, in, `import threading, _snakepit_embed
def run_threads(n):
    out = [None] * n
    def run(i):
        out[i] = _snakepit_embed.host_call(i, "t%d" % i, b"").decode()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out
`)
	f, err := in.Func(context.Background(), "__main__", "run_threads")
	if err != nil {
		t.Fatal(err)
	}
	args, _ := pymarshal.Marshal(pymarshal.Tuple{n})
	out, err := in.CallOnThread(embed.NewCallID(), f, args, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := pymarshal.Decode(out)
	if want := []any{"t0", "t1", "t2", "t3"}; fmtV(v) != fmtV(want) {
		t.Fatalf("got %s, want %s", fmtV(v), fmtV(want))
	}
}

// TestTagCalls: each CallOnThread sets the tagged attribute to its call id
// before the call.
func TestTagCalls(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, "class D:\n    tag = None\nd = D()\ndef read():\n    return d.tag\n")
	ctx := context.Background()
	d, err := in.Func(ctx, "__main__", "d")
	if err != nil {
		t.Fatal(err)
	}
	read, err := in.Func(ctx, "__main__", "read")
	if err != nil {
		t.Fatal(err)
	}
	if err := in.TagCalls(ctx, d, "tag"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		id := embed.NewCallID()
		out, err := in.CallOnThread(id, read, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := pymarshal.Decode(out); v != int64(id) {
			t.Fatalf("got tag %s, want %d", fmtV(v), id)
		}
	}
	// An object refusing the attribute fails the call, not the process.
	mustExec(t, in, "class S:\n    __slots__ = ()\ns = S()\n")
	s, err := in.Func(ctx, "__main__", "s")
	if err != nil {
		t.Fatal(err)
	}
	if err := in.TagCalls(ctx, s, "tag"); err != nil {
		t.Fatal(err)
	}
	_, err = in.CallOnThread(embed.NewCallID(), read, nil, nil, nil)
	if pe, ok := err.(*worker.PythonError); !ok || pe.Type != "AttributeError" {
		t.Fatalf("got %v, want AttributeError", err)
	}
}

// plainHandler adapts a handler that takes and returns no out-of-band
// buffers.
func plainHandler(f func(token uint64, name string, payload, buf []byte) []byte) embed.HostHandler {
	return func(token uint64, name string, payload []byte, _ [][]byte, reply []byte, _ bool) ([]byte, [][]byte) {
		return f(token, name, payload, reply), nil
	}
}
