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
	in.SetHostHandler(func(token uint64, name string, payload []byte) []byte {
		mu.Lock()
		got = append(got, hostArgs{token, name, bytes.Clone(payload)})
		mu.Unlock()
		if name == "big" {
			return bytes.Repeat([]byte{'x'}, 100000)
		}
		return append([]byte("reply:"), payload...)
	})
	mustExec(t, in, "import _snakepit_embed\nhc = _snakepit_embed.host_call\n")
	if v := mustEval(t, in, "hc(7, 'fn', b'abc')"); !bytes.Equal(v.([]byte), []byte("reply:abc")) {
		t.Fatalf("got %s, want reply:abc", fmtV(v))
	}
	if v := mustEval(t, in, "hc(2**64 - 1, 'fn', bytearray(b'xy'))"); !bytes.Equal(v.([]byte), []byte("reply:xy")) {
		t.Fatalf("got %s, want reply:xy", fmtV(v))
	}
	if v := mustEval(t, in, "len(hc(1, 'big', b''))"); v != int64(100000) {
		t.Fatalf("got %s, want 100000", fmtV(v))
	}
	want := []hostArgs{{7, "fn", []byte("abc")}, {1<<64 - 1, "fn", []byte("xy")}, {1, "big", nil}}
	// Many names (more than the interpreter keeps), each twice: each call
	// gets its own name.
	if v := mustEval(t, in, "all(hc(0, 'n%d' % (i % 300), b'') == b'reply:' for i in range(600))"); v != true {
		t.Fatalf("got %s, want True", fmtV(v))
	}
	for i, a := range got[3:] {
		if w := fmt.Sprintf("n%d", i%300); a.name != w {
			t.Fatalf("call %d: got name %q, want %q", i+3, a.name, w)
		}
	}
	got = got[:3]
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
	in.SetHostHandler(func(uint64, string, []byte) []byte { panic("handler bug") })
	check("hc(1, 'f', b'')", "RuntimeError", "handler bug")
	in.SetHostHandler(func(uint64, string, []byte) []byte { return nil })
	if v := mustEval(t, in, "hc(1, 'f', b'')"); len(v.([]byte)) != 0 {
		t.Fatalf("got %s, want b''", fmtV(v))
	}
	for _, c := range []struct{ expr, msg string }{
		{"hc()", "takes 3 arguments"},
		{"hc(1, 'f')", "takes 3 arguments"},
		{"hc(1, 'f', b'', 4)", "takes 3 arguments"},
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

// TestHostCallThreads: Python threads call Go at the same time, each on its
// own OS thread with the GIL released (every call waits until all are in).
func TestHostCallThreads(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	const n = 4
	var mu sync.Mutex
	arrived := 0
	all := make(chan struct{})
	in.SetHostHandler(func(token uint64, name string, payload []byte) []byte {
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
	})
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
