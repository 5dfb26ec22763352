package subproc_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

var (
	chaosN    = flag.Int("chaos.n", 0, "steps of TestChaos (0: 40, or 600 with SNAKEPIT_CHAOS=1)")
	chaosSeed = flag.Uint64("chaos.seed", 0, "seed of TestChaos (0: from the clock)")
)

// Timings of the scripted-child tests. The grace is short so that steps
// that wait it out stay quick; closeSlack bounds how long past its context
// (or grace) a Close may take: a hang guard, generous for a loaded machine
// under -race.
const (
	chaosGrace = 800 * time.Millisecond
	closeSlack = 3 * time.Second
	hangGuard  = 20 * time.Second
)

func scriptConfig(t *testing.T) subproc.Config {
	cfg := fakeConfig(t, "script")
	cfg.InterruptGrace = chaosGrace
	cfg.StopGrace = time.Second
	return cfg
}

func startScript(t *testing.T) *subproc.Worker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	w, err := subproc.Start(ctx, scriptConfig(t))
	if err != nil {
		t.Fatalf("start the scripted child: %v", err)
	}
	return w
}

func scriptCall(ctx context.Context, w *subproc.Worker, s step) ([]byte, error) {
	resp, err := w.Call(ctx, &worker.Request{Command: s.command()})
	if err != nil {
		return nil, err
	}
	return resp.Result, nil
}

// frameLen is the length of the reply frame the scripted child writes for
// an echo of v.
func frameLen(v []byte) int { return 13 + 5 + 5 + len(v) }

// decoyValue returns n random bytes with, at random places, whole reply
// frames for other request ids: bytes that parse as a valid reply if a
// reader ever starts in the middle of this one.
func decoyValue(rng *rand.Rand, n int) []byte {
	var b []byte
	for len(b) < n {
		if rng.IntN(3) == 0 {
			other, _ := replyBytes([]byte("decoy " + strconv.Itoa(rng.IntN(1000))))
			b = append(b, encodeFrame(fReply, uint64(1+rng.IntN(2000)), other)...)
			continue
		}
		b = append(b, byte(rng.IntN(256)))
	}
	return b
}

func randomCuts(rng *rand.Rand, n int) []int {
	var cuts []int
	for range rng.IntN(6) {
		cuts = append(cuts, 1+rng.IntN(max(n-1, 1)))
	}
	if rng.IntN(8) == 0 {
		for i := 1; i < min(n, 40); i++ { // every byte boundary of the start
			cuts = append(cuts, i)
		}
	}
	// The child writes the pieces in order: sort them.
	for i := range cuts {
		for j := i + 1; j < len(cuts); j++ {
			if cuts[j] < cuts[i] {
				cuts[i], cuts[j] = cuts[j], cuts[i]
			}
		}
	}
	return cuts
}

// probe makes a call that must succeed and return its own value: the
// worker serves the next caller, and only with that caller's reply.
func probe(t *testing.T, rng *rand.Rand, w *subproc.Worker) {
	t.Helper()
	v := decoyValue(rng, rng.IntN(2000))
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	got, err := scriptCall(ctx, w, step{Op: "echo", Value: v, Cuts: randomCuts(rng, frameLen(v)), PauseUS: rng.IntN(200)})
	if err != nil {
		t.Fatalf("probe call: got %v, want its result", err)
	}
	if want := appendMarshalBytes(nil, v); !bytes.Equal(got, want) {
		t.Fatalf("probe call: got a result of %d bytes %.40q, want its own %d bytes %.40q", len(got), got, len(want), want)
	}
}

