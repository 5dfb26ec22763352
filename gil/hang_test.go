package gil_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// blockingAdapter writes an adapter that blocks in the given stage
// ("import" or "setup") until the returned release function is called.
func blockingAdapter(t *testing.T, stage string) (dir string, release func()) {
	t.Helper()
	dir = t.TempDir()
	gate := filepath.Join(dir, "gate")
	wait := "import os, time\n" +
		"def _block():\n" +
		"    for _ in range(6000):\n" +
		"        if os.path.exists(" + pyQuote(gate) + "):\n" +
		"            return\n" +
		"        time.sleep(0.01)\n"
	src := wait + "def handle(ctx, **kw):\n    return 1\n"
	if stage == "import" {
		src += "_block()\n"
	} else {
		src += "def setup():\n    _block()\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "blocking_adapter.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, func() {
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Error(err)
		}
	}
}

func pyQuote(s string) string { return "r'" + s + "'" }

// TestStartHonoursDeadline: an adapter whose import or setup() blocks makes
// Start return at ctx's deadline with an error matching worker.ErrSetup and
// context.DeadlineExceeded that names the process profile; the interpreter
// is reclaimed once the blocked code returns.
func TestStartHonoursDeadline(t *testing.T) {
	r := runtimeFor(t)
	for _, stage := range []string{"import", "setup"} {
		t.Run(stage, func(t *testing.T) {
			base := r.Interpreters()
			dir, release := blockingAdapter(t, stage)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			type result struct {
				w   *gil.Worker
				err error
			}
			resc := make(chan result, 1)
			go func() {
				w, err := gil.Start(ctx, gil.Config{Module: "blocking_adapter", Paths: []string{dir}, Runtime: r})
				resc <- result{w, err}
			}()
			var res result
			select {
			case res = <-resc:
			case <-time.After(10 * time.Second): // hang guard
				release()
				t.Fatal("Start did not return at its deadline")
			}
			release()
			if res.w != nil {
				res.w.Close(context.Background())
			}
			if !errors.Is(res.err, worker.ErrSetup) || !errors.Is(res.err, context.DeadlineExceeded) {
				t.Fatalf("got %v, want ErrSetup and DeadlineExceeded", res.err)
			}
			// A module deadlocking in a sub-interpreter ends here too:
			// the error points to the profile where it runs.
			if !strings.Contains(res.err.Error(), "process profile") {
				t.Fatalf("got %q, want it to name the process profile", res.err)
			}
			// Reclaimed in the background once the blocked code returns.
			waitInterpreters(t, r, base)
		})
	}
}

// TestCloseDuringStreamNext: Close returns at its ctx's end while a stream's
// Next is blocked in Python, and the worker is reclaimed once Next returns.
func TestCloseDuringStreamNext(t *testing.T) {
	r := runtimeFor(t)
	base := r.Interpreters()
	dir := t.TempDir()
	gate, entered := filepath.Join(dir, "gate"), filepath.Join(dir, "entered")
	src := "import os, time, snakepit\n" +
		"@snakepit.command\n" +
		"def slow():\n" +
		"    yield 1\n" +
		"    open(" + pyQuote(entered) + ", 'w').close()\n" +
		"    for _ in range(6000):\n" +
		"        if os.path.exists(" + pyQuote(gate) + "):\n" +
		"            break\n" +
		"        time.sleep(0.01)\n" +
		"    yield 2\n"
	if err := os.WriteFile(filepath.Join(dir, "stream_adapter.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := gil.Start(context.Background(), gil.Config{Module: "stream_adapter", Paths: []string{dir}, Runtime: r})
	if err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(gate, nil, 0o644)
	st, err := w.Stream(context.Background(), &worker.Request{Command: "slow", CorrelationID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	nextDone := make(chan struct{})
	go func() {
		defer close(nextDone)
		_, _ = st.Next(context.Background())
	}()
	for { // wait until Next runs inside Python
		if _, err := os.Stat(entered); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- w.Close(ctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second): // hang guard
		os.WriteFile(gate, nil, 0o644)
		<-closed
		t.Fatal("Close did not return at its ctx's end")
	}
	os.WriteFile(gate, nil, 0o644)
	<-nextDone
	waitInterpreters(t, r, base)
}

// TestDaemonThreadRefusalNamesProcessProfile: starting a daemon thread in a
// handler fails with an error that points to the process profile.
func TestDaemonThreadRefusalNamesProcessProfile(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	src := "import threading, snakepit\n" +
		"@snakepit.command\n" +
		"def daemon():\n" +
		"    t = threading.Thread(target=lambda: None, daemon=True)\n" +
		"    t.start()\n" +
		"    t.join()\n" +
		"    return 1\n"
	if err := os.WriteFile(filepath.Join(dir, "daemon_adapter.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := gil.Start(context.Background(), gil.Config{Module: "daemon_adapter", Paths: []string{dir}, Runtime: r})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	_, err = w.Call(context.Background(), &worker.Request{Command: "daemon", CorrelationID: "d"})
	if err == nil && r.Version().Minor < 12 {
		return // legacy 3.11 sub-interpreters accept daemon threads
	}
	if err == nil || !strings.Contains(err.Error(), "process profile") {
		t.Fatalf("got %v, want an error naming the process profile", err)
	}
}

// TestSleepWakesOnDeadline: a handler in time.sleep() is interrupted at its
// deadline, and the worker stays alive and serves the next call.
func TestSleepWakesOnDeadline(t *testing.T) {
	r := runtimeFor(t)
	dir := t.TempDir()
	src := "import time, snakepit\n" +
		"@snakepit.command\n" +
		"def nap(s):\n" +
		"    time.sleep(s)\n" +
		"    return 1\n"
	if err := os.WriteFile(filepath.Join(dir, "sleep_adapter.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := gil.Start(context.Background(), gil.Config{Module: "sleep_adapter", Paths: []string{dir}, Runtime: r, InterruptGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	call := func(ctx context.Context, s float64) error {
		b, _ := pymarshal.Marshal(map[string]any{"s": s})
		_, err := w.Call(ctx, &worker.Request{Command: "nap", Args: b, CorrelationID: "n"})
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := call(ctx, 60); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second) // hang guard
	defer cancel2()
	if err := call(ctx2, 0); err != nil {
		t.Fatalf("next call: got %v, want success (worker error: %v)", err, w.Err())
	}
}

// waitInterpreters waits (up to 30 s) for the runtime's interpreters to
// come back to base: those ended in the background are reclaimed.
func waitInterpreters(t *testing.T, r *embed.Runtime, base int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for r.Interpreters() > base {
		if time.Now().After(deadline) {
			t.Fatalf("got %d interpreters, want %d", r.Interpreters(), base)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
