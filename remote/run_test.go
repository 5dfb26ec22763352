package remote_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/remote"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

// fakePool is a pool of scripted workers (no Python).
func fakePool(t *testing.T, name string, handlers map[string]workertest.Handler) *pool.Pool {
	t.Helper()
	p, err := pool.New(context.Background(), pool.Config{Name: name, Size: 2, NewWorker: func(ctx context.Context, id string) (worker.Worker, error) {
		return &workertest.Fake{WorkerID: id, Handlers: handlers}, nil
	}})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// TestRun: Run serves until its context ends, then lets the call in
// progress finish and leaves.
func TestRun(t *testing.T) {
	url := natsServer(t, 0)
	started, release := make(chan struct{}), make(chan struct{})
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"ok": func(ctx context.Context, req *worker.Request) (any, error) { return "ok", nil },
		"slow": func(ctx context.Context, req *worker.Request) (any, error) {
			close(started)
			select {
			case <-release:
				return "done", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- remote.Run(ctx, connect(t, url), p, remote.ServeOptions{}, 30*time.Second) }()
	rp := newClient(t, connect(t, url), "fake", remote.Options{})
	guard := hangGuard(t)
	require.Eventually(t, func() bool {
		return !errors.Is(rp.Call(guard, "ok", nil, nil), remote.ErrNoResponders)
	}, 30*time.Second, 5*time.Millisecond)
	var out string
	require.NoError(t, rp.Call(guard, "ok", nil, &out))
	assert.Equal(t, "ok", out)

	slow := make(chan error, 1)
	go func() { slow <- rp.Call(guard, "slow", nil, &out) }()
	<-started
	stop()
	// The instance leaves the queue group first: new calls find no one.
	require.Eventually(t, func() bool {
		return errors.Is(rp.Call(guard, "ok", nil, nil), remote.ErrNoResponders)
	}, 30*time.Second, 5*time.Millisecond)
	select {
	case err := <-ran:
		t.Fatalf("Run returned %v with a call in progress", err)
	default:
	}
	close(release)
	require.NoError(t, <-slow)
	assert.Equal(t, "done", out)
	require.NoError(t, <-ran)
}

// TestClose: a closed Pool refuses calls with pool.ErrClosed, and a
// call in progress returns at once; Close is idempotent.
func TestClose(t *testing.T) {
	url := natsServer(t, 0)
	started := make(chan struct{})
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"block": func(ctx context.Context, req *worker.Request) (any, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		},
	})
	srv, err := remote.Serve(context.Background(), connect(t, url), p, remote.ServeOptions{})
	require.NoError(t, err)
	defer srv.Shutdown(context.Background())
	rp, err := remote.New(connect(t, url), "fake", remote.Options{})
	require.NoError(t, err)
	guard := hangGuard(t)
	blocked := make(chan error, 1)
	go func() { blocked <- rp.Call(guard, "block", nil, nil) }()
	<-started
	require.NoError(t, rp.Close(guard))
	require.ErrorIs(t, <-blocked, pool.ErrClosed)
	require.ErrorIs(t, rp.Call(guard, "block", nil, nil), pool.ErrClosed)
	require.NoError(t, rp.Close(guard))
	for _, err := range rp.Stream(guard, "block", nil) {
		require.ErrorIs(t, err, pool.ErrClosed)
	}
	// The instance's call ends with its deadline or a Shutdown: here
	// Shutdown's grace ends at once and cancels it.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, srv.Shutdown(ctx), context.Canceled)
	require.ErrorIs(t, srv.Shutdown(context.Background()), context.Canceled, "Shutdown again returns the first result")
}

// TestBadRequests: requests that do not follow the protocol get a typed
// error answer (or none, without a reply subject); the instance goes on.
func TestBadRequests(t *testing.T) {
	url := natsServer(t, 0)
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"ok": func(ctx context.Context, req *worker.Request) (any, error) { return "ok", nil },
	})
	srv, err := remote.Serve(context.Background(), connect(t, url), p, remote.ServeOptions{})
	require.NoError(t, err)
	defer srv.Shutdown(context.Background())
	nc := connect(t, url)
	for _, h := range []nats.Header{
		{"Sp-Cmd": {"ok"}, "Sp-Affinity": {"7"}},
		{"Sp-Cmd": {"ok"}, "Sp-Timeout": {"soon"}},
		{"Sp-Cmd": {"ok"}, "Sp-Att": {"5,x"}},
		{"Sp-Cmd": {"ok"}, "Sp-Att": {"500"}},
		{"Sp-Cmd": {"ok"}, "Sp-Hb": {"-1"}},
	} {
		for _, ep := range []string{"call", "stream"} {
			require.NoError(t, nc.Publish("snakepit.v1.fake."+ep, []byte("no reply subject")))
			m, err := nc.RequestMsg(&nats.Msg{Subject: "snakepit.v1.fake." + ep, Header: h}, 10*time.Second)
			require.NoError(t, err, "%v", h)
			assert.Equal(t, "err", m.Header.Get("Sp-Kind"), "%v", h)
			assert.Contains(t, string(m.Data), `"kind":"protocol"`, "%v", h)
		}
	}
	rp := newClient(t, nc, "fake", remote.Options{})
	var out string
	require.NoError(t, rp.Call(hangGuard(t), "ok", nil, &out))
	assert.Equal(t, "ok", out)
}

