package remote_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/remote"
	"github.com/snakepit-go/snakepit/worker"
)

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestCancelCrossesWire: a caller whose context ends has the handler on
// the instance interrupted (it writes a marker when it sees it).
func TestCancelCrossesWire(t *testing.T) {
	url := natsServer(t, 0)
	startInstance(t, url, "a", instanceOpts{size: 1})
	startInstance(t, url, "b", instanceOpts{size: 1, profile: "thread"})
	p := newClient(t, connect(t, url), "py", remote.Options{})
	guard := hangGuard(t)
	for i := range 2 { // the queue group may pick either instance
		marker := filepath.Join(t.TempDir(), "m"+strconv.Itoa(i))
		ctx, cancel := context.WithCancel(guard)
		errc := make(chan error, 1)
		go func() { errc <- p.Call(ctx, "wait_cancel", map[string]any{"marker": marker}, nil) }()
		require.Eventually(t, func() bool { return readFile(marker+".started") != "" }, 30*time.Second, 5*time.Millisecond)
		cancel()
		select {
		case err := <-errc:
			require.ErrorIs(t, err, context.Canceled)
		case <-guard.Done():
			t.Fatal("the cancelled call did not return")
		}
		require.Eventually(t, func() bool { return readFile(marker) == "cancelled" }, 30*time.Second, 5*time.Millisecond,
			"the handler did not see its cancellation")
	}
}

// TestSessions: a session sticks to the instance that served it; when
// that instance dies a strict session's next call gets ErrSessionLost and
// the one after starts afresh elsewhere; a hint session moves on at once.
func TestSessions(t *testing.T) {
	url := natsServer(t, 0)
	ins := map[string]*instance{}
	for _, tag := range []string{"a", "b", "c"} {
		ins[tag] = startInstance(t, url, tag, instanceOpts{})
	}
	p := newClient(t, connect(t, url), "py", remote.Options{})
	ctx := hangGuard(t)
	type counted struct {
		N   int    `json:"n"`
		Tag string `json:"tag"`
	}
	strict := p.Session("strict-1", pool.StrictQueue)
	hint := p.Session("hint-1", pool.Hint)
	var first counted
	require.NoError(t, strict.Call(ctx, "count", nil, &first))
	for i := 2; i <= 5; i++ {
		var c counted
		require.NoError(t, strict.Call(ctx, "count", nil, &c))
		assert.Equal(t, counted{N: i, Tag: first.Tag}, c)
	}
	assert.Equal(t, ins[first.Tag].id, strict.Instance())
	// The hint session, bound to the same instance as the strict one.
	for {
		var c counted
		require.NoError(t, hint.Call(ctx, "count", nil, &c))
		if c.Tag == first.Tag {
			break
		}
		require.NoError(t, hint.Close(ctx))
	}
	ins[first.Tag].kill(t)

	err := strict.Call(ctx, "count", nil, nil)
	require.ErrorIs(t, err, pool.ErrSessionLost)
	var again counted
	require.NoError(t, strict.Call(ctx, "count", nil, &again))
	assert.Equal(t, 1, again.N, "the session starts afresh")
	assert.NotEqual(t, first.Tag, again.Tag)
	var c counted
	require.NoError(t, strict.Call(ctx, "count", nil, &c))
	assert.Equal(t, counted{N: 2, Tag: again.Tag}, c)

	var h counted
	require.NoError(t, hint.Call(ctx, "count", nil, &h))
	assert.Equal(t, 1, h.N)
	assert.NotEqual(t, first.Tag, h.Tag)

	require.NoError(t, strict.Close(ctx))
	require.NoError(t, strict.Call(ctx, "count", nil, &c))
	assert.Equal(t, 1, c.N, "a closed session starts afresh")
}

