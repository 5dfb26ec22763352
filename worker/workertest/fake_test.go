package workertest_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

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
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := pymarshal.Decode(resp.Result); v != int64(42) {
		t.Fatalf("double: got %v, want 42", v)
	}
	if _, err := f.Call(ctx, &worker.Request{Command: "nope"}); !errors.Is(err, worker.ErrCommandNotFound) {
		t.Fatalf("unknown command: got %v", err)
	}
	st, err := f.Stream(ctx, &worker.Request{Command: "items"})
	if err != nil {
		t.Fatal(err)
	}
	var got []any
	for {
		b, err := st.Next(ctx)
		if err == io.EOF {
			break
		}
		v, _ := pymarshal.Decode(b)
		got = append(got, v)
	}
	if len(got) != 2 {
		t.Fatalf("stream: got %v", got)
	}
	if s := f.Sessions(); len(s) != 1 || s[0] != "s" {
		t.Fatalf("sessions: got %v", s)
	}
	if err := f.EndSession(ctx, "s"); err != nil || len(f.Sessions()) != 0 {
		t.Fatalf("EndSession: %v, %v", err, f.Sessions())
	}

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
		if !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("running call: got %v, want ErrWorkerDead", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running call did not end when the worker was killed")
	}
	if _, err := f.Call(ctx, &worker.Request{Command: "double", Args: args}); !errors.Is(err, worker.ErrWorkerDead) {
		t.Fatalf("after Kill: got %v", err)
	}
	if f.Calls() != 4 {
		t.Fatalf("Calls: got %d, want 4", f.Calls())
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
