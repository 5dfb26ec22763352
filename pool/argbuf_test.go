package pool_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// echoArgs is a worker whose calls return their arguments. A call whose
// command is "hold" keeps reading its arguments after its context ended
// (as an abandoned call does in the background) and reports what it read
// on held once release is closed. A "wait" call reports on entered and
// returns once gate is closed.
type echoArgs struct {
	instant
	release chan struct{} // closed when the held call may read its arguments
	held    chan []byte
	entered chan struct{} // a "wait" call has started
	gate    chan struct{} // closed to let "wait" calls return
}

func (w *echoArgs) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	if req.Command == "hold" {
		args := req.Args
		go func() {
			<-w.release // after the caller has gone and other calls ran
			w.held <- bytes.Clone(args)
		}()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if req.Command == "wait" {
		w.entered <- struct{}{}
		<-w.gate
	}
	return &worker.Response{Result: bytes.Clone(req.Args)}, nil
}

// TestCallArgumentBuffers: the buffers Call encodes arguments into are
// reused only once a worker is done with them: concurrent calls each get
// their own arguments back, and a call abandoned on its context still
// reads its own arguments after later calls have run.
func TestCallArgumentBuffers(t *testing.T) {
	ctx := context.Background()
	const size = 32
	held, release := make(chan []byte, 1), make(chan struct{})
	entered, gate := make(chan struct{}), make(chan struct{})
	p, err := pool.New(ctx, pool.Config{Size: size, NewWorker: func(_ context.Context, id string) (worker.Worker, error) {
		return &echoArgs{instant: instant{id: id, done: make(chan struct{})}, held: held, release: release, entered: entered, gate: gate}, nil
	}})
	require.NoError(t, err)
	defer p.Close(ctx)

	hctx, cancel := context.WithCancel(ctx)
	holdArgs := map[string]any{"who": "held", "pad": bytes.Repeat([]byte{'h'}, 100)}
	want, _ := pymarshal.Marshal(holdArgs)
	holdDone := make(chan error, 1)
	go func() { holdDone <- p.Call(hctx, "hold", holdArgs, nil) }()

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				args := map[string]any{"g": g, "i": i, "pad": bytes.Repeat([]byte{byte(i)}, i)}
				var got map[string]any
				if err := p.Call(ctx, "echo", args, &got); !assert.NoError(t, err) {
					return
				}
				if got["g"] != int64(g) || got["i"] != int64(i) || len(got["pad"].([]byte)) != i {
					t.Errorf("got %v, want the call's own arguments g=%d i=%d", got, g, i)
					return
				}
			}
		})
	}
	cancel()
	require.ErrorIs(t, <-holdDone, context.Canceled, "abandoned call")
	wg.Wait()
	// Calls that ran after the abandoned one took buffers from the pool
	// and wrote their arguments in them: none may have been its buffer.
	// All workers busy at once take every buffer the pool holds.
	for i := range size - 1 {
		wg.Go(func() {
			assert.NoError(t, p.Call(ctx, "wait", map[string]any{"x": fmt.Sprint(i), "pad": bytes.Repeat([]byte{'x'}, 100)}, nil))
		})
	}
	for range size - 1 {
		<-entered
	}
	close(gate)
	wg.Wait()
	close(release)
	require.Equal(t, string(want), string(<-held), "what the abandoned call read: want its own arguments")
}

// replyWorker answers every call with a record as CPython writes it.
type replyWorker struct{ instant }

func (w *replyWorker) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	return w.resp, nil
}

// TestCallAllocs: what Call adds to CallRaw — encoding a map argument,
// decoding a struct result — allocates at most 3 times.
func TestCallAllocs(t *testing.T) {
	ctx := context.Background()
	// {"id": 42, "name": "snake", "score": 1.5, "tags": ["a", "b"]}, by marshal.dumps(v, 4)
	reply, _ := hex.DecodeString("fbda026964e92a000000da046e616d65da05736e616b65da0573636f7265e7000000000000f83fda04746167735b02000000da0161da016230")
	p, err := pool.New(ctx, pool.Config{Size: 1, NewWorker: func(_ context.Context, id string) (worker.Worker, error) {
		return &replyWorker{instant{id: id, done: make(chan struct{}), resp: &worker.Response{Result: reply}}}, nil
	}})
	require.NoError(t, err)
	defer p.Close(ctx)
	args := map[string]any{"d": typedPayload()}
	raw, _ := pymarshal.Marshal(args)
	var res typedResult
	call := testing.AllocsPerRun(2000, func() {
		require.NoError(t, p.Call(ctx, "echo", args, &res))
	})
	callRaw := testing.AllocsPerRun(2000, func() {
		_, err := p.CallRaw(ctx, "echo", raw)
		require.NoError(t, err)
	})
	require.LessOrEqual(t, call-callRaw, 3.0, "Call allocates %v times, CallRaw %v: want at most 3 more", call, callRaw)
	require.Equal(t, typedResult{ID: 42, Name: "snake", Score: 1.5, Tags: []string{"a", "b"}}, res, "the record")
}