// closeWithin closes w with a context of d and fails if Close takes more
// than d plus closeSlack.
func closeWithin(t *testing.T, w *subproc.Worker, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	done := make(chan struct{})
	go func() { w.Close(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(d + closeSlack):
		t.Fatalf("Close with a context of %v: still running after %v", d, time.Since(start))
	}
}

// waitDead waits (bounded) for w to stop and checks why.
func waitDead(t *testing.T, w *subproc.Worker) {
	t.Helper()
	select {
	case <-w.Done():
	case <-time.After(hangGuard):
		t.Fatalf("the worker did not die")
	}
	if err := w.Err(); !errors.Is(err, worker.ErrWorkerDead) {
		t.Fatalf("worker error: got %v, want ErrWorkerDead", err)
	}
}

func assertAlive(t *testing.T, w *subproc.Worker) {
	t.Helper()
	select {
	case <-w.Done():
		t.Fatalf("the worker died, want it alive: %v", w.Err())
	default:
	}
}

// goroutineBaseline starts and closes one worker (the spawner goroutine is
// then running for good) and returns the number of goroutines.
func goroutineBaseline(t *testing.T) int {
	w := startScript(t)
	closeWithin(t, w, 5*time.Second)
	return runtime.NumGoroutine()
}

// assertGoroutines waits (bounded) for the goroutine count to drop to base.
func assertGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: got %d, want at most %d:\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// chaosStep runs one step of kind against w and reports whether the
// worker is now expected to be dead (or closed). It checks what each kind
// guarantees.
func chaosStep(t *testing.T, rng *rand.Rand, w *subproc.Worker, kind string) (gone bool) {
	t.Helper()
	bg := context.Background()
	switch kind {
	case "ok":
		probe(t, rng, w)
	case "late", "late-full":
		// The reply straddles the deadline (half before, half after) or
		// comes whole after it, within the grace: the call may time out,
		// the worker must not die, and the next caller gets its own reply.
		v := decoyValue(rng, rng.IntN(3000))
		n := frameLen(v)
		const deadline = 40 * time.Millisecond
		s := step{Op: "echo", Value: v, Cuts: randomCuts(rng, n), PauseUS: rng.IntN(100)}
		if kind == "late" {
			s.DelayMS, s.StallAt, s.StallMS = 20+rng.IntN(15), rng.IntN(n+1), 30+rng.IntN(100)
		} else {
			s.DelayMS = 50 + rng.IntN(100)
		}
		ctx, cancel := context.WithTimeout(bg, deadline)
		got, err := scriptCall(ctx, w, s)
		cancel()
		switch {
		case err == nil:
			if want := appendMarshalBytes(nil, v); !bytes.Equal(got, want) {
				t.Fatalf("%s: got a result of %d bytes, want its own %d bytes", kind, len(got), len(want))
			}
		case !errors.Is(err, context.DeadlineExceeded):
			t.Fatalf("%s: got %v, want DeadlineExceeded or the result", kind, err)
		}
		probe(t, rng, w)
		assertAlive(t, w)
	case "cancel":
		ctx, cancel := context.WithCancel(bg)
		stop := time.AfterFunc(time.Duration(rng.IntN(20))*time.Millisecond, cancel)
		_, err := scriptCall(ctx, w, step{Op: "echo", DelayMS: 10000, Interruptible: true})
		stop.Stop()
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancel: got %v, want context.Canceled", err)
		}
		probe(t, rng, w)
		assertAlive(t, w)
	case "hang":
		ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
		_, err := scriptCall(ctx, w, step{Op: "hang"})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("hang: got %v, want DeadlineExceeded", err)
		}
		waitDead(t, w)
		return true
	case "exit":
		v := decoyValue(rng, rng.IntN(500))
		n := frameLen(v)
		prefix := rng.IntN(n + 1)
		ctx, cancel := context.WithTimeout(bg, hangGuard)
		got, err := scriptCall(ctx, w, step{Op: "exit", Value: v, Prefix: prefix})
		cancel()
		if err == nil {
			if prefix != n || !bytes.Equal(got, appendMarshalBytes(nil, v)) {
				t.Fatalf("exit after %d of %d bytes: got a result, want ErrWorkerDead", prefix, n)
			}
		} else if !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("exit after %d of %d bytes: got %v, want ErrWorkerDead", prefix, n, err)
		}
		waitDead(t, w)
		return true
	case "garbage":
		ctx, cancel := context.WithTimeout(bg, hangGuard)
		_, err := scriptCall(ctx, w, step{Op: "garbage", Value: []byte("x")})
		cancel()
		if !errors.Is(err, subproc.ErrBadFrame) || !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("garbage: got %v, want ErrBadFrame and ErrWorkerDead", err)
		}
		waitDead(t, w)
		return true
	case "shm":
		// A reply through the shared region, at a random offset, growing
		// the region now and then; sometimes after the caller's deadline,
		// read by the background reader within the grace.
		v := decoyValue(rng, rng.IntN(20000))
		s := step{Op: "shm", Value: v, ShmAuto: true, ShmOff: uint64(rng.IntN(3 * os.Getpagesize()))}
		d := hangGuard
		if rng.IntN(3) == 0 {
			s.DelayMS, d = 50+rng.IntN(100), 40*time.Millisecond
		}
		ctx, cancel := context.WithTimeout(bg, d)
		got, err := scriptCall(ctx, w, s)
		cancel()
		switch {
		case err == nil:
			if want := appendMarshalBytes(nil, v); !bytes.Equal(got, want) {
				t.Fatalf("shm: got a result of %d bytes, want its own %d bytes", len(got), len(want))
			}
		case !errors.Is(err, context.DeadlineExceeded):
			t.Fatalf("shm: got %v, want DeadlineExceeded or the result", err)
		}
		probe(t, rng, w)
		assertAlive(t, w)
	case "shm-bad":
		bad := []string{"off", "len", "gen"}[rng.IntN(3)]
		ctx, cancel := context.WithTimeout(bg, hangGuard)
		_, err := scriptCall(ctx, w, step{Op: "shm", Value: decoyValue(rng, rng.IntN(5000)), ShmAuto: true, ShmBad: bad})
		cancel()
		if !errors.Is(err, subproc.ErrBadRegion) || !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("shm-bad %s: got %v, want ErrBadRegion and ErrWorkerDead", bad, err)
		}
		waitDead(t, w)
		return true
	case "noread":
		blockedWrite(t, w)
		return true
	case "stream":
		chaosStream(t, rng, w)
		select {
		case <-w.Done():
			waitDead(t, w)
			return true
		default:
			probe(t, rng, w)
		}
	case "stream-late-next":
		abandonedStreamClose(t, w)
		probe(t, rng, w)
		assertAlive(t, w)
	case "close-open-stream":
		closeOpenStream(t, w)
		return true
	case "close-during-call":
		errc := make(chan error, 1)
		go func() {
			_, err := scriptCall(bg, w, step{Op: "hang"})
			errc <- err
		}()
		// Close waits for the call until its context ends, then kills.
		closeWithin(t, w, time.Duration(rng.IntN(100))*time.Millisecond)
		select {
		case err := <-errc:
			if !errors.Is(err, worker.ErrWorkerDead) && !errors.Is(err, worker.ErrClosed) {
				t.Fatalf("call during Close: got %v, want ErrWorkerDead or ErrClosed", err)
			}
		case <-time.After(hangGuard):
			t.Fatalf("a call during Close did not return")
		}
		return true
	default:
		panic("unknown step " + kind)
	}
	return false
}

