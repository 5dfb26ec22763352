package subproc_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

// regionAdapter makes host calls with large arguments and results, and
// sends frames a well-behaved child never sends.
const regionAdapter = `
import sys, threading, time
import snakepit
from snakepit import HostError

def _pattern(i, n):
    unit = bytes((i * 7 + j) % 256 for j in range(256))
    return (unit * (n // 256 + 1))[:n]


def _each(n, one):
    """one(i) for i in range(n), each in a thread of its own, all at once."""
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


@snakepit.command
def echo_all(ctx, sizes):
    """One echo host call per size, each from a thread of its own, all at
    once: whether each came back intact."""
    out = [None] * len(sizes)
    start = threading.Barrier(len(sizes))
    def one(i):
        data = _pattern(i, sizes[i])
        start.wait(30)
        try:
            r = ctx.host.echo(blob=data, i=i)
            out[i] = type(r["blob"]) is bytes and r["blob"] == data and r["i"] == i
        except Exception as e:
            out[i] = repr(e)
    _each(len(sizes), one)
    return out


@snakepit.command
async def echo_async(ctx, sizes):
    import asyncio
    rs = await asyncio.gather(*(ctx.host.acall("echo", blob=_pattern(i, n)) for i, n in enumerate(sizes)))
    return [r["blob"] == _pattern(i, n) for i, (r, n) in enumerate(zip(rs, sizes))]


def _late_grant(ctx, n):
    """Start a thread whose host call big(n) needs room, its grant held
    until go is set: (go, the outcome once the thread ends, the thread)."""
    m = sys.modules["__main__"]
    orig = m._send_grant
    entered, go = threading.Event(), threading.Event()
    out = {}
    def late(*a):
        entered.set()
        go.wait(30)
        return orig(*a)
    m._send_grant = late
    def run():
        try:
            out["len"] = len(ctx.host.big(n=n))
        except HostError as e:
            out["kind"], out["message"] = e.kind, str(e)
        finally:
            m._send_grant = orig
    t = threading.Thread(target=run)
    t.start()
    entered.wait(30)
    return go, out, t


_late = {}


@snakepit.command
def grant_late(ctx, n):
    """A thread's host call whose result needs room, granted only once this
    call has ended (see grant_outcome)."""
    _late["go"], _late["out"], _late["t"] = _late_grant(ctx, n)
    return "started"


@snakepit.command
def grant_outcome(ctx):
    _late["go"].set()
    _late["t"].join(30)
    return _late["out"]


@snakepit.command
def bad_grant(ctx, n, ref):
    """Grant room for a large result at ref instead of where it was made."""
    m = sys.modules["__main__"]
    orig = m._send_grant
    def bad(conn, send_lock, live, token, hid, size):
        with send_lock:
            conn.send(m.HOST_GRANT, hid, ref, shared=False)
    m._send_grant = bad
    try:
        return len(ctx.host.big(n=n))
    finally:
        m._send_grant = orig


@snakepit.command
def slow_all(ctx, sizes, delays):
    """One slow_big host call per size, from a thread each: True for a
    result that came back intact, else the HostError's kind. The threads
    are joined only while the call runs: one interrupted leaves them to
    finish later."""
    out = [None] * len(sizes)
    def one(i):
        try:
            r = ctx.host.slow_big(n=sizes[i], delay_us=delays[i], i=i)
            out[i] = r == _pattern(i, sizes[i])
        except HostError as e:
            out[i] = e.kind
    _each(len(sizes), one)
    return out


def _hshm(ctx):
    return ctx._dispatcher.host_transport.__self__.conn.hshm


@snakepit.command
def region_state(ctx):
    """The host-call region's spans in use (outside this call's own)."""
    h = _hshm(ctx)
    return {"grants": len(h.grants), "args": len(h.args)}


_after = {}


@snakepit.command
def grant_after_deadline(ctx, n, wait):
    """A thread's host call is asked for room (HOST_SPACE); its grant goes
    out only after the Go call's deadline has passed (this call still runs
    in the child, so the grant is sent)."""
    go, out, t = _late_grant(ctx, n)
    try:
        time.sleep(wait)
    except snakepit.Cancelled:
        pass
    go.set()
    t.join(30)
    _after.clear()
    _after.update(out)
    return out


@snakepit.command
def after(ctx):
    return dict(_after)


@snakepit.command
def flood(ctx, n, k, seconds):
    """Host calls with k arguments of n bytes each, back to back for that
    long (or until the call is cancelled): how many."""
    import time
    data = {"b%d" % i: bytes(n) for i in range(k)}
    end = time.monotonic() + seconds
    calls = 0
    while time.monotonic() < end:
        ctx.host.sink(**data)
        calls += 1
    return calls


@snakepit.command
def flood_big(ctx, n, seconds):
    """Host calls with a result of n bytes, back to back for that long (or
    until the call is cancelled)."""
    import time
    end = time.monotonic() + seconds
    calls = 0
    while time.monotonic() < end:
        ctx.host.big(n=n)
        calls += 1
    return calls


@snakepit.command
def ping(ctx):
    return "pong"


@snakepit.command
def view_kind(ctx, n):
    """What Go gets for a memoryview of doubles of n bytes."""
    return ctx.host.kind(v=memoryview(bytes(n)).cast("d"))


@snakepit.command
def raw_send(ctx, typ, payload):
    """Send a frame of type typ under a fresh host call id, then wait (for
    the host to kill this process)."""
    import time
    link = ctx._dispatcher.host_transport.__self__
    with link.send_lock:
        link.conn.send(typ, (1 << 63) | (1 << 40), payload, shared=False)
    time.sleep(60)
    return "not killed"


@snakepit.command
def reused_id(ctx, n):
    """Two host calls of big(n) under one id, then wait (for the host to
    kill this process)."""
    import marshal
    m = sys.modules["__main__"]
    link = ctx._dispatcher.host_transport.__self__
    parts = m._host_call_frame(ctx._token, "big", marshal.dumps({"n": n}, 2), 1 << 30)
    for _ in range(2):
        with link.send_lock:
            link.conn.send(m.HOST_CALL, (1 << 63) | (1 << 41), parts, shared=False)
    time.sleep(60)
    return "not killed"


@snakepit.command
def raw_frame(ctx, typ, payload):
    """Send a frame of type typ under a fresh host call id and wait for its
    answer: the error message of the reply."""
    link = ctx._dispatcher.host_transport.__self__
    hid = (1 << 63) | (1 << 40)
    with link.cond:
        link.replies[hid] = None
    with link.send_lock:
        link.conn.send(typ, hid, payload, shared=False)
    reply = link._await(hid, threading.get_ident() == link.main)
    try:
        ctx._dispatcher.host_raise(reply)
    except HostError as e:
        return str(e)
    return "no error"
`

