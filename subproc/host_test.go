package subproc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

// hostAdapter exercises ctx.host from handlers, from threads they start,
// from streams, and the transport underneath.
const hostAdapter = `
import marshal, threading
import snakepit
from snakepit import HostError


def _err(e):
    return {"type": type(e).__name__, "kind": getattr(e, "kind", ""), "message": str(e),
            "key_error": isinstance(e, KeyError), "timeout": isinstance(e, TimeoutError),
            "type_error": isinstance(e, TypeError)}


@snakepit.command
def names(ctx):
    return ctx.host.names()


@snakepit.command
def lookup(ctx, user):
    return ctx.host.lookup(id=user, name="snake")


@snakepit.command
async def gather(ctx, n):
    import asyncio
    return await asyncio.gather(*(ctx.host.acall("echo", i=i) for i in range(n)))


@snakepit.command
def big_echo(ctx, data):
    r = ctx.host.echo(blob=data)
    return [r["blob"] == data, len(r["blob"])]


@snakepit.command
def arrays(ctx, n):
    import array
    a = array.array("d", range(n))
    r = ctx.host.arr(a=a)
    back = memoryview(r["back"])
    return {"go": r["go"], "back": [type(r["back"]).__name__ in ("memoryview", "ndarray"), back.readonly,
                                    list(back.shape), float(sum(back.tolist()))]}


@snakepit.command
def forked(ctx):
    import os
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ctx.host.echo(x=1)
            msg = "returned"
        except HostError as e:
            msg = str(e)
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


@snakepit.command
def call(ctx, name, kwargs):
    try:
        return {"result": ctx.host.call(name, **kwargs)}
    except HostError as e:
        return {"error": _err(e)}


@snakepit.command
def raw(ctx, name, payload, token=None):
    """The transport itself: the Go side's checks."""
    link = ctx._dispatcher.host_transport.__self__
    if token is not None:
        link.live.add(token)  # let a host call for a call not in flight go out
    else:
        token = ctx._token
    try:
        reply = ctx._dispatcher.host_transport(token, name, payload)
        return {"reply": reply}
    except (HostError, TypeError) as e:
        return {"error": _err(e)}


@snakepit.command
def propagate(ctx):
    return ctx.host.fail(msg="not caught")


@snakepit.command
def bad_kwargs(ctx):
    try:
        ctx.host.echo(x=object())
    except TypeError as e:
        return str(e)


@snakepit.command
def wait_in_go(ctx):
    try:
        ctx.host.block()
    except snakepit.Cancelled:
        return "cancelled"
    except HostError as e:
        return _err(e)
    return "returned"


@snakepit.command
def from_thread(ctx, n):
    out = {}
    def run():
        try:
            out["result"] = ctx.host.echo(n=n, where="thread")
        except BaseException as e:
            out["error"] = repr(e)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


@snakepit.command
def concurrent(ctx, n):
    results = [None] * n
    def run(i):
        try:
            results[i] = ctx.host.barrier(i=i)
        except BaseException as e:
            results[i] = repr(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


_late = {}


@snakepit.command
def leave_thread(ctx):
    """Start a thread that uses ctx.host once the call has ended."""
    go = threading.Event()
    def run():
        go.wait()
        try:
            ctx.host.echo(late=True)
            _late["result"] = "returned"
        except HostError as e:
            _late["result"] = e.kind
    t = threading.Thread(target=run)
    t.start()
    _late["go"], _late["thread"] = go, t
    return None


@snakepit.command
def late_result():
    _late["go"].set()
    _late["thread"].join(30)
    return _late.get("result", "still running")


@snakepit.command
def racing_thread(ctx):
    """A thread whose host call is in flight when the handler returns."""
    def run():
        try:
            _late["race"] = ctx.host.slow(x=1)
        except HostError as e:
            _late["race"] = e.kind
    t = threading.Thread(target=run)
    t.start()
    _late["race_thread"] = t
    ctx.host.slow_started()  # returns once Go runs slow
    return None


@snakepit.command
def race_result():
    _late["race_thread"].join(30)
    return _late.get("race", "still running")


@snakepit.command
def streaming(ctx, n):
    yield ctx.host.echo(at="open")
    for i in range(n):
        yield ctx.host.echo(i=i)


@snakepit.command
def kill_me(ctx):
    ctx.host.kill()
    return "not reached"


@snakepit.command
def send_frame(ctx, typ, rid, payload, host_bit):
    """Write a frame of the host's protocol, as is."""
    if host_bit:
        rid |= 1 << 63
    link = ctx._dispatcher.host_transport.__self__
    with link.send_lock:
        link.conn.send(typ, rid, payload, shared=False)
    import time
    time.sleep(30)


@snakepit.command
def host_loop(ctx, n):
    call = ctx.host.call
    for _ in range(n):
        call("noop", id=7, name="snake")
    return n
`