// TestStreams: items come in order; the instance runs at most the
// granted window ahead; breaking out of the loop closes the generator on
// the instance; an instance that dies ends the stream with a typed error.
func TestStreams(t *testing.T) {
	url := natsServer(t, 0)
	a := startInstance(t, url, "a", instanceOpts{size: 1})
	p := newClient(t, connect(t, url), "py", remote.Options{StreamWindow: 4, Heartbeat: 50 * time.Millisecond})
	ctx := hangGuard(t)

	var got []int
	for chunk, err := range p.Stream(ctx, "squares", map[string]any{"n": 50}) {
		require.NoError(t, err)
		var n int
		require.NoError(t, chunk.Decode(&n))
		got = append(got, n)
	}
	require.Len(t, got, 50)
	for i, n := range got {
		require.Equal(t, i*i, n)
	}

	// Flow control and break-off by the caller.
	marker := filepath.Join(t.TempDir(), "ticks")
	taken := 0
	for chunk, err := range p.Stream(ctx, "ticks", map[string]any{"marker": marker}) {
		require.NoError(t, err)
		taken++
		if taken == 1 {
			var n int
			require.NoError(t, chunk.Decode(&n))
			require.Equal(t, 1, n)
			// The generator runs ahead only by the window (4 sent, and
			// the one the pool's stream has started producing).
			require.Eventually(t, func() bool { n, _ := strconv.Atoi(readFile(marker)); return n >= 4 }, 30*time.Second, 5*time.Millisecond)
			time.Sleep(200 * time.Millisecond) // a chance to overrun, were it not held back
			n, err := strconv.Atoi(readFile(marker))
			require.NoError(t, err)
			assert.LessOrEqual(t, n, 5, "items produced ahead of a window of 4")
		}
		if taken == 10 {
			break
		}
	}
	require.Eventually(t, func() bool { return readFile(marker) == "closed" }, 30*time.Second, 5*time.Millisecond,
		"the generator was not closed on the instance")

	// Break-off by the instance's death.
	marker2 := filepath.Join(t.TempDir(), "ticks2")
	var streamErr error
	start := time.Now()
	for _, err := range p.Stream(ctx, "ticks", map[string]any{"marker": marker2}) {
		if err != nil {
			streamErr = err
			break
		}
		if a != nil {
			a.kill(t)
			start, a = time.Now(), nil
		}
	}
	require.ErrorIs(t, streamErr, worker.ErrWorkerDead)
	require.ErrorIs(t, streamErr, remote.ErrInstanceGone)
	t.Logf("instance death noticed by the stream after %v", time.Since(start))
}

// TestKillUnderLoad: one of three serving processes is SIGKILLed during
// 10 000 calls from 32 callers. Every call has exactly one outcome; the
// instances ran each call at most once (twice for an idempotent call
// whose first instance died); failed calls fail with typed errors; every
// idempotent call succeeds.
func TestKillUnderLoad(t *testing.T) {
	url := natsServer(t, 0)
	rec := t.TempDir()
	ins := []*instance{
		startInstance(t, url, "a", instanceOpts{record: rec}),
		startInstance(t, url, "b", instanceOpts{record: rec}),
		startInstance(t, url, "c", instanceOpts{record: rec}),
	}
	p := newClient(t, connect(t, url), "py", remote.Options{Heartbeat: 100 * time.Millisecond, DeadAfter: time.Second})
	ctx := hangGuard(t)

	const calls, callers = 10000, 32
	type outcome struct {
		idem bool
		err  error
		at   time.Time // when the call returned
	}
	outcomes := make([]outcome, calls)
	var seen [calls]atomic.Int32
	var next, done atomic.Int64
	killAt := make(chan struct{})
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= calls {
					return
				}
				idem := i%2 == 0
				var opts []remote.CallOption
				if idem {
					opts = append(opts, remote.Idempotent())
				}
				var got int
				err := p.Call(pool.WithCorrelationID(ctx, "load-"+strconv.Itoa(i)), "record", map[string]any{"i": i}, &got, opts...)
				if err == nil && got != i {
					err = errors.New("wrong result " + strconv.Itoa(got))
				}
				seen[i].Add(1)
				outcomes[i] = outcome{idem: idem, err: err, at: time.Now()}
				if done.Add(1) == calls/5 {
					close(killAt)
				}
			}
		}()
	}
	<-killAt
	killed := time.Now()
	ins[1].kill(t)
	wg.Wait()

	var failed, idemFailed int
	var noticed time.Duration // the latest failure after the kill
	for i := range calls {
		require.Equal(t, int32(1), seen[i].Load(), "call %d: outcomes", i)
		o := outcomes[i]
		if o.err == nil {
			continue
		}
		failed++
		noticed = max(noticed, o.at.Sub(killed))
		if o.idem {
			idemFailed++
		}
		assert.ErrorIs(t, o.err, worker.ErrWorkerDead, "call %d", i)
	}
	assert.Zero(t, idemFailed, "idempotent calls that failed")

	// What the instances ran, by correlation id.
	ran := map[string]int{}
	files, err := filepath.Glob(filepath.Join(rec, "rec-*"))
	require.NoError(t, err)
	for _, f := range files {
		fh, err := os.Open(f)
		require.NoError(t, err)
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			ran[sc.Text()]++
		}
		fh.Close()
	}
	st := p.Stats()
	twice := 0
	for i := range calls {
		n := ran["load-"+strconv.Itoa(i)]
		o := outcomes[i]
		switch {
		case o.err == nil && !o.idem:
			assert.Equal(t, 1, n, "call %d succeeded: times run", i)
		case o.err == nil && o.idem:
			assert.Contains(t, []int{1, 2}, n, "idempotent call %d: times run", i)
			if n == 2 {
				twice++
			}
		default:
			assert.LessOrEqual(t, n, 1, "failed call %d: times run", i)
		}
	}
	assert.Len(t, ran, len(ran)) // no id outside the calls made:
	for id := range ran {
		assert.True(t, strings.HasPrefix(id, "load-"), "unknown call %q ran", id)
	}
	assert.LessOrEqual(t, int64(twice), st.Retries)
	assert.Equal(t, int64(calls-failed), st.Calls)
	t.Logf("%d calls: %d failed (all ErrWorkerDead, none idempotent), %d retried, %d run twice, %d instance losses seen; the last failure %v after the kill (DeadAfter 1s)",
		calls, failed, st.Retries, twice, st.Gone, noticed)
}

