package poolprom_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

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
	require.NoError(t, err)
	defer p.Close(context.Background())
	for range 3 {
		require.NoError(t, p.Call(context.Background(), "ok", nil, nil))
	}
	require.Error(t, p.Call(context.Background(), "missing", nil, nil))
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(poolprom.NewCollector(p)))
	want := `
# HELP snakepit_pool_calls_total Calls and streams that succeeded.
# TYPE snakepit_pool_calls_total counter
snakepit_pool_calls_total{pool="metrics",profile="thread"} 3
# HELP snakepit_pool_calls_failed_total Calls and streams that failed, for any reason.
# TYPE snakepit_pool_calls_failed_total counter
snakepit_pool_calls_failed_total{pool="metrics",profile="thread"} 1
# HELP snakepit_pool_effective_profile 1 for the profile the workers run (the one chosen for profile auto).
# TYPE snakepit_pool_effective_profile gauge
snakepit_pool_effective_profile{effective="thread",pool="metrics",profile="thread"} 1
# HELP snakepit_pool_workers Workers by state.
# TYPE snakepit_pool_workers gauge
snakepit_pool_workers{pool="metrics",profile="thread",state="busy"} 0
snakepit_pool_workers{pool="metrics",profile="thread",state="idle"} 2
snakepit_pool_workers{pool="metrics",profile="thread",state="starting"} 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "snakepit_pool_calls_total",
		"snakepit_pool_calls_failed_total", "snakepit_pool_workers", "snakepit_pool_effective_profile"))
	n, err := testutil.GatherAndCount(reg, "snakepit_pool_call_seconds")
	require.NoError(t, err)
	require.Equal(t, 1, n, "call_seconds histograms")
}
