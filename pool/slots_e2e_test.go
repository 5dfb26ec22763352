package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

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
	if err := os.WriteFile(filepath.Join(dir, "slots_adapter.py"), []byte(slotsAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		t.Run(profile.String(), func(t *testing.T) {
			const size, slots = 2, 4
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "slots_adapter", Paths: []string{dir}, Size: size, WorkerConcurrency: slots})
			if err != nil {
				t.Fatal(err)
			}
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
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if s := p.Stats(); s.InFlight != 0 || s.SlotsPerWorker != slots {
				t.Fatalf("after the calls: %+v", s)
			}
		})
	}

	t.Run("process pipeline", func(t *testing.T) {
		p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "slots_adapter", Paths: []string{dir}, Size: 1, PipelineDepth: 2})
		if err != nil {
			t.Fatal(err)
		}
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
		deadline := time.Now().Add(30 * time.Second)
		for _, err := os.Stat(gate + ".started"); err != nil; _, err = os.Stat(gate + ".started") {
			if time.Now().After(deadline) {
				t.Fatal("the first call did not start")
			}
			time.Sleep(5 * time.Millisecond)
		}
		cctx, cancelQueued := context.WithCancel(ctx)
		queued := call(cctx, "held", map[string]any{"tag": "cancelled"})
		waitSlots(t, p, "the second call pipelined", 2)
		cancelQueued()
		if err := <-queued; !errors.Is(err, context.Canceled) {
			t.Fatalf("the pipelined call cancelled before it started: got %v, want Canceled", err)
		}
		later := call(ctx, "held", map[string]any{"tag": "later"})
		waitSlots(t, p, "the third call pipelined", 2)
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		for name, errc := range map[string]chan error{"first": first, "later": later} {
			if err := <-errc; err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		var runs []string
		if err := p.Call(ctx, "runs", nil, &runs); err != nil {
			t.Fatal(err)
		}
		if len(runs) != 2 || runs[0] != "first" || runs[1] != "later" {
			t.Fatalf("runs: got %v, want [first later] (the cancelled call never runs)", runs)
		}
	})
}

// waitSlots waits until n of p's slots and pipeline places are taken and no
// caller waits.
func waitSlots(t *testing.T, p *pool.Pool, what string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s := p.Stats(); s.InFlight != n || s.Waiting != 0; s = p.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s: %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