// chaosStream reads a stream of random length, then closes it early or at
// its end; the generator's cleanup may be slow, interruptible or not.
func chaosStream(t *testing.T, rng *rand.Rand, w *subproc.Worker) {
	t.Helper()
	s := step{Op: "stream", N: rng.IntN(5)}
	switch rng.IntN(6) {
	case 1:
		s.CloseDelayMS = 50
	case 2:
		s.CloseDelayMS = -1 // until SIGUSR1
	case 3:
		s.CloseDelayMS, s.CloseIgnoresSignal = -1, true // for ever: the worker dies
	case 4:
		s.ExitOnClose = true
	case 5:
		s.ExitAtChunk = 1 + rng.IntN(s.N+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	st, err := w.Stream(ctx, &worker.Request{Command: s.command()})
	if err != nil {
		t.Fatalf("stream open: %v", err)
	}
	read := rng.IntN(s.N + 2)
	for i := 1; i <= read; i++ {
		chunk, err := st.Next(ctx)
		if i == s.ExitAtChunk {
			if !errors.Is(err, worker.ErrWorkerDead) {
				t.Fatalf("chunk %d from a child that exits: got %v, want ErrWorkerDead", i, err)
			}
			waitDead(t, w)
			return
		}
		if i > s.N {
			if err != io.EOF {
				t.Fatalf("stream end: got %v, want io.EOF", err)
			}
			break
		}
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if want := appendMarshalBytes(nil, []byte(strconv.Itoa(i))); !bytes.Equal(chunk, want) {
			t.Fatalf("chunk %d: got %q, want %q", i, chunk, want)
		}
	}
	start := time.Now()
	closed := make(chan struct{})
	go func() { st.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(chaosGrace + closeSlack):
		t.Fatalf("stream Close: still running after %v, want it bounded by the grace (%v)", time.Since(start), chaosGrace)
	}
	if (s.CloseIgnoresSignal || s.ExitOnClose) && read <= s.N {
		waitDead(t, w)
	}
}

// blockedWrite: the child stops reading; a large request blocks in the
// write until its cancel-only context ends. The call returns Canceled and
// the worker, with a partly written frame on the wire, dies. The caller
// treats the worker as gone either way.
func blockedWrite(t *testing.T, w *subproc.Worker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if _, err := scriptCall(ctx, w, step{Op: "noread"}); err != nil {
		t.Fatalf("noread: %v", err)
	}
	args, err := pymarshal.Marshal(map[string]any{"blob": make([]byte, 8<<20)})
	if err != nil {
		t.Fatal(err)
	}
	// Cancel late enough for the write to be under way: the socket buffer
	// takes the first part of the 8 MiB at once, and a partly written frame
	// cannot be taken back, so the worker must die. A slow machine (-race)
	// may not have started writing by then; nothing sent keeps the worker,
	// so try again later before calling it a failure.
	for _, after := range []time.Duration{200 * time.Millisecond, time.Second, 3 * time.Second} {
		cctx, ccancel := context.WithCancel(context.Background())
		stop := time.AfterFunc(after, ccancel)
		errc := make(chan error, 1)
		go func() {
			_, err := w.Call(cctx, &worker.Request{Command: step{Op: "echo"}.command(), Args: args})
			errc <- err
		}()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("blocked write: got %v, want context.Canceled", err)
			}
		case <-time.After(hangGuard):
			t.Fatalf("a cancelled call blocked in its write did not return")
		}
		stop.Stop()
		ccancel()
		select {
		case <-w.Done():
			waitDead(t, w)
			return
		default:
		}
	}
	t.Fatal("the worker lived on after writes cancelled 0.2, 1 and 3 s in, want it dead (a partly written frame)")
}