type regionFixture struct {
	w    *subproc.Worker
	big  chan int      // sizes "big" was asked for (while there is room)
	kill chan struct{} // closed: slow_big kills the worker instead
}

// pattern is regionAdapter's _pattern: n bytes, distinct for each i.
func pattern(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*7 + j%256)
	}
	return b
}

// startRegionWorker starts regionAdapter with an echo and a "big"
// function returning that many bytes; mutate adjusts the Config.
func startRegionWorker(t *testing.T, mutate func(*subproc.Config)) *regionFixture {
	t.Helper()
	fx := &regionFixture{big: make(chan int, 16), kill: make(chan struct{})}
	set, err := host.NewSet(
		host.New("echo", func(ctx context.Context, a map[string]any) (map[string]any, error) { return a, nil }),
		host.New("big", func(ctx context.Context, a struct{ N int }) ([]byte, error) {
			select {
			case fx.big <- a.N:
			default: // nobody waits for this one
			}
			return make([]byte, a.N), nil
		}),
		host.New("sink", func(ctx context.Context, a map[string]any) (int, error) { return len(a), nil }),
		host.New("kind", func(ctx context.Context, a struct{ V any }) (string, error) { return fmt.Sprintf("%T", a.V), nil }),
		host.New("slow_big", func(ctx context.Context, a struct {
			N, I    int
			DelayUS int `json:"delay_us"`
		}) ([]byte, error) {
			select {
			case <-fx.kill:
				unix.Kill(fx.w.PID(), unix.SIGKILL)
				<-ctx.Done()
				return nil, ctx.Err()
			default:
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(a.DelayUS) * time.Microsecond):
				return pattern(a.I, a.N), nil
			}
		}),
	)
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "region_adapter.py"), []byte(regionAdapter), 0o644))
	cfg := subproc.Config{
		Module: "region_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t), Host: set,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	fx.w, err = subproc.Start(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { fx.w.Close(context.Background()) })
	return fx
}