// TestDrain: an instance told to stop (SIGTERM: Shutdown) finishes the
// calls it runs, takes no new ones (they go to the other instance) and
// leaves.
func TestDrain(t *testing.T) {
	url := natsServer(t, 0)
	a := startInstance(t, url, "a", instanceOpts{size: 1, profile: "thread"})
	startInstance(t, url, "b", instanceOpts{size: 1})
	p := newClient(t, connect(t, url), "py", remote.Options{})
	ctx := hangGuard(t)

	// A session call bound to a, running when a is told to leave.
	s := p.Session("drain", pool.StrictQueue)
	for {
		var tag string
		require.NoError(t, s.Call(ctx, "tag", nil, &tag))
		if tag == "a" {
			break
		}
		require.NoError(t, s.Close(ctx))
	}
	marker := filepath.Join(t.TempDir(), "started")
	slow := make(chan error, 1)
	var slowTag string
	go func() {
		slow <- s.Call(ctx, "sleep", map[string]any{"seconds": 1.5, "marker": marker}, &slowTag)
	}()
	require.Eventually(t, func() bool { return readFile(marker) != "" }, 30*time.Second, 5*time.Millisecond)
	require.NoError(t, a.cmd.Process.Signal(unix.SIGTERM))
	// Once a has left the service, no new call reaches it.
	require.Eventually(t, func() bool {
		is, err := p.Instances(ctx, 200*time.Millisecond)
		if err != nil || len(is) != 1 {
			return false
		}
		return is[0].ID != a.id
	}, 30*time.Second, 10*time.Millisecond)
	for range 10 {
		var tag string
		require.NoError(t, p.Call(ctx, "tag", nil, &tag))
		assert.Equal(t, "b", tag)
	}
	require.NoError(t, <-slow, "the call in progress when the instance was told to leave")
	assert.Equal(t, "a", slowTag)
	select {
	case err := <-a.done:
		a.done <- err
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the instance did not leave")
	}
	// The session's instance left: its state with it.
	require.ErrorIs(t, s.Call(ctx, "tag", nil, nil), pool.ErrSessionLost)
}

// TestSaturated: an instance whose pool is full answers ErrSaturated at
// once (nothing queued, nothing ran).
func TestSaturated(t *testing.T) {
	url := natsServer(t, 0)
	startInstance(t, url, "a", instanceOpts{size: 1, queue: -1})
	p := newClient(t, connect(t, url), "py", remote.Options{})
	ctx := hangGuard(t)
	marker := filepath.Join(t.TempDir(), "started")
	slow := make(chan error, 1)
	go func() { slow <- p.Call(ctx, "sleep", map[string]any{"seconds": 1, "marker": marker}, nil) }()
	require.Eventually(t, func() bool { return readFile(marker) != "" }, 30*time.Second, 5*time.Millisecond)
	err := p.Call(ctx, "tag", nil, nil)
	require.ErrorIs(t, err, pool.ErrSaturated)
	require.NoError(t, <-slow)
	assert.Equal(t, int64(2), p.Stats().Rejected, "the refusal and the retry's")
}
