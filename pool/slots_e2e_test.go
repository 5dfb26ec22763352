package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
)

const slotsAdapter = `
import asyncio
import os
import threading
import time

import snakepit

_lock = threading.Lock()
_state = {"in": 0, "max": 0, "runs": []}
_events = {}


def _event(key):
    with _lock:
        ev = _events.get(key)
        if ev is None:
            ev = _events[key] = asyncio.Event()
        return ev


@snakepit.command
async def rendezvous(n, tag, gate):
    """Waits until n calls of this worker are in at once, then until the
    file gate exists (at most 30 s each)."""
    with _lock:
        _state["in"] += 1
        _state["max"] = max(_state["max"], _state["in"])
        reached = _state["in"] >= n
    ev = _event(("rv", n))
    if reached:
        ev.set()
    try:
        await asyncio.wait_for(ev.wait(), 30)
        end = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < end:
            await asyncio.sleep(0.005)
    finally:
        with _lock:
            _state["in"] -= 1
    return {"tag": tag, "pid": os.getpid()}


@snakepit.command
def held(tag, gate=""):
    """A plain handler that runs until the file gate exists (at most 30 s)."""
    import time
    with _lock:
        _state["runs"].append(tag)
    if gate:
        open(gate + ".started", "w").close()
    end = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.01)
    return tag


@snakepit.command
def runs():
    with _lock:
        return list(_state["runs"])
`

// TestSlotsEndToEnd: through the pool, with real Python: calls fill every
// slot of every worker at once (each worker's handlers wait until all its
// slots are taken, and then until every caller holds a slot, so that no
// worker's calls end before the last caller has one), in both profiles; and in the process profile a call
// pipelined behind a running one and cancelled before it starts never
// runs, while the others complete.
func TestSlotsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "slots_adapter.py"), []byte(slotsAdapter), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		t.Run(profile.String(), func(t *testing.T) {
			const size, slots = 2, 4
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "slots_adapter", Paths: []string{dir}, Size: size, WorkerConcurrency: slots})
			require.NoError(t, err)
			defer p.Close(ctx)
			gate := filepath.Join(t.TempDir(), "all-in")
			var wg sync.WaitGroup
			errs := make(chan error, size*slots)
			for i := range size * slots {
				wg.Go(func() {
					var out struct{ Tag int }
					if err := p.Call(ctx, "rendezvous", map[string]any{"n": slots, "tag": i, "gate": gate}, &out); err != nil {
						errs <- err
					} else if out.Tag != i {
						errs <- errors.New("a call got another's answer")
					}
				})
			}
			waitSlots(t, p, "every slot taken", size*slots)
			require.NoError(t, os.WriteFile(gate, nil, 0o644))
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			s := p.Stats()
			require.Zero(t, s.InFlight, "in flight after the calls: %+v", s)
			require.Equal(t, slots, s.SlotsPerWorker, "after the calls: %+v", s)
		})
	}

	t.Run("process pipeline", func(t *testing.T) {
		p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "slots_adapter", Paths: []string{dir}, Size: 1, PipelineDepth: 2})
		require.NoError(t, err)
		defer p.Close(ctx)
		gate := filepath.Join(t.TempDir(), "gate")
		call := func(ctx context.Context, cmd string, args map[string]any) chan error {
			errc := make(chan error, 1)
			go func() {
				var out any
				errc <- p.Call(ctx, cmd, args, &out)
			}()
			return errc
		}
		first := call(ctx, "held", map[string]any{"tag": "first", "gate": gate})
		require.Eventually(t, func() bool {
			_, err := os.Stat(gate + ".started")
			return err == nil
		}, 30*time.Second, 5*time.Millisecond, "the first call did not start")
		cctx, cancelQueued := context.WithCancel(ctx)
		queued := call(cctx, "held", map[string]any{"tag": "cancelled"})
		waitSlots(t, p, "the second call pipelined", 2)
		cancelQueued()
		require.ErrorIs(t, <-queued, context.Canceled, "the pipelined call cancelled before it started")
		later := call(ctx, "held", map[string]any{"tag": "later"})
		waitSlots(t, p, "the third call pipelined", 2)
		require.NoError(t, os.WriteFile(gate, nil, 0o644))
		for name, errc := range map[string]chan error{"first": first, "later": later} {
			require.NoError(t, <-errc, name)
		}
		var runs []string
		require.NoError(t, p.Call(ctx, "runs", nil, &runs))
		require.Equal(t, []string{"first", "later"}, runs, "runs (the cancelled call never runs)")
	})
}

// waitSlots waits until n of p's slots and pipeline places are taken and no
// caller waits.
func waitSlots(t *testing.T, p *pool.Pool, what string, n int) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		s := p.Stats()
		assert.Equal(c, n, s.InFlight, "in flight: %+v", s)
		assert.Zero(c, s.Waiting, "waiting: %+v", s)
	}, 30*time.Second, 5*time.Millisecond, "timed out waiting until %s", what)
}