func (fx *regionFixture) call(t *testing.T, command string, args map[string]any, out any) error {
	t.Helper()
	raw, err := pymarshal.Marshal(args)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := fx.w.Call(ctx, &worker.Request{Command: command, Args: raw, CorrelationID: "cid-" + command})
	if err != nil {
		return err
	}
	if out != nil {
		require.NoError(t, pymarshal.Unmarshal(resp.Result, out))
	}
	return nil
}

// hostRegionSize is the size of the worker's host-call region (the memfd
// /proc names snakepit-host-shm), or -1 when it has none.
func hostRegionSize(t *testing.T, pid int) int64 {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(target, "/memfd:snakepit-host-shm") {
			st, err := os.Stat(filepath.Join(dir, e.Name()))
			require.NoError(t, err)
			return st.Size()
		}
	}
	return -1
}

var regionModes = []struct {
	name   string
	mutate func(*subproc.Config)
}{
	{"one-call", nil},
	{"concurrent", func(c *subproc.Config) { c.Concurrency = 4 }},
	{"pipelined", func(c *subproc.Config) { c.PipelineDepth = 2 }},
}

// TestHostRegion: in every mode, host calls with arguments and results
// above the threshold, several at once from threads (and async tasks),
// go through the host-call region (it grew) and come back intact, each
// its own: no span of one overlaps another's.
func TestHostRegion(t *testing.T) {
	for _, mode := range regionModes {
		t.Run(mode.name, func(t *testing.T) {
			fx := startRegionWorker(t, mode.mutate)
			require.Equal(t, int64(0), hostRegionSize(t, fx.w.PID()), "the host-call region before any host call")
			sizes := []int{300 << 10, 2 << 20, 1 << 10, 700 << 10, 5 << 20, 256 << 10}
			var got []any
			require.NoError(t, fx.call(t, "echo_all", map[string]any{"sizes": sizes}, &got))
			for i, ok := range got {
				assert.Equal(t, true, ok, "echo of %d bytes from thread %d", sizes[i], i)
			}
			assert.Greater(t, hostRegionSize(t, fx.w.PID()), int64(5<<20), "the host-call region after the calls")
			var async []bool
			require.NoError(t, fx.call(t, "echo_async", map[string]any{"sizes": []int{1 << 20, 3 << 20, 10}}, &async))
			assert.Equal(t, []bool{true, true, true}, async)
		})
	}
}

// TestHostRegionFull: a host-call region capped below what the calls in
// flight need sends the rest through the socket; every call is intact.
func TestHostRegionFull(t *testing.T) {
	fx := startRegionWorker(t, func(c *subproc.Config) { c.MaxSharedMemory = 1 << 20 })
	sizes := []int{600 << 10, 600 << 10, 600 << 10, 900 << 10}
	var got []any
	require.NoError(t, fx.call(t, "echo_all", map[string]any{"sizes": sizes}, &got))
	assert.Equal(t, []any{true, true, true, true}, got)
	assert.LessOrEqual(t, hostRegionSize(t, fx.w.PID()), int64(1<<20), "the host-call region past its cap")
}

// TestHostRegionOff: with SharedThreshold negative there is no host-call
// region; large host calls go through the socket.
func TestHostRegionOff(t *testing.T) {
	fx := startRegionWorker(t, func(c *subproc.Config) { c.SharedThreshold = -1 })
	require.Equal(t, int64(-1), hostRegionSize(t, fx.w.PID()))
	var got []any
	require.NoError(t, fx.call(t, "echo_all", map[string]any{"sizes": []int{3 << 20, 1 << 20}}, &got))
	assert.Equal(t, []any{true, true}, got)
}

