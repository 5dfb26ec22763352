package pool_test

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/worker"
)

// instant is a worker that answers every call at once.
type instant struct {
	id   string
	done chan struct{}
	resp *worker.Response
}

func newInstant(_ context.Context, id string) (worker.Worker, error) {
	return &instant{id: id, done: make(chan struct{}), resp: &worker.Response{Result: []byte("N")}}, nil
}

func (w *instant) ID() string { return w.id }
func (w *instant) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	return w.resp, nil
}
func (w *instant) Stream(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	return nil, worker.ErrStreamMismatch
}
func (w *instant) Done() <-chan struct{} { return w.done }
func (w *instant) Err() error            { return nil }
func (w *instant) Close(ctx context.Context) error {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	return nil
}

// BenchmarkOverhead measures what the pool adds to a call: 8 concurrent
// callers, workers that answer at once. It also reports the direct cost of
// the same call on a worker (direct-ns/op) and the difference
// (overhead-ns/op).
func BenchmarkOverhead(b *testing.B) {
	const callers = 8
	for _, size := range []int{2, 8} {
		b.Run("workers="+strconv.Itoa(size), func(b *testing.B) {
			p, err := pool.New(context.Background(), pool.Config{NewWorker: newInstant, Size: size, QueueSize: 1024})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close(context.Background())
			ctx := context.Background()
			w, _ := newInstant(ctx, "direct")
			req := &worker.Request{Command: "noop"}
			start := time.Now()
			const direct = 100000
			for range direct {
				w.Call(ctx, req)
			}
			directNs := float64(time.Since(start).Nanoseconds()) / direct

			b.SetParallelism((callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := p.CallRaw(ctx, "noop", nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(directNs, "direct-ns/op")
			b.ReportMetric(perOp-directNs, "overhead-ns/op")
		})
	}
}