// TestSessionBindingsExpire: the Pool forgets the instance of a session
// unused for Options.SessionIdleTimeout.
func TestSessionBindingsExpire(t *testing.T) {
	url := natsServer(t, 0)
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"ok": func(ctx context.Context, req *worker.Request) (any, error) { return "ok", nil },
	})
	srv, err := remote.Serve(context.Background(), connect(t, url), p, remote.ServeOptions{})
	require.NoError(t, err)
	defer srv.Shutdown(context.Background())
	rp := newClient(t, connect(t, url), "fake", remote.Options{SessionIdleTimeout: 20 * time.Millisecond})
	ctx := hangGuard(t)
	old := rp.Session("old", pool.StrictQueue)
	require.NoError(t, old.Call(ctx, "ok", nil, nil))
	require.Equal(t, srv.Instance(), old.Instance())
	require.Eventually(t, func() bool {
		require.NoError(t, rp.Session("new", pool.StrictQueue).Call(ctx, "ok", nil, nil))
		return old.Instance() == ""
	}, 30*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, rp.Stats().Sessions)
}

// TestTraceCrossesWire: a call made under a span reaches the handler
// with that span's traceparent.
func TestTraceCrossesWire(t *testing.T) {
	url := natsServer(t, 0)
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"tp": func(ctx context.Context, req *worker.Request) (any, error) { return req.TraceParent, nil },
	})
	srv, err := remote.Serve(context.Background(), connect(t, url), p, remote.ServeOptions{})
	require.NoError(t, err)
	defer srv.Shutdown(context.Background())
	rp := newClient(t, connect(t, url), "fake", remote.Options{})
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	ctx, span := tp.Tracer("test").Start(hangGuard(t), "caller")
	defer span.End()
	var got string
	require.NoError(t, rp.Call(ctx, "tp", nil, &got))
	sc := span.SpanContext()
	assert.Equal(t, "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01", got)
}

// TestEndedContextNotSent: a call or stream whose context ended before it
// began fails with the context's error and never reaches a handler (the
// answer of a fast handler used to race the context's end, and win).
func TestEndedContextNotSent(t *testing.T) {
	url := natsServer(t, 0)
	var runs atomic.Int64
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"ok": func(ctx context.Context, req *worker.Request) (any, error) { runs.Add(1); return "ok", nil },
	})
	snc := connect(t, url)
	srv, err := remote.Serve(hangGuard(t), snc, p, remote.ServeOptions{})
	require.NoError(t, err)
	defer srv.Shutdown(context.Background())
	rp, err := remote.New(connect(t, url), "fake", remote.Options{})
	require.NoError(t, err)
	defer rp.Close(context.Background())
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 200 {
		require.ErrorIs(t, rp.Call(ended, "ok", nil, nil), context.Canceled, "call %d", i)
	}
	for _, err := range rp.Stream(ended, "ok", nil) {
		require.ErrorIs(t, err, context.Canceled, "stream")
	}
	require.Zero(t, runs.Load(), "handler runs for calls whose context had ended")
}

// TestNoGoroutinesLeft: after Shutdown, Close and the connections'
// close, nothing the package started runs on.
func TestNoGoroutinesLeft(t *testing.T) {
	url := natsServer(t, 0)
	p := fakePool(t, "fake", map[string]workertest.Handler{
		"ok":    func(ctx context.Context, req *worker.Request) (any, error) { return "ok", nil },
		"items": func(ctx context.Context, req *worker.Request) (any, error) { return []any{1, 2, 3, 4, 5}, nil },
	})
	before := runtime.NumGoroutine()
	ctx := hangGuard(t)
	snc, err := nats.Connect(url, nats.UserInfo(testUser, testPassword))
	require.NoError(t, err)
	cnc, err := nats.Connect(url, nats.UserInfo(testUser, testPassword))
	require.NoError(t, err)
	srv, err := remote.Serve(ctx, snc, p, remote.ServeOptions{})
	require.NoError(t, err)
	rp, err := remote.New(cnc, "fake", remote.Options{StreamWindow: 2})
	require.NoError(t, err)
	require.NoError(t, rp.Call(ctx, "ok", nil, nil))
	require.NoError(t, rp.Session("s", pool.StrictQueue).Call(ctx, "ok", nil, nil))
	require.NoError(t, rp.Session("s", pool.StrictQueue).Close(ctx))
	n := 0
	for _, err := range rp.Stream(ctx, "items", nil) {
		require.NoError(t, err)
		if n++; n == 3 {
			break
		}
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, rp.Call(short, "ok", nil, nil), context.Canceled)
	require.NoError(t, rp.Close(ctx))
	require.NoError(t, srv.Shutdown(ctx))
	snc.Close()
	cnc.Close()
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: got %d, want at most %d:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling a count: no event to wait on
	}
}