// abandonedStreamClose: a Next times out and its chunk comes late; closing
// the generator then takes longer than the grace (signals ignored) but
// ends within a second grace. The slot must stay taken until the close's
// reply came, so the next call reads its own reply.
func abandonedStreamClose(t *testing.T, w *subproc.Worker) {
	t.Helper()
	s := step{Op: "stream", N: 3, NextDelayMS: 60, CloseDelayMS: int((chaosGrace + 100*time.Millisecond) / time.Millisecond), CloseIgnoresSignal: true}
	st, err := w.Stream(context.Background(), &worker.Request{Command: s.command()})
	if err != nil {
		t.Fatalf("stream open: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := st.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("late Next: got %v, want DeadlineExceeded", err)
	}
	st.Close()
}

// closeOpenStream: Worker.Close with a stream open whose cleanup never
// ends returns within its context plus a small bound.
func closeOpenStream(t *testing.T, w *subproc.Worker) {
	t.Helper()
	s := step{Op: "stream", N: 2, CloseDelayMS: -1, CloseIgnoresSignal: true}
	st, err := w.Stream(context.Background(), &worker.Request{Command: s.command()})
	if err != nil {
		t.Fatalf("stream open: %v", err)
	}
	if _, err := st.Next(context.Background()); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	closeWithin(t, w, 100*time.Millisecond)
}

var chaosKinds = []struct {
	kind   string
	weight int
}{
	{"ok", 4}, {"late", 4}, {"late-full", 2}, {"cancel", 2}, {"hang", 1}, {"exit", 2},
	{"garbage", 1}, {"noread", 1}, {"stream", 3}, {"stream-late-next", 1},
	{"close-open-stream", 1}, {"close-during-call", 1}, {"shm", 4}, {"shm-bad", 1},
}

func pickKind(rng *rand.Rand) string {
	total := 0
	for _, k := range chaosKinds {
		total += k.weight
	}
	n := rng.IntN(total)
	for _, k := range chaosKinds {
		if n < k.weight {
			return k.kind
		}
		n -= k.weight
	}
	panic("unreachable")
}

// TestChaos drives a scripted fake child through a seeded random sequence
// of steps — replies cut at every byte boundary, replies straddling or
// missing their deadline, cancels, children that stop reading, exit midway
// or break the protocol, streams with slow cleanup, Close at awkward
// moments — and checks after each step: a reply reaches only its own
// caller, a timed-out call kills the worker only when the child really
// failed, Close is bounded by its context, and in the end no process or
// goroutine is left. SNAKEPIT_CHAOS=1 or -chaos.n runs it longer; a failure
// prints the seed and the command that replays it.
func TestChaos(t *testing.T) {
	n := 40
	if os.Getenv("SNAKEPIT_CHAOS") != "" {
		n = 600
	}
	if *chaosN > 0 {
		n = *chaosN
	}
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	var kinds []string
	defer func() {
		if t.Failed() {
			t.Logf("seed %d, steps so far: %v", seed, kinds)
			t.Logf("replay: go test -race -run '^TestChaos$' ./subproc/ -chaos.seed=%d -chaos.n=%d", seed, n)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	base := goroutineBaseline(t)
	w := startScript(t)
	for range n {
		kind := pickKind(rng)
		kinds = append(kinds, kind)
		if gone := chaosStep(t, rng, w, kind); gone {
			closeWithin(t, w, time.Second)
			w = startScript(t)
		}
	}
	closeWithin(t, w, time.Second)
	assertNoChildren(t)
	assertGoroutines(t, base)
}

// Fixed scripts for the failures the chaos run looks for.

// TestLateReplyAcrossDeadline: a reply whose first half arrives before the
// caller's deadline and the rest after it is read whole by the background
// reader, at every split point: the worker lives and the next caller gets
// its own reply, not one found inside the late one.
func TestLateReplyAcrossDeadline(t *testing.T) {
	w := startScript(t)
	defer closeWithin(t, w, time.Second)
	rng := rand.New(rand.NewPCG(1, 2))
	// The late value holds a valid reply frame for each id the next calls
	// may get.
	var v []byte
	for id := uint64(1); id < 64; id++ {
		other, _ := replyBytes([]byte(fmt.Sprintf("not yours %d", id)))
		v = append(v, encodeFrame(fReply, id, other)...)
	}
	n := frameLen(v)
	for _, at := range []int{1, 12, 13, 14, 18, 23, 24, n / 2, n - 1} {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Millisecond)
		_, err := scriptCall(ctx, w, step{Op: "echo", Value: v, DelayMS: 20, StallAt: at, StallMS: 80})
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("split at %d: got %v, want DeadlineExceeded", at, err)
		}
		probe(t, rng, w)
		assertAlive(t, w)
	}
}

// TestAbandonedStreamCloseKeepsSlot: after a Next that timed out, the
// generator's close outlasts the grace; the next call waits for it and
// reads its own reply, and the worker lives.
func TestAbandonedStreamCloseKeepsSlot(t *testing.T) {
	w := startScript(t)
	defer closeWithin(t, w, time.Second)
	abandonedStreamClose(t, w)
	probe(t, rand.New(rand.NewPCG(3, 4)), w)
	assertAlive(t, w)
}

// TestCloseWithOpenStreamBounded: Worker.Close with a stream whose cleanup
// never ends returns within its context plus a small bound, and
// Stream.Close of such a stream within the grace plus a small bound.
func TestCloseWithOpenStreamBounded(t *testing.T) {
	base := goroutineBaseline(t)
	w := startScript(t)
	closeOpenStream(t, w)

	w = startScript(t)
	s := step{Op: "stream", N: 2, CloseDelayMS: -1, CloseIgnoresSignal: true}
	st, err := w.Stream(context.Background(), &worker.Request{Command: s.command()})
	if err != nil {
		t.Fatalf("stream open: %v", err)
	}
	closed := make(chan struct{})
	go func() { st.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(chaosGrace + closeSlack):
		t.Fatalf("stream Close: not bounded by the grace (%v)", chaosGrace)
	}
	waitDead(t, w) // the cleanup ignored SIGUSR1 for a second grace
	closeWithin(t, w, time.Second)
	assertNoChildren(t)
	assertGoroutines(t, base)
}

// TestCloseDuringStreamOpen: a Close that begins while a stream is still
// opening does not wait for a caller who would hold that stream: the open
// fails with ErrClosed and Close goes on.
func TestCloseDuringStreamOpen(t *testing.T) {
	base := goroutineBaseline(t)
	w := startScript(t)
	type opened struct {
		st  worker.Stream
		err error
	}
	res := make(chan opened, 1)
	go func() {
		st, err := w.Stream(context.Background(), &worker.Request{Command: step{Op: "stream", N: 3, DelayMS: 300}.command()})
		res <- opened{st, err}
	}()
	time.Sleep(100 * time.Millisecond) // the open is under way
	// Close's context is long: it must not need it (the open ends 200 ms
	// later, and then the stream at once).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	w.Close(ctx)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Close during a stream's open took %v, want it to go on once the open ends", took)
	}
	r := <-res
	if r.err == nil {
		r.st.Close()
		t.Fatal("stream opened while the worker closed: got a stream, want ErrClosed")
	}
	if !errors.Is(r.err, worker.ErrClosed) {
		t.Fatalf("stream open during Close: got %v, want ErrClosed", r.err)
	}
	assertNoChildren(t)
	assertGoroutines(t, base)
}

