package pool_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
)

var pipelineBursts = flag.Int("pipeline.bursts", 150, "bursts of TestPipelineBursts (make chaos: 3000)")

// TestPipelineBursts: 64 callers on 2 process workers with the deepest
// pipeline, in bursts of a few calls each: every call of a burst returns
// its own result (no call hangs, none is lost or answered twice), and as
// each burst ends the pool moves pipelined calls to the worker that
// frees up (withdraw, NOT_STARTED or STARTED, the call made again). A
// caller that read for a reply another caller had routed hung here once
// in a few thousand bursts.
func TestPipelineBursts(t *testing.T) {
	dir := t.TempDir()
	const adapter = "import snakepit\n\n\n@snakepit.command\ndef echo(i):\n    return i\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "burst_adapter.py"), []byte(adapter), 0o644))
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "burst_adapter", Paths: []string{dir},
		Size: 2, QueueSize: 1024, PipelineDepth: pool.MaxPipelineDepth})
	require.NoError(t, err)
	defer func() {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		assert.NoError(t, p.Close(cctx))
	}()
	for burst := range *pipelineBursts {
		var wg sync.WaitGroup
		for g := range 64 {
			wg.Go(func() {
				for i := range 5 + g%7 {
					want := int64(burst<<16 | g<<8 | i)
					args, err := pymarshal.Marshal(map[string]any{"i": want})
					if !assert.NoError(t, err) {
						return
					}
					raw, err := p.CallRaw(ctx, "echo", args)
					if !assert.NoError(t, err, "burst %d", burst) {
						return
					}
					var got int64
					if !assert.NoError(t, pymarshal.Unmarshal(raw, &got)) || !assert.Equal(t, want, got, "burst %d: another call's result", burst) {
						return
					}
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("burst %d: calls still waiting after 30s; stats %+v", burst, p.Stats())
		}
		if t.Failed() {
			return
		}
	}
	s := p.Stats()
	assert.Zero(t, s.InFlight, "calls in flight after the last burst")
	t.Logf("%d bursts, %d calls, %d moved", *pipelineBursts, s.Calls, s.Moved)
}