// TestHostRegionGrantAfterEnd: a result that waits for room when its call
// has ended is not delivered: the thread that made the host call gets
// HostError "ended" (its grant never goes out), the held result is dropped,
// and the worker goes on.
func TestHostRegionGrantAfterEnd(t *testing.T) {
	fx := startRegionWorker(t, nil)
	var started string
	require.NoError(t, fx.call(t, "grant_late", map[string]any{"n": 1 << 20}, &started))
	require.Equal(t, "started", started)
	require.Equal(t, 1<<20, <-fx.big)
	var out map[string]any
	require.NoError(t, fx.call(t, "grant_outcome", nil, &out))
	assert.Equal(t, "ended", out["kind"], "outcome %v", out)
	assert.Contains(t, out["message"], "call ended")
	var got []any
	require.NoError(t, fx.call(t, "echo_all", map[string]any{"sizes": []int{1 << 20}}, &got))
	assert.Equal(t, []any{true}, got)
}

// TestHostRegionStrayGrant: a HOST_GRANT for no held result (a race with
// the call's end, seen from the host) is answered with an error reply,
// never left unanswered.
func TestHostRegionStrayGrant(t *testing.T) {
	fx := startRegionWorker(t, nil)
	var msg string
	require.NoError(t, fx.call(t, "raw_frame", map[string]any{"typ": 18, "payload": []byte{}}, &msg))
	assert.Contains(t, msg, "no result waits for room")
}

