package subproc_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const crashAdapter = `
import ctypes
import os
import sys

import snakepit


@snakepit.command
def abort():
    sys.stderr.write("about to abort\n")
    sys.stderr.flush()
    os.abort()


@snakepit.command
def segfault():
    ctypes.string_at(0)


@snakepit.command
def exit_now(code):
    os._exit(code)


@snakepit.command
def raw_output():
    os.write(1, b"raw line on fd 1\n")
    os.write(2, b"raw line on fd 2\n")
    return "written"


@snakepit.command
def grow(mb):
    global ballast
    ballast = bytearray(mb << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    return len(ballast)
`

type lines struct {
	mu  sync.Mutex
	got []string
}

func (l *lines) Enabled(context.Context, slog.Level) bool { return true }
func (l *lines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *lines) WithGroup(string) slog.Handler            { return l }
func (l *lines) Handle(_ context.Context, r slog.Record) error {
	var stream string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "stream" {
			stream = a.Value.String()
		}
		return true
	})
	l.mu.Lock()
	l.got = append(l.got, stream+": "+r.Message)
	l.mu.Unlock()
	return nil
}

func (l *lines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.got {
		if g == s {
			return true
		}
	}
	return false
}

func startCrashWorker(t *testing.T, log *lines) *subproc.Worker {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "crash_adapter.py"), []byte(crashAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	var logger *slog.Logger
	if log != nil {
		logger = slog.New(log)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "crash_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t), Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// TestCrashes: a worker process that dies mid-call reports an *ExitError
// matching ErrWorkerDead, with its exit status and stderr tail; nothing is
// left behind.
func TestCrashes(t *testing.T) {
	cases := []struct {
		command string
		args    map[string]any
		state   string
		stderr  string
	}{
		{"abort", nil, "signal: aborted", "about to abort"},
		{"segfault", nil, "signal: segmentation fault", ""},
		{"exit_now", map[string]any{"code": 7}, "exit status 7", ""},
	}
	for _, tc := range cases {
		t.Run(tc.command, func(t *testing.T) {
			w := startCrashWorker(t, nil)
			var args []byte
			if tc.args != nil {
				args, _ = pymarshal.Marshal(tc.args)
			}
			_, err := w.Call(context.Background(), &worker.Request{Command: tc.command, Args: args})
			var ee *subproc.ExitError
			if !errors.As(err, &ee) || !errors.Is(err, worker.ErrWorkerDead) {
				t.Fatalf("got %v, want an *ExitError", err)
			}
			if ee.State == nil || !strings.Contains(ee.State.String(), tc.state) {
				t.Fatalf("exit state %v, want %q", ee.State, tc.state)
			}
			if !strings.Contains(ee.Stderr, tc.stderr) {
				t.Fatalf("stderr tail %q lacks %q", ee.Stderr, tc.stderr)
			}
			<-w.Done()
			if !errors.Is(w.Err(), worker.ErrWorkerDead) {
				t.Fatalf("Err: %v", w.Err())
			}
			if _, err := w.Call(context.Background(), &worker.Request{Command: "raw_output"}); !errors.Is(err, worker.ErrWorkerDead) {
				t.Fatalf("call after the crash: got %v", err)
			}
			w.Close(context.Background())
			assertNoChildren(t)
		})
	}
}

// TestOutputAndMemory: output written straight to fds 1 and 2 reaches the
// logger line by line; MemoryBytes follows the process's resident set.
func TestOutputAndMemory(t *testing.T) {
	log := &lines{}
	w := startCrashWorker(t, log)
	if _, err := w.Call(context.Background(), &worker.Request{Command: "raw_output"}); err != nil {
		t.Fatal(err)
	}
	before, err := w.MemoryBytes()
	if err != nil || before <= 0 {
		t.Fatalf("MemoryBytes: %d, %v", before, err)
	}
	args, _ := pymarshal.Marshal(map[string]any{"mb": 64})
	if _, err := w.Call(context.Background(), &worker.Request{Command: "grow", Args: args}); err != nil {
		t.Fatal(err)
	}
	after, err := w.MemoryBytes()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resident memory: %d MiB before, %d MiB after allocating 64 MiB", before>>20, after>>20)
	if after-before < 60<<20 {
		t.Fatalf("MemoryBytes grew by %d bytes, want about 64 MiB", after-before)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"stdout: raw line on fd 1", "stderr: raw line on fd 2"} {
		if !log.has(want) {
			t.Fatalf("log lacks %q; have %v", want, log.got)
		}
	}
	if _, err := w.MemoryBytes(); err == nil {
		t.Fatal("MemoryBytes of a closed worker: got nil error")
	}
}

// TestFrameCap: a request or a result above Config.MaxFrame fails with a
// typed error, and the worker stays usable.
func TestFrameCap(t *testing.T) {
	dir := t.TempDir()
	src := "import snakepit\n@snakepit.command\ndef big(n):\n    return b'x' * n\n@snakepit.command\ndef echo(data):\n    return len(data)\n"
	if err := os.WriteFile(filepath.Join(dir, "cap_adapter.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{Module: "cap_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t), MaxFrame: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(context.Background())
	ctx := context.Background()
	args, _ := pymarshal.Marshal(map[string]any{"data": make([]byte, 2<<20)})
	if _, err := w.Call(ctx, &worker.Request{Command: "echo", Args: args}); !errors.Is(err, worker.ErrNotSerializable) || !strings.Contains(err.Error(), "frame limit") {
		t.Fatalf("oversized request: got %v", err)
	}
	args, _ = pymarshal.Marshal(map[string]any{"n": 2 << 20})
	if _, err := w.Call(ctx, &worker.Request{Command: "big", Args: args}); !errors.Is(err, worker.ErrNotSerializable) || !strings.Contains(err.Error(), "frame limit") {
		t.Fatalf("oversized result: got %v", err)
	}
	args, _ = pymarshal.Marshal(map[string]any{"data": []byte("ok")})
	resp, err := w.Call(ctx, &worker.Request{Command: "echo", Args: args})
	if err != nil {
		t.Fatalf("after the oversized frames: %v", err)
	}
	if v, _ := pymarshal.Decode(resp.Result); v != int64(2) {
		t.Fatalf("got %v", v)
	}
}
