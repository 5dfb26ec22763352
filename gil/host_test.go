package gil_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
	"golang.org/x/sys/unix"
)

// hangGuard bounds waits that only a bug makes long.
const hangGuard = 30 * time.Second

type lookupArgs struct {
	UserID int      `json:"user_id"`
	Tags   []string `json:"tags"`
}

// noopArgs is the small dict BenchmarkHostCall sends each way.
type noopArgs struct {
	A int    `json:"a"`
	B string `json:"b"`
}

var rawNoopReply, _ = pymarshal.Marshal(map[string]any{"a": 1, "b": "x"})

type echoArgs struct {
	N   int    `json:"n"`
	CID string `json:"cid"`
}

// hostFixture is a worker running testdata/host_adapter.py with a set of
// host functions, and what those functions saw.
type hostFixture struct {
	w *gil.Worker

	waitEntered chan context.Context // wait: its ctx, once called
	gate        *gate
	lastCtx     chan context.Context // echo: each call's ctx (buffered, lossy)
}

// gate lets n calls through together: each waits until n are in.
type gate struct {
	mu   sync.Mutex
	n    int
	in   int
	open chan struct{}
}

func (g *gate) pass(ctx context.Context) error {
	g.mu.Lock()
	g.in++
	if g.in == g.n {
		close(g.open)
	}
	g.mu.Unlock()
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("only some of %d host calls arrived together: %w", g.n, ctx.Err())
	}
}

func hostFuncs(f *hostFixture) []host.Func {
	return []host.Func{
		host.New("lookup", func(ctx context.Context, a lookupArgs) (map[string]any, error) {
			return map[string]any{"id": a.UserID, "name": fmt.Sprintf("user-%d", a.UserID), "tags": a.Tags}, nil
		}),
		host.New("echo", func(ctx context.Context, a echoArgs) (map[string]any, error) {
			select {
			case f.lastCtx <- ctx:
			default:
			}
			return map[string]any{"n": a.N, "cid": a.CID, "go_cid": worker.CorrelationID(ctx)}, nil
		}),
		host.New("fail", func(ctx context.Context, a struct {
			How string `json:"how"`
		}) (any, error) {
			switch a.How {
			case "key":
				return nil, host.WithPythonType(errors.New("no such user"), "KeyError")
			case "deadline":
				return nil, fmt.Errorf("backend: %w", context.DeadlineExceeded)
			}
			return nil, errors.New("backend exploded")
		}),
		host.New("boom", func(ctx context.Context, a map[string]any) (any, error) {
			panic("host function panics")
		}),
		host.New("wait", func(ctx context.Context, a map[string]any) (any, error) {
			f.waitEntered <- ctx
			<-ctx.Done()
			return nil, ctx.Err()
		}),
		host.New("gate", func(ctx context.Context, a struct {
			I int `json:"i"`
		}) (int, error) {
			if err := f.gate.pass(ctx); err != nil {
				return 0, err
			}
			return a.I * 10, nil
		}),
		host.New("noop", func(ctx context.Context, a noopArgs) (noopArgs, error) {
			return a, nil
		}),
		host.Raw("raw_noop", func(ctx context.Context, a []byte) ([]byte, error) {
			return rawNoopReply, nil
		}),
		host.New("tid", func(ctx context.Context, a map[string]any) (int, error) {
			return unix.Gettid(), nil
		}),
	}
}