// TestHostRegionBadFrames: references outside the host-call region, and
// malformed grants, are protocol violations in every mode: the worker is
// killed and the call fails with ErrWorkerDead and ErrBadRegion (or
// ErrBadFrame).
func TestHostRegionBadFrames(t *testing.T) {
	ref := func(gen, off, n uint64) []byte {
		b := make([]byte, 0, 24)
		for _, v := range []uint64{gen, off, n} {
			b = append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		command string
		args    map[string]any
		want    error
	}{
		{"call-outside", "raw_send", map[string]any{"typ": 12 | 0x80, "payload": ref(0, 1<<40, 16)}, subproc.ErrBadRegion},
		{"call-short-ref", "raw_send", map[string]any{"typ": 12 | 0x80, "payload": []byte("short")}, subproc.ErrBadFrame},
		{"grant-short-ref", "raw_send", map[string]any{"typ": 18, "payload": []byte("short")}, subproc.ErrBadRegion},
		{"grant-shared", "raw_send", map[string]any{"typ": 18 | 0x80, "payload": ref(0, 0, 16)}, subproc.ErrBadFrame},
		{"grant-outside", "bad_grant", map[string]any{"n": 1 << 20, "ref": ref(0, 1<<40, 1<<20)}, subproc.ErrBadRegion},
		{"grant-wrong-size", "bad_grant", map[string]any{"n": 1 << 20, "ref": ref(0, 0, 10)}, subproc.ErrBadRegion},
		{"reused-id", "reused_id", map[string]any{"n": 1 << 20}, subproc.ErrBadFrame},
	} {
		for _, mode := range regionModes {
			t.Run(tc.name+"/"+mode.name, func(t *testing.T) {
				fx := startRegionWorker(t, mode.mutate)
				err := fx.call(t, tc.command, tc.args, nil)
				require.Error(t, err)
				assert.ErrorIs(t, err, worker.ErrWorkerDead)
				assert.ErrorIs(t, err, tc.want)
				var perr *subproc.ProtocolError
				assert.True(t, errors.As(err, &perr), "got %T %v, want a ProtocolError", err, err)
				select {
				case <-fx.w.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("the worker is still up after a protocol violation")
				}
			})
		}
	}
}

var regionSeed = flag.Uint64("region.seed", 0, "seed of TestHostRegionRandom (0: from the clock)")

// TestHostRegionRandom: host calls with payloads on both sides of the
// threshold, from several threads, in a random mode and under a random cap,
// meet deadlines (the call interrupted while its threads wait in Go or for
// room, and the threads' results come when the call has ended), calls made
// at once (the concurrent mode), and a worker killed in the middle. After
// every step the next host calls come back intact, each its own, and the
// region stays under its cap. 30 steps; SNAKEPIT_CHAOS=1: 300.
func TestHostRegionRandom(t *testing.T) {
	seed := *regionSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	steps := 30
	if os.Getenv("SNAKEPIT_CHAOS") != "" {
		steps = 300
	}
	t.Logf("seed %d (replay: -region.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	sizes := []int{10, 4 << 10, 200 << 10, 256 << 10, 300 << 10, 1 << 20, 3 << 20}
	pick := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = sizes[rng.IntN(len(sizes))]
		}
		return out
	}
	var fx *regionFixture
	var limit int64
	start := func() {
		mode := regionModes[rng.IntN(len(regionModes))]
		capped := rng.IntN(3) == 0
		limit = 128 << 20
		if capped {
			limit = 2 << 20
		}
		t.Logf("worker: %s, cap %d", mode.name, limit)
		fx = startRegionWorker(t, func(c *subproc.Config) {
			if mode.mutate != nil {
				mode.mutate(c)
			}
			if capped {
				c.MaxSharedMemory = 2 << 20
				c.MaxFrame = 8 << 20
			}
			c.InterruptGrace = 5 * time.Second
		})
	}
	check := func(step int, what string) {
		t.Helper()
		n := 1 + rng.IntN(4)
		want := make([]any, n)
		for i := range want {
			want[i] = true
		}
		var got []any
		require.NoError(t, fx.call(t, "echo_all", map[string]any{"sizes": pick(n)}, &got), "seed %d step %d (%s): probe", seed, step, what)
		require.Equal(t, want, got, "seed %d step %d (%s): probe", seed, step, what)
		require.LessOrEqual(t, hostRegionSize(t, fx.w.PID()), limit, "seed %d step %d (%s): region past its cap", seed, step, what)
	}
	start()
	for step := range steps {
		kind := []string{"echo", "echo", "slow", "deadline", "deadline", "late-grant", "parallel", "kill"}[rng.IntN(8)]
		switch kind {
		case "echo":
		case "slow":
			n := 1 + rng.IntN(4)
			delays := make([]int, n)
			for i := range delays {
				delays[i] = rng.IntN(3000)
			}
			var got []any
			require.NoError(t, fx.call(t, "slow_all", map[string]any{"sizes": pick(n), "delays": delays}, &got), "seed %d step %d", seed, step)
			for i, v := range got {
				require.Equal(t, true, v, "seed %d step %d: slow host call %d", seed, step, i)
			}
		case "deadline":
			// The call ends at its deadline while its threads wait in Go
			// (some for longer than the call lasts).
			n := 1 + rng.IntN(4)
			delays := make([]int, n)
			for i := range delays {
				delays[i] = rng.IntN(40000)
			}
			raw, err := pymarshal.Marshal(map[string]any{"sizes": pick(n), "delays": delays})
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+rng.IntN(20))*time.Millisecond)
			_, err = fx.w.Call(ctx, &worker.Request{Command: "slow_all", Args: raw, CorrelationID: "deadline"})
			cancel()
			if err != nil {
				require.ErrorIs(t, err, context.DeadlineExceeded, "seed %d step %d", seed, step)
			}
		case "late-grant":
			var started string
			require.NoError(t, fx.call(t, "grant_late", map[string]any{"n": 300 << 10}, &started), "seed %d step %d", seed, step)
			<-fx.big
			var out map[string]any
			require.NoError(t, fx.call(t, "grant_outcome", nil, &out), "seed %d step %d", seed, step)
			require.Equal(t, "ended", out["kind"], "seed %d step %d: %v", seed, step, out)
		case "parallel":
			// Several calls at once: in the one-call mode they queue.
			errs := make(chan error, 3)
			for range 3 {
				raw, err := pymarshal.Marshal(map[string]any{"sizes": pick(1 + rng.IntN(3))})
				require.NoError(t, err)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					resp, err := fx.w.Call(ctx, &worker.Request{Command: "echo_all", Args: raw})
					if err == nil {
						var got []any
						if err = pymarshal.Unmarshal(resp.Result, &got); err == nil {
							for i, v := range got {
								if v != true {
									err = fmt.Errorf("host call %d: %v", i, v)
								}
							}
						}
					}
					errs <- err
				}()
			}
			for range 3 {
				require.NoError(t, <-errs, "seed %d step %d", seed, step)
			}
		case "kill":
			close(fx.kill)
			err := fx.call(t, "slow_all", map[string]any{"sizes": pick(2), "delays": []int{0, 0}}, nil)
			require.ErrorIs(t, err, worker.ErrWorkerDead, "seed %d step %d", seed, step)
			fx.w.Close(context.Background())
			start()
		}
		check(step, kind)
	}
}