// lookupArgs is what lookup's struct argument is decoded from: by json
// tag.
type lookupArgs struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
}

// hostFixture is a worker with the test's host functions.
type hostFixture struct {
	w *subproc.Worker

	blockCtx chan context.Context // block: the ctx it saw done
	release  chan struct{}        // slow: closed to let it return
	slowIn   chan context.Context // slow: it started, with this ctx
	slowRuns chan struct{}        // closed when slow first runs
	slowOnce sync.Once
	cids     chan string // echo: correlation ids seen
	barrier  sync.WaitGroup
	killed   chan context.Context
}

func startHostWorker(t *testing.T, extra ...host.Func) *hostFixture {
	t.Helper()
	fx := &hostFixture{
		blockCtx: make(chan context.Context, 1),
		release:  make(chan struct{}),
		slowIn:   make(chan context.Context, 1),
		slowRuns: make(chan struct{}),
		cids:     make(chan string, 64),
		killed:   make(chan context.Context, 1),
	}
	fx.barrier.Add(4)
	funcs := []host.Func{
		host.New("lookup", func(ctx context.Context, a lookupArgs) (map[string]any, error) {
			return map[string]any{"id": a.ID * 2, "name": a.Name + "!", "cid": worker.CorrelationID(ctx)}, nil
		}),
		host.New("echo", func(ctx context.Context, a map[string]any) (map[string]any, error) {
			select {
			case fx.cids <- worker.CorrelationID(ctx):
			default:
			}
			return a, nil
		}),
		host.New("noop", func(ctx context.Context, a map[string]any) (map[string]any, error) { return a, nil }),
		host.New("fail", func(ctx context.Context, a struct{ Msg string }) (any, error) {
			return nil, fmt.Errorf("go failed: %s", a.Msg)
		}),
		host.New("missing", func(ctx context.Context, a struct{}) (any, error) {
			return nil, host.WithPythonType(errors.New("no such user"), "KeyError")
		}),
		host.New("expired", func(ctx context.Context, a struct{}) (any, error) {
			return nil, fmt.Errorf("upstream: %w", context.DeadlineExceeded)
		}),
		host.New("boom", func(ctx context.Context, a struct{}) (any, error) { panic("host function exploded") }),
		host.New("block", func(ctx context.Context, a struct{}) (any, error) {
			<-ctx.Done()
			fx.blockCtx <- ctx
			return nil, ctx.Err()
		}),
		host.New("slow", func(ctx context.Context, a map[string]any) (any, error) {
			fx.slowIn <- ctx
			fx.slowOnce.Do(func() { close(fx.slowRuns) })
			<-fx.release // ignores ctx on purpose
			return "slow done", nil
		}),
		host.New("slow_started", func(ctx context.Context, a struct{}) (any, error) {
			select {
			case <-fx.slowRuns:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}),
		host.New("barrier", func(ctx context.Context, a struct{ I int64 }) (any, error) {
			// Returns only once all four calls are in flight together.
			fx.barrier.Done()
			done := make(chan struct{})
			go func() { fx.barrier.Wait(); close(done) }()
			select {
			case <-done:
				return a.I, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}),
		host.New("kill", func(ctx context.Context, a struct{}) (any, error) {
			unix.Kill(fx.w.PID(), unix.SIGKILL)
			<-ctx.Done()
			fx.killed <- ctx
			return nil, ctx.Err()
		}),
	}
	set, err := host.NewSet(append(funcs, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	fx.w = startHostAdapter(t, set)
	return fx
}

// startHostAdapter starts hostAdapter with h as its host functions.
func startHostAdapter(t *testing.T, h worker.Host) *subproc.Worker {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "host_adapter.py"), []byte(hostAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "host_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t), Host: h,
		InterruptGrace: 10 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// hostCall calls command on w with args and a hang guard, decoding the
// result into out.
func hostCall(t *testing.T, w *subproc.Worker, command string, args map[string]any, out any) {
	t.Helper()
	if err := hostCallErr(w, command, "cid-"+command, args, out); err != nil {
		t.Fatalf("%s: %v", command, err)
	}
}

func hostCallErr(w *subproc.Worker, command, cid string, args map[string]any, out any) error {
	raw, err := pymarshal.Marshal(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := w.Call(ctx, &worker.Request{Command: command, Args: raw, CorrelationID: cid})
	if err != nil {
		return err
	}
	if out != nil {
		return pymarshal.Unmarshal(resp.Result, out)
	}
	return nil
}

type pyErr struct {
	Type      string `json:"type"`
	Kind      string `json:"kind"`
	Message   string `json:"message"`
	KeyError  bool   `json:"key_error"`
	Timeout   bool   `json:"timeout"`
	TypeError bool   `json:"type_error"`
}

type callOutcome struct {
	Result any    `json:"result"`
	Error  *pyErr `json:"error"`
}

// TestHostValues: struct arguments by json tag one way, a map result the
// other, with the call's correlation id in the function's context; names()
// lists what the host registered.
func TestHostValues(t *testing.T) {
	fx := startHostWorker(t)
	var got map[string]any
	hostCall(t, fx.w, "lookup", map[string]any{"user": 21}, &got)
	want := map[string]any{"id": int64(42), "name": "snake!", "cid": "cid-lookup"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("lookup: got %v, want %v", got, want)
	}
	var names []string
	hostCall(t, fx.w, "names", nil, &names)
	if want := []string{"barrier", "block", "boom", "echo", "expired", "fail", "kill", "lookup", "missing", "noop", "slow", "slow_started"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("names: got %v, want %v", names, want)
	}
}

// TestHostAsync: an async handler's tasks call Go at once with
// ctx.host.acall.
func TestHostAsync(t *testing.T) {
	fx := startHostWorker(t)
	var got []map[string]int64
	hostCall(t, fx.w, "gather", map[string]any{"n": 3}, &got)
	if want := []map[string]int64{{"i": 0}, {"i": 1}, {"i": 2}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestHostLargePayload: host call arguments and results above the shared
// region's threshold go through the socket, while the call's own request
// and reply use the region.
func TestHostLargePayload(t *testing.T) {
	fx := startHostWorker(t)
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var got []any
	hostCall(t, fx.w, "big_echo", map[string]any{"data": data}, &got)
	if want := []any{true, int64(len(data))}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestHostArrays: in the process profile too, an array.array argument
// reaches Go as a pymarshal.Array and an Array result reaches the handler
// as a read-only array with its shape.
func TestHostArrays(t *testing.T) {
	fx := startHostWorker(t, host.New("arr", func(ctx context.Context, a struct {
		A pymarshal.Array `json:"a"`
	}) (map[string]any, error) {
		back := make([]float64, a.A.Shape[0])
		for i := range back {
			back[i] = 0.5
		}
		arr, err := pymarshal.NewArray(back, len(back))
		if err != nil {
			return nil, err
		}
		return map[string]any{"go": []any{a.A.DType, a.A.Shape, len(a.A.Data)}, "back": arr}, nil
	}))
	// 3 and 20000 elements inline; 100000 (800 KB) through the host-call
	// region, the array data out of band in both directions.
	for _, n := range []int{3, 20000, 100000} {
		var got map[string]any
		hostCall(t, fx.w, "arrays", map[string]any{"n": n}, &got)
		want := map[string]any{
			"go":   []any{"<f8", []any{int64(n)}, int64(8 * n)},
			"back": []any{true, true, []any{int64(n)}, 0.5 * float64(n)},
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("n=%d: got %v, want %v", n, got, want)
		}
	}
}

// TestHostForked: ctx.host in a process forked from the worker raises
// HostError at once; the worker's own host calls go on.
func TestHostForked(t *testing.T) {
	fx := startHostWorker(t)
	var msg string
	hostCall(t, fx.w, "forked", nil, &msg)
	if want := "snakepit: ctx.host is not available in a process forked from the worker"; msg != want {
		t.Fatalf("got %q, want %q", msg, want)
	}
	var got map[string]any
	hostCall(t, fx.w, "lookup", map[string]any{"user": 4}, &got)
}

// TestHostErrors: Go errors reach Python as HostError with their text and
// kind (a KeyError-marked one is a KeyError, DeadlineExceeded a
// TimeoutError, a panic kind "panic", an unknown name kind "unknown" both
// before and after the transport), and a HostError the handler lets
// through reaches Go as the handler's Python error.
func TestHostErrors(t *testing.T) {
	fx := startHostWorker(t)
	for _, tc := range []struct {
		name string
		want pyErr
	}{
		{"fail", pyErr{Type: "HostError", Kind: "error", Message: "go failed: x"}},
		{"missing", pyErr{Type: "HostError", Kind: "error", Message: "'no such user'", KeyError: true}}, // str() of a KeyError quotes
		{"expired", pyErr{Type: "HostError", Kind: "deadline", Message: "upstream: context deadline exceeded", Timeout: true}},
		{"boom", pyErr{Type: "HostError", Kind: "panic", Message: `host: function "boom" panicked: host function exploded`}},
		{"nope", pyErr{Type: "HostError", Kind: "unknown"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got callOutcome
			hostCall(t, fx.w, "call", map[string]any{"name": tc.name, "kwargs": map[string]any{"msg": "x"}}, &got)
			if got.Error == nil {
				t.Fatalf("got result %v, want error %+v", got.Result, tc.want)
			}
			if tc.want.Message == "" {
				tc.want.Message = got.Error.Message
			}
			if *got.Error != tc.want {
				t.Fatalf("got %+v, want %+v", *got.Error, tc.want)
			}
		})
	}
	t.Run("unknown-through-transport", func(t *testing.T) {
		payload, _ := pymarshal.Marshal(map[string]any{})
		var got struct {
			Reply []byte `json:"reply"`
		}
		hostCall(t, fx.w, "raw", map[string]any{"name": "nope", "payload": payload}, &got)
		v, err := pymarshal.Decode(got.Reply[1:])
		if err != nil || got.Reply[0] != 1 {
			t.Fatalf("got reply %q (%v), want an error reply", got.Reply, err)
		}
		if kind := v.([]any)[0]; kind != "unknown" {
			t.Fatalf("got kind %v, want unknown", kind)
		}
	})
	t.Run("propagated", func(t *testing.T) {
		err := hostCallErr(fx.w, "propagate", "cid", nil, nil)
		var pe *worker.PythonError
		if !errors.As(err, &pe) {
			t.Fatalf("got %v (%T), want a *worker.PythonError", err, err)
		}
		if pe.Type != "snakepit._adapter.HostError" {
			t.Fatalf("got Python type %q, want snakepit._adapter.HostError", pe.Type)
		}
		if pe.Message != "go failed: not caught" {
			t.Fatalf("got message %q, want %q", pe.Message, "go failed: not caught")
		}
	})
	t.Run("bad-input", func(t *testing.T) {
		var msg string
		hostCall(t, fx.w, "bad_kwargs", nil, &msg)
		if msg == "" {
			t.Fatal("got no TypeError for an argument marshal cannot carry")
		}
		var got callOutcome
		hostCall(t, fx.w, "raw", map[string]any{"name": "echo", "payload": "not bytes"}, &got)
		if got.Error == nil || !got.Error.TypeError {
			t.Fatalf("got %+v, want a TypeError for a str payload", got)
		}
	})
	// The worker survived all of it.
	var got map[string]any
	hostCall(t, fx.w, "lookup", map[string]any{"user": 1}, &got)
}

// TestHostDeadlineInterruptsWait: a handler waiting in a host function is
// interrupted at its call's deadline: Call returns the deadline error, and
// the function's context is done with it.
func TestHostDeadlineInterruptsWait(t *testing.T) {
	fx := startHostWorker(t)
	// Long enough for the handler to reach the host call on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := fx.w.Call(ctx, &worker.Request{Command: "wait_in_go", CorrelationID: "deadline"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	select {
	case hctx := <-fx.blockCtx:
		if !errors.Is(hctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("host function's ctx: got %v, want context.DeadlineExceeded", hctx.Err())
		}
		if cid := worker.CorrelationID(hctx); cid != "deadline" {
			t.Fatalf("host function's correlation id: got %q, want %q", cid, "deadline")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the host function's context is not done after the call's deadline")
	}
	// The worker goes on.
	var got map[string]any
	hostCall(t, fx.w, "lookup", map[string]any{"user": 2}, &got)
	if got["id"] != int64(4) {
		t.Fatalf("after the deadline: got %v, want id 4", got)
	}
}

// TestHostCallAbandonedWhileRunning: a host function that ignores its
// context is still running when its call is abandoned (its context
// cancelled). The handler (waiting for it) is cancelled, the late
// HOST_REPLY is dropped, and the worker serves the next calls correctly.
func TestHostCallAbandonedWhileRunning(t *testing.T) {
	fx := startHostWorker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := fx.w.Call(ctx, &worker.Request{Command: "call", Args: mustMarshal(t, map[string]any{"name": "slow", "kwargs": map[string]any{}})})
		done <- err
	}()
	var hctx context.Context
	select {
	case hctx = <-fx.slowIn:
	case <-time.After(30 * time.Second):
		t.Fatal("the host function did not start")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Call did not return when its context was cancelled")
	}
	if hctx.Err() == nil {
		t.Fatal("the host function's context is not done after its call was abandoned")
	}
	// The next call waits for the interrupted handler (Cancelled while
	// it waits for the reply), then runs.
	var got map[string]any
	hostCall(t, fx.w, "lookup", map[string]any{"user": 3}, &got)
	close(fx.release) // its reply now reaches a child that has moved on
	for i := range 5 {
		var got map[string]any
		hostCall(t, fx.w, "lookup", map[string]any{"user": i}, &got)
		if got["id"] != int64(2*i) {
			t.Fatalf("call %d after the late reply: got %v, want id %d", i, got, 2*i)
		}
	}
	assertAlive(t, fx.w)
}

// TestHostCallFromThread: a thread the handler starts (and joins) calls
// Go with the call's context.
func TestHostCallFromThread(t *testing.T) {
	fx := startHostWorker(t)
	var got map[string]any
	hostCall(t, fx.w, "from_thread", map[string]any{"n": 5}, &got)
	want := map[string]any{"result": map[string]any{"n": int64(5), "where": "thread"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if cid := <-fx.cids; cid != "cid-from_thread" {
		t.Fatalf("correlation id: got %q, want %q", cid, "cid-from_thread")
	}
}

// TestHostCallAfterCallEnded: ctx.host kept by a thread and used after the
// handler returned fails with HostError kind "ended" at once; one in flight
// when the handler returns gets its reply. Neither hangs the worker.
func TestHostCallAfterCallEnded(t *testing.T) {
	fx := startHostWorker(t)
	hostCall(t, fx.w, "leave_thread", nil, nil)
	var kind string
	hostCall(t, fx.w, "late_result", nil, &kind)
	if kind != "ended" {
		t.Fatalf("late host call: got %q, want HostError kind %q", kind, "ended")
	}

	hostCall(t, fx.w, "racing_thread", nil, nil)
	select {
	case ctx := <-fx.slowIn:
		// The handler returned (it waited for the host call to start), so
		// the call is over: the function's context is done.
		if ctx.Err() == nil {
			t.Fatal("the context of a host call still running when its call returned is not done")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the racing host call did not start")
	}
	close(fx.release)
	var race any
	hostCall(t, fx.w, "race_result", nil, &race)
	// The call ended while the function ran: its context was cancelled,
	// and the thread got the function's result (it ignores ctx).
	if race != "slow done" {
		t.Fatalf("host call in flight at the call's end: got %v, want %q", race, "slow done")
	}
}

// TestHostCallNotInFlight: a HOST_CALL naming a request that is not in
// flight gets an error reply from the host (the worker lives on).
func TestHostCallNotInFlight(t *testing.T) {
	fx := startHostWorker(t)
	payload, _ := pymarshal.Marshal(map[string]any{})
	var got struct {
		Reply []byte `json:"reply"`
	}
	hostCall(t, fx.w, "raw", map[string]any{"name": "echo", "payload": payload, "token": 987654}, &got)
	if len(got.Reply) == 0 || got.Reply[0] != 1 {
		t.Fatalf("got reply %q, want an error reply", got.Reply)
	}
	v, err := pymarshal.Decode(got.Reply[1:])
	if err != nil {
		t.Fatal(err)
	}
	if msg := v.([]any)[1].(string); msg != `subproc: host function "echo" called for request 987654, which is not in flight (the call ended)` {
		t.Fatalf("got message %q", msg)
	}
	assertAlive(t, fx.w)
}

// TestHostConcurrentCalls: four Python threads of one handler have their
// host calls in flight at once (the Go function returns only when all
// four are).
func TestHostConcurrentCalls(t *testing.T) {
	fx := startHostWorker(t)
	var got []any
	hostCall(t, fx.w, "concurrent", map[string]any{"n": 4}, &got)
	if want := []any{int64(0), int64(1), int64(2), int64(3)}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestHostCallsInStream: ctx.host works during the stream's open and each
// item, with the stream's correlation id.
func TestHostCallsInStream(t *testing.T) {
	fx := startHostWorker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := fx.w.Stream(ctx, &worker.Request{Command: "streaming", Args: mustMarshal(t, map[string]any{"n": 3}), CorrelationID: "stream-cid"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var items []any
	for {
		b, err := s.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		v, err := pymarshal.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, v)
	}
	want := []any{map[string]any{"at": "open"}, map[string]any{"i": int64(0)}, map[string]any{"i": int64(1)}, map[string]any{"i": int64(2)}}
	if !reflect.DeepEqual(items, want) {
		t.Fatalf("got %v, want %v", items, want)
	}
	for range 4 {
		if cid := <-fx.cids; cid != "stream-cid" {
			t.Fatalf("correlation id: got %q, want %q", cid, "stream-cid")
		}
	}
}

// TestHostNone: a worker without host functions lists none, and a call
// (through ctx.host or the transport) is an "unknown" error.
func TestHostNone(t *testing.T) {
	w := startHostAdapter(t, nil)
	var names []string
	hostCall(t, w, "names", nil, &names)
	if len(names) != 0 {
		t.Fatalf("names: got %v, want none", names)
	}
	var got callOutcome
	hostCall(t, w, "call", map[string]any{"name": "echo", "kwargs": map[string]any{}}, &got)
	if got.Error == nil || got.Error.Kind != "unknown" {
		t.Fatalf("got %+v, want HostError kind unknown", got)
	}
	payload, _ := pymarshal.Marshal(map[string]any{})
	var raw struct {
		Reply []byte `json:"reply"`
	}
	hostCall(t, w, "raw", map[string]any{"name": "echo", "payload": payload}, &raw)
	v, err := pymarshal.Decode(raw.Reply[1:])
	if err != nil || raw.Reply[0] != 1 || v.([]any)[0] != "unknown" {
		t.Fatalf("got reply %q, want an unknown error", raw.Reply)
	}
}

// TestHostWorkerKilledDuringHostCall: the worker dies while a host call is
// in flight: Call returns ErrWorkerDead, the function's context is done,
// and Close leaves no goroutine behind.
func TestHostWorkerKilledDuringHostCall(t *testing.T) {
	base := goroutineBaseline(t)
	fx := startHostWorker(t)
	err := hostCallErr(fx.w, "kill_me", "cid", nil, nil)
	if !errors.Is(err, worker.ErrWorkerDead) {
		t.Fatalf("got %v, want worker.ErrWorkerDead", err)
	}
	select {
	case ctx := <-fx.killed:
		if ctx.Err() == nil {
			t.Fatal("the host function's context is not done")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the host function did not return")
	}
	closeWithin(t, fx.w, 10*time.Second)
	assertGoroutines(t, base)
}

// TestHostMalformedCall: a HOST_CALL the host cannot parse kills the
// worker with a ProtocolError.
func TestHostMalformedCall(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hostBit bool
		payload []byte
	}{
		{"garbage", true, []byte("garbage")},
		{"wrong-shape", true, mustMarshal(t, []any{int64(1), "echo"})},
		{"no-id-bit", false, mustMarshal(t, pymarshal.Tuple{int64(1), "echo", []byte{}})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := startHostWorker(t)
			err := hostCallErr(fx.w, "send_frame", "cid", map[string]any{"typ": 12, "rid": 5, "host_bit": tc.hostBit, "payload": tc.payload}, nil)
			var pe *subproc.ProtocolError
			if !errors.As(err, &pe) || !errors.Is(err, worker.ErrWorkerDead) {
				t.Fatalf("got %v, want a *subproc.ProtocolError", err)
			}
			waitDead(t, fx.w)
		})
	}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := pymarshal.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
