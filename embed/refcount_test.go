package embed_test

import (
	"context"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python/locate"
)

// TestRefcountBalance makes a million calls carrying a dict in and out, then
// many failing ones, and checks with sys.getallocatedblocks() that the
// interpreter's live allocations did not grow: a reference leaked per call
// would leave a million blocks behind.
func TestRefcountBalance(t *testing.T) {
	calls := 1_000_000
	if testing.Short() {
		calls = 100_000
	}
	in := newInterp(t, embed.InterpreterConfig{})
	mustExec(t, in, `
import sys
def handler(req):
    return {"id": req["id"], "name": req["name"] + "!", "tags": req["tags"], "blob": req["blob"]}
def fails(req):
    raise ValueError("no " + req["name"])
def unmarshallable(req):
    return {"s": {1, 2}, "o": object()}
def blocks():
    return sys.getallocatedblocks()
`)
	th, err := in.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	handler, _ := th.Func("__main__", "handler")
	fails, _ := th.Func("__main__", "fails")
	unmarsh, _ := th.Func("__main__", "unmarshallable")
	blocks, _ := th.Func("__main__", "blocks")
	countBlocks := func() int64 {
		v, err := th.Call(blocks, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return v.(int64)
	}
	args := mustMarshal(t, pymarshal.Tuple{map[string]any{
		"id": 12345678901, "name": "snake", "tags": []any{"a", "b", 3}, "blob": []byte("0123456789"),
	}})
	buf := make([]byte, 0, 256)
	run := func(f *embed.Func, n int, wantErr bool) {
		for range n {
			out, err := th.CallRaw(f, args, nil, buf[:0])
			if (err != nil) != wantErr {
				t.Fatalf("call %s: err = %v, want error: %v", f.Name(), err, wantErr)
			}
			buf = out[:0]
		}
	}
	// Warm up caches (method caches, free lists) before measuring.
	run(handler, 10_000, false)
	run(fails, 1_000, true)
	run(unmarsh, 1_000, true)
	before := countBlocks()
	run(handler, calls, false)
	run(fails, calls/10, true)
	run(unmarsh, calls/10, true)
	after := countBlocks()
	t.Logf("allocated blocks: %d before, %d after %d calls (+%d failing)", before, after, calls, calls/5)
	if d := after - before; d > 1000 || d < -1000 {
		t.Fatalf("allocated blocks changed by %d over %d calls: want |delta| <= 1000", d, calls)
	}
}

// TestLoadFailures runs in a child process, where nothing is loaded yet: a
// missing file and a library that is not libpython fail cleanly and leave
// the process able to load the real Python afterwards.
func TestLoadFailures(t *testing.T) {
	if os.Getenv("SNAKEPIT_TEST_LOADFAIL") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLoadFailures$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "SNAKEPIT_TEST_LOADFAIL=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "loaded after failures") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	py, err := embed.Locate(locate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bad := py
	bad.LibPython = "/nonexistent/libpython3.14.so"
	if _, err := embed.Load(bad); err == nil || !strings.Contains(err.Error(), "/nonexistent/libpython3.14.so") {
		t.Fatalf("missing file: got %v", err)
	}
	notPython := py
	notPython.LibPython = "libm.so.6"
	if _, err := embed.Load(notPython); err == nil || !strings.Contains(err.Error(), "missing symbol Py_GetVersion") {
		t.Fatalf("not libpython: got %v, want it to name the missing symbol", err)
	}
	r, err := embed.Load(py, "/snakepit/runtime-path")
	if err != nil {
		t.Fatalf("real library after failures: %v", err)
	}
	// The runtime's paths lead sys.path everywhere, before an interpreter's own.
	ctx := context.Background()
	if v, err := r.Main().Eval(ctx, "__import__('sys').path[0]"); err != nil || v != "/snakepit/runtime-path" {
		t.Fatalf("main sys.path[0]: got %v, %v", v, err)
	}
	in, err := r.NewInterpreter(embed.InterpreterConfig{Paths: []string{"/own"}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(ctx)
	v, err := in.Eval(ctx, "__import__('sys').path[:2]")
	if want := []any{"/snakepit/runtime-path", "/own"}; err != nil || !reflect.DeepEqual(v, want) {
		t.Fatalf("sub-interpreter sys.path[:2]: got %v, %v; want %v", v, err, want)
	}
	t.Logf("loaded after failures: %s", r.Version())
}
