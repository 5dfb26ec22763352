package gil_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

const loopsAdapter = `
import asyncio
import snakepit


@snakepit.command
async def tick(n):
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await asyncio.sleep(0.005)
        if asyncio.get_running_loop() is not loop:
            return "another loop"
    return "ok"
`

// TestAsyncInTwoWorkers: async handlers of two workers run at once, each
// on its own event loop, with one slot and with two (on 3.11, CPython's
// _asyncio mixes up the running loops of sub-interpreters unless asyncio
// runs its pure-Python bookkeeping there: "Cannot run the event loop while
// another loop is running", "Event loop is closed").
func TestAsyncInTwoWorkers(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "loops_adapter.py"), []byte(loopsAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, slots := range []int{1, 2} {
		var ws []*gil.Worker
		for range 2 {
			w, err := gil.Start(ctx, gil.Config{Module: "loops_adapter", Paths: []string{dir}, Runtime: runtimeFor(t), Concurrency: slots})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close(ctx)
			ws = append(ws, w)
		}
		args := mustMarshal(t, map[string]any{"n": 10})
		for round := range 5 {
			var wg sync.WaitGroup
			for i, w := range ws {
				for range slots {
					wg.Go(func() {
						resp, err := w.Call(ctx, &worker.Request{Command: "tick", Args: args})
						if err != nil {
							t.Errorf("slots %d, round %d, worker %d: %v", slots, round, i, err)
							return
						}
						if got, err := pymarshal.Decode(resp.Result); err != nil || got != "ok" {
							t.Errorf("slots %d, round %d, worker %d: got %v, %v", slots, round, i, got, err)
						}
					})
				}
			}
			wg.Wait()
		}
	}
}