func startHost(t testing.TB, withHost bool) *hostFixture {
	t.Helper()
	f := &hostFixture{
		waitEntered: make(chan context.Context, 1),
		gate:        &gate{n: 4, open: make(chan struct{})},
		lastCtx:     make(chan context.Context, 16),
	}
	cfg := gil.Config{Module: "host_adapter", Paths: []string{abs(t, "testdata")}, Runtime: runtimeFor(t)}
	if withHost {
		set, err := host.NewSet(hostFuncs(f)...)
		require.NoError(t, err)
		cfg.Host = set
	}
	w, err := gil.Start(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	f.w = w
	return f
}

func abs(t testing.TB, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	require.NoError(t, err)
	return a
}

// hcall calls command with args and decodes the result, bounded by the
// hang guard.
func hcall(t testing.TB, w worker.Worker, command string, args any) (any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	return hcallCtx(t, ctx, w, &worker.Request{Command: command, CorrelationID: "cid-" + command}, args)
}

func hcallCtx(t testing.TB, ctx context.Context, w worker.Worker, req *worker.Request, args any) (any, error) {
	t.Helper()
	if args != nil {
		b, err := pymarshal.Marshal(args)
		require.NoError(t, err)
		req.Args = b
	}
	resp, err := w.Call(ctx, req)
	if err != nil {
		return nil, err
	}
	v, err := pymarshal.Decode(resp.Result)
	require.NoError(t, err)
	return v, nil
}

func mustHcall(t testing.TB, w worker.Worker, command string, args any) any {
	t.Helper()
	v, err := hcall(t, w, command, args)
	require.NoError(t, err, "call %s", command)
	return v
}

// TestHostValues: keyword arguments reach a Go struct by its json tags and
// a Go map comes back as a dict.
func TestHostValues(t *testing.T) {
	f := startHost(t, true)
	got := mustHcall(t, f.w, "lookup", map[string]any{"user_id": 7})
	want := map[string]any{"id": int64(7), "name": "user-7", "tags": []any{"a", "b"}}
	require.Equal(t, want, got, "got %v, want %v", got, want)
	for _, n := range []int{0, 4000, 5000, 1 << 20} { // around the builtin's 4 KiB reply buffer, and large
		got := mustHcall(t, f.w, "big", map[string]any{"n": n})
		require.Equal(t, []any{int64(n), int64(n), true}, got, "%d bytes each way", n)
	}
	got = mustHcall(t, f.w, "names", nil)
	require.Equal(t, []any{"boom", "echo", "fail", "gate", "lookup", "noop", "raw_noop", "tid", "wait"}, got)
}

// TestHostErrors: Go errors become HostError with the Go text, typed by
// the error's kind and mark; unknown names and panics are HostErrors too.
func TestHostErrors(t *testing.T) {
	f := startHost(t, true)
	cases := []struct {
		name, fn, how string
		want          map[string]any
	}{
		{"plain", "fail", "", map[string]any{"kind": "error", "host_error": true, "message": "backend exploded"}},
		{"key", "fail", "key", map[string]any{"kind": "error", "host_error": true, "key_error": true, "message": "no such user"}},
		{"deadline", "fail", "deadline", map[string]any{"kind": "deadline", "host_error": true, "timeout": true,
			"message": "backend: context deadline exceeded"}},
		{"unknown", "nope", "", map[string]any{"kind": "unknown", "host_error": true}},
		{"panic", "boom", "", map[string]any{"kind": "panic", "host_error": true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := mustHcall(t, f.w, "fail", map[string]any{"name": c.fn, "how": c.how}).(map[string]any)
			require.True(t, ok, "got %v, want a dict describing the error", got)
			for k, v := range c.want {
				if k == "message" && c.name == "key" {
					// KeyError's str() quotes its argument.
					require.Contains(t, got[k], v.(string), "%s: got %v, want %v in it", k, got[k], v)
					continue
				}
				require.Equal(t, v, got[k], "%s: got %v, want %v (all: %v)", k, got[k], v, got)
			}
		})
	}
	// Not caught by the handler, the HostError comes back to Go as the
	// call's Python error, with the Go error's text.
	_, err := hcall(t, f.w, "fail_raise", map[string]any{"how": "key"})
	var pe *worker.PythonError
	require.True(t, errors.As(err, &pe), "got %v, want a *worker.PythonError", err)
	require.Equal(t, "snakepit.HostError", pe.Type, "got %v", pe)
	require.Contains(t, pe.Message, "no such user", "got %v", pe)
	// The worker is fine after a panic.
	require.Equal(t, map[string]any{"id": int64(1), "name": "user-1", "tags": []any{"a", "b"}},
		mustHcall(t, f.w, "lookup", map[string]any{"user_id": 1}))
}

// TestHostDeadlineInterruptsWait: a handler waiting in a host function is
// interrupted at the call's deadline: the Go function's ctx is done (with
// the correlation id on it) by the time Call returns the deadline error,
// and the worker takes the next call.
func TestHostDeadlineInterruptsWait(t *testing.T) {
	f := startHost(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := hcallCtx(t, ctx, f.w, &worker.Request{Command: "wait", CorrelationID: "cid-wait"}, nil)
		errc <- err
	}()
	var hctx context.Context
	select {
	case hctx = <-f.waitEntered:
	case <-time.After(hangGuard):
		t.Fatal("the host function was not called")
	}
	require.Equal(t, "cid-wait", worker.CorrelationID(hctx))
	var err error
	select {
	case err = <-errc:
	case <-time.After(hangGuard):
		t.Fatal("Call did not return at its deadline")
	}
	require.ErrorIs(t, err, context.DeadlineExceeded)
	select {
	case <-hctx.Done():
	default:
		t.Fatal("Call returned while the host function's ctx was not done")
	}
	// The handler got the deadline (or the interrupt) and returned: the
	// worker takes the next call.
	got := mustHcall(t, f.w, "from_thread", map[string]any{"n": 1}).(map[string]any)
	require.Equal(t, "cid-from_thread", got["go_cid"], "got %v, want the next call's correlation id", got)
}

// TestHostCallEndsCtx: a host function's ctx is done once its call has
// returned, even for a call whose own ctx can never end.
func TestHostCallEndsCtx(t *testing.T) {
	f := startHost(t, true)
	resp, err := f.w.Call(context.Background(), &worker.Request{Command: "lookup", Args: mustMarshal(t, map[string]any{"user_id": 1})})
	require.NoError(t, err)
	require.NotEmpty(t, resp.Result)
	_, err = f.w.Call(context.Background(), &worker.Request{Command: "from_thread", CorrelationID: "c1", Args: mustMarshal(t, map[string]any{"n": 3})})
	require.NoError(t, err)
	var hctx context.Context
	select {
	case hctx = <-f.lastCtx:
	default:
		t.Fatal("echo was not called")
	}
	require.Equal(t, "c1", worker.CorrelationID(hctx))
	require.ErrorIs(t, hctx.Err(), context.Canceled, "got ctx error %v after the call returned, want context.Canceled", hctx.Err())
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := pymarshal.Marshal(v)
	require.NoError(t, err)
	return b
}

// TestHostFromThread: a Python thread the handler started (and joined)
// calls Go, with the call's correlation id on the Go side.
func TestHostFromThread(t *testing.T) {
	f := startHost(t, true)
	for i := range 20 {
		got := mustHcall(t, f.w, "from_thread", map[string]any{"n": i}).(map[string]any)
		want := map[string]any{"n": int64(i), "cid": "cid-from_thread", "go_cid": "cid-from_thread"}
		require.Equal(t, want, got, "got %v, want %v", got, want)
	}
}

// TestHostRunsOnCallingThread: the Go function runs on the OS thread of
// the Python thread that called it (no handoff to another thread), for the
// handler's thread and for a thread it started.
func TestHostRunsOnCallingThread(t *testing.T) {
	f := startHost(t, true)
	got := mustHcall(t, f.w, "tids", nil).([]any)
	require.Equal(t, 4, len(got), "got %v", got)
	require.Equal(t, got[0], got[1], "handler thread: got Go on thread %v, Python on %v", got[1], got[0])
	require.Equal(t, got[2], got[3], "started thread: got Go on thread %v, Python on %v", got[3], got[2])
	require.True(t, got[0] != got[2], "got one thread for both: %v", got)
}

// TestHostAsync: an async handler's ctx.host.acall (which waits in an
// executor thread) reaches Go, twice at once.
func TestHostAsync(t *testing.T) {
	f := startHost(t, true)
	for i := range 3 {
		got := mustHcall(t, f.w, "async_echo", map[string]any{"n": i})
		want := []any{
			map[string]any{"n": int64(i), "cid": "cid-async_echo", "go_cid": "cid-async_echo"},
			map[string]any{"n": int64(i + 1), "cid": "cid-async_echo", "go_cid": "cid-async_echo"},
		}
		require.Equal(t, want, got)
	}
}

// TestHostConcurrent: four Python threads of one handler are in Go at the
// same time (each host function waits until all four have arrived).
func TestHostConcurrent(t *testing.T) {
	f := startHost(t, true)
	got := mustHcall(t, f.w, "concurrent", map[string]any{"n": 4})
	require.Equal(t, []any{int64(0), int64(10), int64(20), int64(30)}, got)
}

// TestHostAfterCallEnded: a thread that kept ctx.host past its call gets
// HostError kind "ended" without hanging, and the Go side refuses a host
// call made with an ended call's token even when the Python-side check is
// bypassed (the next call is in flight).
func TestHostAfterCallEnded(t *testing.T) {
	f := startHost(t, true)
	require.Nil(t, mustHcall(t, f.w, "keep", map[string]any{}))
	got := mustHcall(t, f.w, "release_kept", nil).(map[string]any)
	require.Equal(t, "ended", got["kind"], "got %v, want kind ended", got)
	require.Equal(t, true, got["host_error"], "got %v, want a HostError", got)

	got2 := mustHcall(t, f.w, "kept_transport", map[string]any{"name": "echo"}).([]any)
	require.Equal(t, int64(1), got2[0], "got reply %v, want an error reply", got2)
	detail := got2[1].([]any)
	require.Equal(t, "error", detail[0], "got %v", detail)
	require.Contains(t, detail[1], "has ended", "got %v", detail)
	select {
	case ctx := <-f.lastCtx:
		t.Fatalf("echo ran for an ended call (ctx cid %q)", worker.CorrelationID(ctx))
	default:
	}
}

// TestHostTransportBadInput: the host_call builtin refuses arguments of the
// wrong type or number with TypeError; a token no call has gets a refusal,
// an unknown name an "unknown" reply.
func TestHostTransportBadInput(t *testing.T) {
	f := startHost(t, true)
	cases := []struct {
		name string
		args map[string]any
		want string // the exception type, or the reply's kind
	}{
		{"payload str", map[string]any{"payload": "not bytes"}, "TypeError"},
		{"payload int", map[string]any{"payload": 5}, "TypeError"},
		{"token str", map[string]any{"token": "abc"}, "TypeError"},
		{"token negative", map[string]any{"token": -1}, "TypeError"},
		{"name bytes", map[string]any{"name": []byte("echo")}, "TypeError"},
		{"two args", map[string]any{"nargs": 2}, "TypeError"},
		{"foreign token", map[string]any{"token": 1}, "error"},
		{"unknown name", map[string]any{"name": "nope"}, "unknown"},
		{"bad payload bytes", map[string]any{"payload": []byte("\xff\x00junk")}, "arguments"},
		{"own token", map[string]any{}, "ok"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := mustHcall(t, f.w, "transport", c.args)
			switch g := got.(type) {
			case map[string]any:
				require.Equal(t, c.want, g["type"], "got %v", g)
			case []any:
				if g[0] == int64(0) {
					require.Equal(t, c.want, "ok", "got ok reply %v", g)
					return
				}
				require.Equal(t, c.want, g[1].([]any)[0], "got %v", g)
			default:
				t.Fatalf("got %#v", got)
			}
		})
	}
}

