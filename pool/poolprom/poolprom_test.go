package poolprom_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pool/poolprom"
	"github.com/snakepit-go/snakepit/worker"
	"github.com/snakepit-go/snakepit/worker/workertest"
)

func TestCollector(t *testing.T) {
	p, err := pool.New(context.Background(), pool.Config{Name: "metrics", Size: 2, NewWorker: func(ctx context.Context, id string) (worker.Worker, error) {
		return &workertest.Fake{WorkerID: id, Handlers: map[string]workertest.Handler{
			"ok": func(context.Context, *worker.Request) (any, error) { return 1, nil },
		}}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	for range 3 {
		if err := p.Call(context.Background(), "ok", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	p.Call(context.Background(), "missing", nil, nil)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(poolprom.NewCollector(p)); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP snakepit_pool_calls_total Calls and streams that succeeded.
# TYPE snakepit_pool_calls_total counter
snakepit_pool_calls_total{pool="metrics",profile="thread"} 3
# HELP snakepit_pool_calls_failed_total Calls and streams that failed, for any reason.
# TYPE snakepit_pool_calls_failed_total counter
snakepit_pool_calls_failed_total{pool="metrics",profile="thread"} 1
# HELP snakepit_pool_workers Workers by state.
# TYPE snakepit_pool_workers gauge
snakepit_pool_workers{pool="metrics",profile="thread",state="busy"} 0
snakepit_pool_workers{pool="metrics",profile="thread",state="idle"} 2
snakepit_pool_workers{pool="metrics",profile="thread",state="starting"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "snakepit_pool_calls_total", "snakepit_pool_calls_failed_total", "snakepit_pool_workers"); err != nil {
		t.Fatal(err)
	}
	n, err := testutil.GatherAndCount(reg, "snakepit_pool_call_seconds")
	if err != nil || n != 1 {
		t.Fatalf("call_seconds histogram: %d, %v", n, err)
	}
}