// TestCancelInterruptsBlockedWrite: a cancel-only context interrupts a
// request write blocked on a child that stopped reading.
func TestCancelInterruptsBlockedWrite(t *testing.T) {
	w := startScript(t)
	blockedWrite(t, w)
	closeWithin(t, w, time.Second)
	assertNoChildren(t)
}

// TestStartWithEndedContext: Start with a context that has ended fails at
// once with the context's error and starts nothing.
func TestStartWithEndedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := subproc.Start(ctx, scriptConfig(t))
	if !errors.Is(err, context.Canceled) || !errors.Is(err, worker.ErrSetup) {
		t.Fatalf("got %v, want context.Canceled and ErrSetup", err)
	}
	assertNoChildren(t)
	// Nothing is started at all: a command that cannot run is not even
	// tried.
	cfg := scriptConfig(t)
	cfg.Command = []string{"/nonexistent/snakepit-test-python"}
	if _, err := subproc.Start(ctx, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("with a command that cannot run: got %v, want context.Canceled", err)
	}
}

// TestCloseWithSetsidGrandchild: a grandchild that left the worker's
// process group (setsid) and holds its stdout and stderr survives the
// worker, but Close neither hangs on it nor leaves goroutines reading its
// output.
func TestCloseWithSetsidGrandchild(t *testing.T) {
	base := goroutineBaseline(t)
	w := startScript(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if _, err := scriptCall(ctx, w, step{Op: "grandchild-setsid", PidFile: pidFile, Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Kill(pid, unix.SIGKILL)
	closeWithin(t, w, time.Second)
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("the grandchild outside the group: got %v, want it alive (nothing kills it)", err)
	}
	assertNoChildren(t)
	assertGoroutines(t, base)
}