// TestHostStream: ctx.host works when a stream opens and at each next, with
// the stream's correlation id; it ends with the stream.
func TestHostStream(t *testing.T) {
	f := startHost(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	s, err := f.w.Stream(ctx, &worker.Request{Command: "stream", CorrelationID: "cid-s", Args: mustMarshal(t, map[string]any{"n": 3})})
	require.NoError(t, err)
	var got []any
	for {
		b, err := s.Next(ctx)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		v, err := pymarshal.Decode(b)
		require.NoError(t, err)
		got = append(got, v.(map[string]any)["n"])
		require.Equal(t, "cid-s", v.(map[string]any)["go_cid"], "got %v", v)
	}
	require.NoError(t, s.Close())
	require.Equal(t, []any{int64(-1), int64(0), int64(1), int64(2)}, got)
	var last context.Context
	for len(f.lastCtx) > 0 {
		last = <-f.lastCtx
	}
	require.NotNil(t, last)
	require.Error(t, last.Err(), "the stream's host ctx is not done after the stream ended")
}

// TestHostNone: a worker with no host functions has none in Python, any
// call is an "unknown" HostError, and the transport itself refuses too.
func TestHostNone(t *testing.T) {
	f := startHost(t, false)
	require.Equal(t, []any{}, mustHcall(t, f.w, "names", nil))
	got := mustHcall(t, f.w, "fail", map[string]any{"name": "echo"}).(map[string]any)
	require.Equal(t, "unknown", got["kind"], "got %v", got)
	got2 := mustHcall(t, f.w, "transport", map[string]any{"token": 1}).([]any)
	require.Equal(t, int64(1), got2[0], "got %v", got2)
	require.Equal(t, "unknown", got2[1].([]any)[0], "got %v", got2)
	require.True(t, strings.Contains(got2[1].([]any)[1].(string), "no host functions"), "got %v", got2)
}
