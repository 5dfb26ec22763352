// Command concurrent shows workers that serve many calls at once: one
// worker answers 100 concurrent calls of an async handler that waits 50 ms
// on a slow service, first with one slot (one call at a time), then with
// 100 (pool.Config.WorkerConcurrency), in both profiles; the process pool
// forks its workers from a fork server the program started once.
//
//	go run ./examples/concurrent
package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
	"github.com/snakepit-go/snakepit/subproc"
)

func main() {
	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	ctx := context.Background()

	// A fork server started once: process pools fork their workers from it
	// in milliseconds (the adapter's imports are fork-safe: asyncio only).
	fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{
		Module: "concurrent_adapter", ImportAdapter: true, Paths: []string{dir},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer fs.Close(ctx)

	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		for _, slots := range []int{1, 100} {
			cfg := pool.Config{
				Profile: profile, Module: "concurrent_adapter", Paths: []string{dir},
				Size: 1, WorkerConcurrency: slots, QueueSize: 128,
			}
			if profile == pool.Process {
				cfg.ForkServer = &pool.ForkServerOptions{Server: fs}
			}
			start := time.Now()
			p, err := pool.New(ctx, cfg)
			if err != nil {
				log.Fatal(err)
			}
			ready := time.Since(start)
			elapsed, err := burst(ctx, p, 100)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%-7s profile, %3d slot(s): ready in %v, 100 calls of 50 ms answered in %v\n",
				profile, slots, ready.Round(time.Millisecond), elapsed.Round(time.Millisecond))
			p.Close(ctx)
		}
	}
}

// burst makes n calls at once and returns how long all took.
func burst(ctx context.Context, p *pool.Pool, n int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var out struct {
				Key           int    `json:"key"`
				CorrelationID string `json:"correlation_id"`
			}
			cctx := pool.WithCorrelationID(ctx, fmt.Sprintf("req-%d", i))
			if err := p.Call(cctx, "lookup", map[string]any{"key": i}, &out); err != nil {
				errs <- err
				return
			}
			if out.Key != i || out.CorrelationID != fmt.Sprintf("req-%d", i) {
				errs <- fmt.Errorf("call %d got the answer of another: %+v", i, out)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return time.Since(start), nil
}
