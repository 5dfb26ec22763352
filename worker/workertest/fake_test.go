package workertest_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

func TestFake(t *testing.T) {
	started := make(chan struct{})
	f := &workertest.Fake{WorkerID: "fake-1", Handlers: map[string]workertest.Handler{
		"double": func(ctx context.Context, req *worker.Request) (any, error) {
			var args struct{ X int }
			if err := pymarshal.Unmarshal(req.Args, &args); err != nil {
				return nil, err
			}
			return args.X * 2, nil
		},
		"block": func(ctx context.Context, req *worker.Request) (any, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		},
		"items": func(ctx context.Context, req *worker.Request) (any, error) {
			return []any{1, 2}, nil
		},
	}}
	ctx := context.Background()
	args, _ := pymarshal.Marshal(map[string]any{"x": 21})
	resp, err := f.Call(ctx, &worker.Request{Command: "double", Args: args, SessionID: "s"})
	require.NoError(t, err)
	v, _ := pymarshal.Decode(resp.Result)
	require.Equal(t, int64(42), v, "double")
	_, err = f.Call(ctx, &worker.Request{Command: "nope"})
	require.ErrorIs(t, err, worker.ErrCommandNotFound, "unknown command")
	st, err := f.Stream(ctx, &worker.Request{Command: "items"})
	require.NoError(t, err)
	var got []any
	for {
		b, err := st.Next(ctx)
		if err == io.EOF {
			break
		}
		v, _ := pymarshal.Decode(b)
		got = append(got, v)
	}
	require.Len(t, got, 2, "stream")
	require.Equal(t, []string{"s"}, f.Sessions(), "sessions")
	require.NoError(t, f.EndSession(ctx, "s"), "EndSession")
	require.Empty(t, f.Sessions(), "sessions after EndSession")

	// Kill fails the running call and every later one with ErrWorkerDead.
	errc := make(chan error, 1)
	go func() {
		_, err := f.Call(ctx, &worker.Request{Command: "block"})
		errc <- err
	}()
	<-started
	f.Kill("test kill")
	select {
	case err := <-errc:
		require.ErrorIs(t, err, worker.ErrWorkerDead, "running call")
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the running call did not end when the worker was killed")
	}
	_, err = f.Call(ctx, &worker.Request{Command: "double", Args: args})
	require.ErrorIs(t, err, worker.ErrWorkerDead, "after Kill")
	require.Equal(t, int64(4), f.Calls(), "Calls")
	require.NoError(t, f.Close(ctx))
}