// TestHostRegionGrantAfterDeadline: a grant that reaches the host after
// the Go call was abandoned at its deadline (its held result dropped) gets
// an error reply; the thread that made the host call gets HostError
// "ended", and the span granted is free again (it leaked before).
func TestHostRegionGrantAfterDeadline(t *testing.T) {
	for _, mode := range regionModes {
		t.Run(mode.name, func(t *testing.T) {
			fx := startRegionWorker(t, func(c *subproc.Config) {
				if mode.mutate != nil {
					mode.mutate(c)
				}
				c.InterruptGrace = 10 * time.Second
			})
			for range 3 {
				raw, err := pymarshal.Marshal(map[string]any{"n": 1 << 20, "wait": 1.0})
				require.NoError(t, err)
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				_, err = fx.w.Call(ctx, &worker.Request{Command: "grant_after_deadline", Args: raw})
				cancel()
				require.ErrorIs(t, err, context.DeadlineExceeded)
				<-fx.big
				var out map[string]any
				require.Eventually(t, func() bool {
					return fx.call(t, "after", nil, &out) == nil && len(out) > 0
				}, 20*time.Second, 20*time.Millisecond)
				assert.Equal(t, "ended", out["kind"], "the host call: %v", out)
			}
			var st map[string]any
			require.NoError(t, fx.call(t, "region_state", nil, &st))
			assert.Equal(t, map[string]any{"grants": int64(0), "args": int64(0)}, st, "spans still in use")
		})
	}
}

// TestHostCallsCancelledConcurrent: in the concurrent mode, calls making
// host calls back to back (through the socket, and with arguments or
// results in the host-call region) are cancelled at their deadlines while
// another such call runs: the interrupt lands in the handler's code, never
// in a frame half sent, a lock taken or a span in use, so the worker goes
// on answering, and no span stays in use. (Before the interrupt gate the
// worker stopped answering within a few cancels.)
func TestHostCallsCancelledConcurrent(t *testing.T) {
	fx := startRegionWorker(t, func(c *subproc.Config) {
		c.Concurrency = 3
		c.InterruptGrace = 10 * time.Second
	})
	done := make(chan error, 1)
	go func() {
		done <- fx.call(t, "flood", map[string]any{"n": 200 << 10, "k": 1, "seconds": 3.0}, nil)
	}()
	loads := []struct {
		command string
		args    map[string]any
	}{
		{"flood", map[string]any{"n": 200 << 10, "k": 1, "seconds": 2.0}},
		{"flood", map[string]any{"n": 1 << 20, "k": 8, "seconds": 2.0}},
		{"flood_big", map[string]any{"n": 1 << 20, "seconds": 2.0}},
	}
	for i := range 30 {
		l := loads[i%len(loads)]
		raw, err := pymarshal.Marshal(l.args)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(5+i*3)*time.Millisecond)
		_, err = fx.w.Call(ctx, &worker.Request{Command: l.command, Args: raw})
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded, "cancel %d (%s)", i, l.command)
		var pong string
		require.NoError(t, fx.call(t, "ping", nil, &pong), "after cancel %d (%s) the worker answers nothing", i, l.command)
	}
	require.NoError(t, <-done)
	var st map[string]any
	require.Eventually(t, func() bool {
		return fx.call(t, "region_state", nil, &st) == nil && st["args"] == int64(0) && st["grants"] == int64(0)
	}, 10*time.Second, 50*time.Millisecond, "spans still in use: %v", st)
}

// TestHostViewArgumentKind: a memoryview of doubles reaches Go as the same
// type whatever its size (set apart for the region or not).
func TestHostViewArgumentKind(t *testing.T) {
	fx := startRegionWorker(t, nil)
	var small, large string
	require.NoError(t, fx.call(t, "view_kind", map[string]any{"n": 8 << 10}, &small))
	require.NoError(t, fx.call(t, "view_kind", map[string]any{"n": 512 << 10}, &large))
	assert.Equal(t, small, large, "8 KiB and 512 KiB memoryviews of doubles")
}
