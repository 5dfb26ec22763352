// Package workertest helps test code that uses workers: a conformance suite
// every [worker.Worker] implementation must pass, and [Fake], a scripted
// worker for testing pools and other code without Python.
package workertest

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/internal/valuetest"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

//go:embed snakepit_conformance.py
var conformanceAdapter []byte

//go:embed broken_import.py
var brokenImportAdapter []byte

//go:embed broken_setup.py
var brokenSetupAdapter []byte

// Options is what the suite asks a factory for.
type Options struct {
	// Module is the adapter module to import; Paths the directories to put
	// on sys.path for it.
	Module string
	Paths  []string
	// Logger must receive the worker's log records.
	Logger *slog.Logger
	// InterruptGrace is the grace period for stopping an interrupted handler.
	InterruptGrace time.Duration
	// Env holds environment variables the adapter reads at import (the
	// process profile passes them to the child; the thread profile finds
	// them in the process environment, which the suite sets).
	Env map[string]string
	// Host holds the Go functions handlers may call (ctx.host).
	Host worker.Host
	// Concurrency is the worker's slots (see worker.Worker); zero: one.
	Concurrency int
}

// Factory starts a worker of the implementation under test.
type Factory func(ctx context.Context, opts Options) (worker.Worker, error)

// Run runs the conformance suite against the workers factory starts. Every
// worker implementation must pass it on every supported Python.
func Run(t *testing.T, factory Factory) {
	dir := t.TempDir()
	for name, src := range map[string][]byte{
		"snakepit_conformance.py": conformanceAdapter,
		"broken_import.py":        brokenImportAdapter,
		"broken_setup.py":         brokenSetupAdapter,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	marker := filepath.Join(dir, "teardown-marker")
	t.Setenv("SNAKEPIT_CONFORMANCE_TEARDOWN", marker)
	logs := &recorder{}
	ctx := context.Background()
	probe := newHostProbe()
	hostSet := probe.set()
	startHost := func(t *testing.T, module string, grace time.Duration, h worker.Host) worker.Worker {
		t.Helper()
		w, err := factory(ctx, Options{
			Module: module, Paths: []string{dir}, Logger: slog.New(logs), InterruptGrace: grace,
			Env:  map[string]string{"SNAKEPIT_CONFORMANCE_TEARDOWN": marker},
			Host: h,
		})
		if err != nil {
			t.Fatalf("start worker for %s: %v", module, err)
		}
		return w
	}
	start := func(t *testing.T, module string, grace time.Duration) worker.Worker {
		t.Helper()
		return startHost(t, module, grace, hostSet)
	}
	// A generous grace: an interrupted handler must stop well within it even
	// on a loaded machine, or DeadlineInterrupt would see the worker die.
	w := start(t, "snakepit_conformance", 3*time.Second)
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = w.Close(ctx)
		}
	})
	s := &suite{w: w, logs: logs}

	t.Run("Setup", s.testSetup)
	t.Run("Values", s.testValues)
	t.Run("Exceptions", s.testExceptions)
	t.Run("UnknownCommand", s.testUnknownCommand)
	t.Run("BadArguments", s.testBadArguments)
	t.Run("NotSerializable", s.testNotSerializable)
	t.Run("Context", s.testContext)
	t.Run("Sessions", s.testSessions)
	t.Run("Async", s.testAsync)
	t.Run("Streaming", s.testStreaming)
	t.Run("Logging", s.testLogging)
	t.Run("DeadlineInterrupt", s.testDeadlineInterrupt)
	t.Run("CleanUpNotInterrupted", s.testCleanUpNotInterrupted)
	t.Run("OtherContextHoldsNothing", s.testOtherContextHoldsNothing)
	t.Run("Buffers", s.testBuffers)
	t.Run("Host", func(t *testing.T) {
		s.testHost(t, probe, func(t *testing.T, h worker.Host) worker.Worker {
			return startHost(t, "snakepit_conformance", 3*time.Second, h)
		})
	})

	t.Run("Concurrency", func(t *testing.T) {
		cw, err := factory(ctx, Options{
			Module: "snakepit_conformance", Paths: []string{dir}, Logger: slog.New(logs), InterruptGrace: 3 * time.Second,
			Env: map[string]string{"SNAKEPIT_CONFORMANCE_TEARDOWN": marker}, Host: hostSet, Concurrency: 8,
		})
		if err != nil {
			t.Fatalf("start a worker with 8 slots: %v", err)
		}
		defer cw.Close(ctx)
		cs := &suite{w: cw, logs: logs}
		testConcurrency(t, cs)
		t.Run("CleanUpNotInterrupted", cs.testCleanUpNotInterrupted)
		t.Run("DeathFailsInFlight", func(t *testing.T) {
			dw, err := factory(ctx, Options{
				Module: "snakepit_conformance", Paths: []string{dir}, Logger: slog.New(logs), InterruptGrace: 300 * time.Millisecond,
				Env: map[string]string{"SNAKEPIT_CONFORMANCE_TEARDOWN": marker}, Concurrency: 4,
			})
			if err != nil {
				t.Fatal(err)
			}
			testDeathInFlight(t, dw)
		})
	})

	t.Run("ReplyAsContextEnds", func(t *testing.T) {
		// The context ends after the reply is in but before Call returns
		// (the logger, which the reply's records reach first, cancels it):
		// the call ends with its context, whatever the handler returned.
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cw, err := factory(ctx, Options{
			Module: "snakepit_conformance", Paths: []string{dir}, InterruptGrace: 3 * time.Second,
			Env:    map[string]string{"SNAKEPIT_CONFORMANCE_TEARDOWN": marker},
			Logger: slog.New(&cancelOn{msg: "end this call", cancel: cancel}),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer cw.Close(ctx)
		_, err = cw.Call(cctx, req("log_and_return", map[string]any{"msg": "end this call"}))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if _, err := cw.Call(ctx, req("echo", map[string]any{"value": 1})); err != nil {
			t.Fatalf("the next call: %v", err)
		}
	})

	t.Run("Teardown", func(t *testing.T) {
		// A stream left open does not keep Close waiting.
		st, err := w.Stream(ctx, req("count", map[string]any{"n": 1000}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Next(ctx); err != nil {
			t.Fatal(err)
		}
		closeErr := make(chan error, 1)
		go func() { closeErr <- w.Close(ctx) }()
		select {
		case err := <-closeErr:
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Close with an open stream did not return")
		}
		closed = true
		if err := w.Close(ctx); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		select {
		case <-w.Done():
		default:
			t.Fatal("Done not closed after Close")
		}
		if b, err := os.ReadFile(marker); err != nil || string(b) != "teardown ran" {
			t.Fatalf("teardown did not run: %q, %v", b, err)
		}
		if _, err := w.Call(ctx, req("echo", map[string]any{"value": 1})); !errors.Is(err, worker.ErrClosed) {
			t.Fatalf("call after Close: got %v, want ErrClosed", err)
		}
	})

	t.Run("StuckInC", func(t *testing.T) {
		w := start(t, "snakepit_conformance", 300*time.Millisecond)
		defer w.Close(ctx)
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err := w.Call(cctx, req("block_in_c", map[string]any{"seconds": 3}))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		select {
		case <-w.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("a worker stuck past its grace period did not declare itself dead")
		}
		if err := w.Err(); !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("Err: got %v, want ErrWorkerDead", err)
		}
		if _, err := w.Call(ctx, req("echo", map[string]any{"value": 1})); !errors.Is(err, worker.ErrWorkerDead) {
			t.Fatalf("call on a dead worker: got %v, want ErrWorkerDead", err)
		}
		// Once the blocked call returns, Close reclaims everything.
		closeCtx, cancel2 := context.WithTimeout(ctx, 30*time.Second)
		defer cancel2()
		_ = w.Close(closeCtx)
	})

	t.Run("SetupFailures", func(t *testing.T) {
		for _, tc := range []struct{ module, want string }{
			{"broken_import", "this adapter is broken on purpose"},
			{"broken_setup", "setup failed on purpose"},
			{"no_such_adapter_module", "no_such_adapter_module"},
		} {
			w, err := factory(ctx, Options{Module: tc.module, Paths: []string{dir}, Logger: slog.New(logs)})
			if err == nil {
				w.Close(ctx)
				t.Fatalf("%s: started, want a setup error", tc.module)
			}
			if !errors.Is(err, worker.ErrSetup) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%s: got %v, want ErrSetup mentioning %q", tc.module, err, tc.want)
			}
		}
	})
}

type suite struct {
	w    worker.Worker
	logs *recorder
}

var ctxBG = context.Background()

func req(command string, args any) *worker.Request {
	r := &worker.Request{Command: command, CorrelationID: "conformance-" + command}
	if args != nil {
		b, err := pymarshal.Marshal(args)
		if err != nil {
			panic(err)
		}
		r.Args = b
	}
	return r
}

func (s *suite) call(t *testing.T, r *worker.Request) (any, error) {
	t.Helper()
	resp, err := s.w.Call(ctxBG, r)
	if err != nil {
		return nil, err
	}
	v, err := pymarshal.Decode(resp.Result)
	if err != nil {
		return nil, &worker.NotSerializableError{What: "result", Detail: err.Error(), Err: err}
	}
	return v, nil
}

func (s *suite) mustCall(t *testing.T, r *worker.Request) any {
	t.Helper()
	v, err := s.call(t, r)
	if err != nil {
		t.Fatalf("%s: %v", r.Command, err)
	}
	return v
}

func (s *suite) testSetup(t *testing.T) {
	if v := s.mustCall(t, req("setup_ran", nil)); v != true {
		t.Fatalf("setup() did not run before the first call: got %v", v)
	}
	if v := s.mustCall(t, req("renamed", nil)); v != "renamed" {
		t.Fatalf("renamed command: got %v", v)
	}
}

func (s *suite) testValues(t *testing.T) {
	cases := []struct {
		name   string
		in     any
		want   any
		pyType string
	}{
		{"none", nil, nil, "NoneType"},
		{"bool", true, true, "bool"},
		{"int", int64(-42), int64(-42), "int"},
		{"int64 max", int64(math.MaxInt64), int64(math.MaxInt64), "int"},
		{"int64 min", int64(math.MinInt64), int64(math.MinInt64), "int"},
		{"float", 2.5, 2.5, "float"},
		{"inf", math.Inf(-1), math.Inf(-1), "float"},
		{"nan", math.NaN(), math.NaN(), "float"},
		{"str", "héllo ✓", "héllo ✓", "str"},
		{"bytes", []byte{0, 255, 10}, []byte{0, 255, 10}, "bytes"},
		{"list", []any{int64(1), "a", nil}, []any{int64(1), "a", nil}, "list"},
		{"tuple", pymarshal.Tuple{int64(1), int64(2)}, []any{int64(1), int64(2)}, "tuple"},
		{"dict", map[string]any{"k": []any{map[string]any{"x": 1.5}}}, map[string]any{"k": []any{map[string]any{"x": 1.5}}}, "dict"},
		{"large bytes", make([]byte, 1<<20), make([]byte, 1<<20), "bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := s.mustCall(t, req("echo", map[string]any{"value": tc.in}))
			if !valuetest.Equal(got, tc.want) {
				t.Fatalf("echo: got %.200v, want %.200v", got, tc.want)
			}
			if typ := s.mustCall(t, req("type_of", map[string]any{"value": tc.in})); typ != tc.pyType {
				t.Fatalf("type in Python: got %v, want %s", typ, tc.pyType)
			}
		})
	}
	t.Run("int beyond int64", func(t *testing.T) {
		r := req("echo", nil)
		r.Args = []byte("{\xfa\x05value" + "l\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10" + "0")
		_, err := s.call(t, r)
		if !errors.Is(err, worker.ErrNotSerializable) || !errors.Is(err, pymarshal.ErrIntRange) {
			t.Fatalf("got %v, want a NotSerializableError for 2**64", err)
		}
	})
}

func (s *suite) testExceptions(t *testing.T) {
	_, err := s.call(t, req("fail", map[string]any{"message": "it broke"}))
	var pe *worker.PythonError
	if !errors.As(err, &pe) || !errors.Is(err, worker.ErrPython) {
		t.Fatalf("got %v, want a *worker.PythonError", err)
	}
	if pe.Type != "ValueError" || pe.Message != "it broke" {
		t.Fatalf("got %s: %q, want ValueError: it broke", pe.Type, pe.Message)
	}
	for _, want := range []string{"Traceback (most recent call last)", "in inner", "ValueError: it broke"} {
		if !strings.Contains(pe.Traceback, want) {
			t.Fatalf("traceback lacks %q:\n%s", want, pe.Traceback)
		}
	}
	var ce *worker.CallError
	if !errors.As(err, &ce) || ce.CorrelationID != "conformance-fail" || !strings.Contains(err.Error(), "conformance-fail") {
		t.Fatalf("error %v does not carry the correlation id", err)
	}
	_, err = s.call(t, req("exit_handler", nil))
	if !errors.As(err, &pe) || pe.Type != "SystemExit" {
		t.Fatalf("SystemExit: got %v, want a PythonError", err)
	}
	if v := s.mustCall(t, req("echo", map[string]any{"value": "alive"})); v != "alive" {
		t.Fatalf("after SystemExit: got %v", v)
	}
}

func (s *suite) testUnknownCommand(t *testing.T) {
	_, err := s.call(t, req("no_such_command", nil))
	var nf *worker.CommandNotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, worker.ErrCommandNotFound) {
		t.Fatalf("got %v, want a CommandNotFoundError", err)
	}
	if nf.Command != "no_such_command" || !contains(nf.Available, "echo") || contains(nf.Available, "some_function_name") {
		t.Fatalf("got command %q, available %v", nf.Command, nf.Available)
	}
}

func (s *suite) testBadArguments(t *testing.T) {
	for _, args := range []any{nil, map[string]any{"value": 1, "extra": 2}} {
		_, err := s.call(t, req("echo", args))
		if !errors.Is(err, worker.ErrBadArguments) {
			t.Fatalf("echo(%v): got %v, want ErrBadArguments", args, err)
		}
	}
	r := req("echo", nil)
	r.Args = []byte("N")
	if _, err := s.call(t, r); !errors.Is(err, worker.ErrNotSerializable) {
		t.Fatalf("Args not a dict: got %v, want ErrNotSerializable", err)
	}
}

func (s *suite) testNotSerializable(t *testing.T) {
	_, err := s.call(t, req("not_serialisable", nil))
	var ns *worker.NotSerializableError
	if !errors.As(err, &ns) || !strings.Contains(ns.Detail, "['bad']: object") {
		t.Fatalf("got %v, want a NotSerializableError naming ['bad']: object", err)
	}
}

func (s *suite) testContext(t *testing.T) {
	r := req("context", nil)
	r.CorrelationID = "cid-123"
	r.SessionID = "sess-1"
	r.Attachments = [][]byte{[]byte("one"), {}}
	r.Deadline = time.Now().Add(time.Minute)
	v := s.mustCall(t, r).(map[string]any)
	want := map[string]any{
		"correlation_id": "cid-123", "session_id": "sess-1", "command": "context",
		"has_deadline": true, "attachments": []any{[]byte("one"), []byte{}}, "worker_id": s.w.ID(),
	}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("got %v, want %v", v, want)
	}
	v = s.mustCall(t, req("context", nil)).(map[string]any)
	if v["session_id"] != nil || v["has_deadline"] != false {
		t.Fatalf("no session, no deadline: got %v", v)
	}
}

func (s *suite) testSessions(t *testing.T) {
	call := func(sid, cmd string, args map[string]any) any {
		r := req(cmd, args)
		r.SessionID = sid
		return s.mustCall(t, r)
	}
	call("a", "remember", map[string]any{"key": "k", "value": "va"})
	call("b", "remember", map[string]any{"key": "k", "value": "vb"})
	if v := call("a", "recall", map[string]any{"key": "k"}); v != "va" {
		t.Fatalf("session a: got %v", v)
	}
	if v := call("b", "recall", map[string]any{"key": "k"}); v != "vb" {
		t.Fatalf("session b: got %v", v)
	}
	ender, ok := s.w.(worker.SessionEnder)
	if !ok {
		t.Fatal("worker does not implement worker.SessionEnder")
	}
	if err := ender.EndSession(ctxBG, "a"); err != nil {
		t.Fatal(err)
	}
	if v := call("a", "recall", map[string]any{"key": "k"}); v != nil {
		t.Fatalf("ended session a: got %v, want its state dropped", v)
	}
	if v := call("b", "recall", map[string]any{"key": "k"}); v != "vb" {
		t.Fatalf("session b after a ended: got %v", v)
	}
	_, err := s.call(t, req("recall", map[string]any{"key": "k"}))
	if !errors.Is(err, worker.ErrPython) || !strings.Contains(err.Error(), "no session") {
		t.Fatalf("session state without a session: got %v", err)
	}
}

func (s *suite) testAsync(t *testing.T) {
	if v := s.mustCall(t, req("async_double", map[string]any{"x": 21})); v != int64(42) {
		t.Fatalf("async_double: got %v", v)
	}
	got := s.collect(t, req("async_count", map[string]any{"n": 3}))
	if !reflect.DeepEqual(got, []any{int64(0), int64(10), int64(20)}) {
		t.Fatalf("async_count: got %v", got)
	}
}

func (s *suite) collect(t *testing.T, r *worker.Request) []any {
	t.Helper()
	st, err := s.w.Stream(ctxBG, r)
	if err != nil {
		t.Fatalf("Stream %s: %v", r.Command, err)
	}
	defer st.Close()
	var out []any
	for {
		b, err := st.Next(ctxBG)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		v, err := pymarshal.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
}

func (s *suite) testStreaming(t *testing.T) {
	s.mustCall(t, req("events", nil))
	got := s.collect(t, req("count", map[string]any{"n": 4}))
	if !reflect.DeepEqual(got, []any{int64(0), int64(1), int64(2), int64(3)}) {
		t.Fatalf("count: got %v", got)
	}
	t.Run("early close", func(t *testing.T) {
		s.mustCall(t, req("events", nil))
		st, err := s.w.Stream(ctxBG, req("count", map[string]any{"n": 1000000}))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			b, err := st.Next(ctxBG)
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := pymarshal.Decode(b); v != int64(i) {
				t.Fatalf("chunk %d: got %v", i, v)
			}
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Next(ctxBG); err != io.EOF {
			t.Fatalf("Next after Close: got %v, want io.EOF", err)
		}
		if ev := s.mustCall(t, req("events", nil)); !reflect.DeepEqual(ev, []any{"count finally"}) {
			t.Fatalf("the generator was not closed: events %v", ev)
		}
	})
	t.Run("next with an ended context", func(t *testing.T) {
		s.mustCall(t, req("events", nil))
		st, err := s.w.Stream(ctxBG, req("count", map[string]any{"n": 1000000}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Next(ctxBG); err != nil {
			t.Fatal(err)
		}
		ended, cancel := context.WithCancel(ctxBG)
		cancel()
		if _, err := st.Next(ended); !errors.Is(err, context.Canceled) {
			t.Fatalf("Next with an ended context: got %v, want context.Canceled", err)
		}
		if _, err := st.Next(ctxBG); err != io.EOF {
			t.Fatalf("Next after that: got %v, want io.EOF", err)
		}
		if ev := s.mustCall(t, req("events", nil)); !reflect.DeepEqual(ev, []any{"count finally"}) {
			t.Fatalf("the generator was not closed: events %v", ev)
		}
		// The worker streams again.
		if got := s.collect(t, req("count", map[string]any{"n": 2})); len(got) != 2 {
			t.Fatalf("stream after: got %v", got)
		}
	})
	t.Run("error mid-stream", func(t *testing.T) {
		st, err := s.w.Stream(ctxBG, req("fail_midstream", nil))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Next(ctxBG); err != nil {
			t.Fatal(err)
		}
		_, err = st.Next(ctxBG)
		var pe *worker.PythonError
		if !errors.As(err, &pe) || pe.Message != "midstream" {
			t.Fatalf("got %v, want the generator's RuntimeError", err)
		}
		if _, err := st.Next(ctxBG); err != io.EOF {
			t.Fatalf("after the error: got %v, want io.EOF", err)
		}
	})
	t.Run("kind mismatch", func(t *testing.T) {
		if _, err := s.call(t, req("count", map[string]any{"n": 2})); !errors.Is(err, worker.ErrStreamMismatch) {
			t.Fatalf("Call of a streaming command: got %v", err)
		}
		if _, err := s.w.Stream(ctxBG, req("echo", map[string]any{"value": 1})); !errors.Is(err, worker.ErrStreamMismatch) {
			t.Fatalf("Stream of a unary command: got %v", err)
		}
		if v := s.mustCall(t, req("echo", map[string]any{"value": 1})); v != int64(1) {
			t.Fatalf("after mismatches: got %v", v)
		}
	})
}

func (s *suite) testLogging(t *testing.T) {
	r := req("log_things", nil)
	r.CorrelationID = "log-cid"
	s.mustCall(t, r)
	for _, want := range []struct{ msg, logger string }{
		{"info from log_things", "snakepit.adapter.snakepit_conformance"},
		{"warning from another logger", "conformance.other"},
		{"printed by the handler", ""},
	} {
		rec, ok := s.logs.find(want.msg)
		if !ok {
			t.Fatalf("no log record %q; have %v", want.msg, s.logs.messages())
		}
		if rec.attrs["worker"] != s.w.ID() || rec.attrs["command"] != "log_things" || rec.attrs["correlation_id"] != "log-cid" {
			t.Fatalf("record %q: attrs %v lack worker/command/correlation id", want.msg, rec.attrs)
		}
		if want.logger != "" && rec.attrs["logger"] != want.logger {
			t.Fatalf("record %q: logger %v, want %s", want.msg, rec.attrs["logger"], want.logger)
		}
	}
}

func (s *suite) testDeadlineInterrupt(t *testing.T) {
	s.mustCall(t, req("events", nil))
	cctx, cancel := context.WithTimeout(ctxBG, 100*time.Millisecond)
	defer cancel()
	_, err := s.w.Call(cctx, req("spin", nil))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	// The interrupted worker serves the next call (which waits, if needed,
	// for the interrupt to land).
	if v := s.mustCall(t, req("echo", map[string]any{"value": "after"})); v != "after" {
		t.Fatalf("after the interrupt: got %v", v)
	}
	if ev := s.mustCall(t, req("events", nil)); !reflect.DeepEqual(ev, []any{"spin interrupted"}) {
		t.Fatalf("events: got %v, want the loop's finally to have run", ev)
	}
	select {
	case <-s.w.Done():
		t.Fatalf("worker stopped after an interruptible overrun: %v", s.w.Err())
	default:
	}
	// Cancellation (not a deadline) interrupts the same way.
	cctx2, cancel2 := context.WithCancel(ctxBG)
	time.AfterFunc(50*time.Millisecond, cancel2)
	if _, err := s.w.Call(cctx2, req("spin", nil)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: got %v, want context.Canceled", err)
	}
	// Request.Deadline works like a context deadline.
	r := req("spin", nil)
	r.Deadline = time.Now().Add(50 * time.Millisecond)
	if _, err := s.w.Call(ctxBG, r); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request.Deadline: got %v, want DeadlineExceeded", err)
	}
	if v := s.mustCall(t, req("echo", map[string]any{"value": 2})); v != int64(2) {
		t.Fatalf("after the interrupts: got %v", v)
	}
	// A context that ended before the call: the handler never runs and
	// the worker stays as it was.
	ended, cancel3 := context.WithCancel(ctxBG)
	cancel3()
	s.mustCall(t, req("events", nil))
	if _, err := s.w.Call(ended, req("spin", nil)); !errors.Is(err, context.Canceled) {
		t.Fatalf("ended context: got %v, want context.Canceled", err)
	}
	past := req("spin", nil)
	past.Deadline = time.Now().Add(-time.Second)
	if _, err := s.w.Call(ctxBG, past); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("past Request.Deadline: got %v, want DeadlineExceeded", err)
	}
	// A deadline Python sees as passed before the host's timer fired is a
	// deadline like any other.
	late, cancel4 := lateDeadline(time.Now().Add(-time.Second))
	defer cancel4()
	if _, err := s.w.Call(late, req("spin", nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline passed, timer not fired: got %v, want DeadlineExceeded", err)
	}
	if v := s.mustCall(t, req("echo", map[string]any{"value": 3})); v != int64(3) {
		t.Fatalf("after calls with ended contexts: got %v", v)
	}
	if ev := s.mustCall(t, req("events", nil)); len(ev.([]any)) != 0 {
		t.Fatalf("events: got %v, want no handler to have run", ev)
	}
	select {
	case <-s.w.Done():
		t.Fatalf("worker stopped after calls with ended contexts: %v", s.w.Err())
	default:
	}
}

// testCleanUpNotInterrupted: a handler that polls ctx.cancelled() and then
// cleans up is not interrupted in its clean-up, nor are its clean-up's
// sleeps cut short, whether its call ends by deadline or by cancel: the
// handler is either interrupted while it polls (before it saw the
// cancellation) or cleans up in full. A call whose deadline Python sees
// 50 ms before the host ends it (in the clean-up's sleep) must clean up in
// full at least once.
func (s *suite) testCleanUpNotInterrupted(t *testing.T) {
	s.mustCall(t, req("events", nil)) // clear
	early := 0
	for i := range 9 {
		var cctx context.Context
		var cancel context.CancelFunc
		want := context.DeadlineExceeded
		switch i % 3 {
		case 0: // Python sees the deadline first
			base, c := context.WithTimeout(ctxBG, 100*time.Millisecond)
			cctx, cancel = lateCtx{base, time.Now().Add(50 * time.Millisecond)}, c
		case 1:
			cctx, cancel = context.WithTimeout(ctxBG, 50*time.Millisecond)
		default:
			cctx, cancel = context.WithCancel(ctxBG)
			time.AfterFunc(50*time.Millisecond, cancel)
			want = context.Canceled
		}
		_, err := s.w.Call(cctx, req("poll_then_clean", nil))
		cancel()
		if !errors.Is(err, want) {
			t.Fatalf("call %d: got %v, want %v", i, err, want)
		}
		// Waits, on a worker of one slot, for the handler to end.
		if v := s.mustCall(t, req("echo", map[string]any{"value": i})); v != int64(i) {
			t.Fatalf("after call %d: got %v", i, v)
		}
		// With several slots the handler may still be cleaning up. (Events
		// of other subtests' calls may come late: only poll_then_clean's
		// count.)
		var ev []any
		for deadline := time.Now().Add(10 * time.Second); len(ev) == 0 && time.Now().Before(deadline); {
			for _, e := range s.mustCall(t, req("events", nil)).([]any) {
				if name, _ := e.(string); strings.HasPrefix(name, "clean") || name == "poll interrupted" {
					ev = append(ev, e)
				}
			}
			if len(ev) == 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if len(ev) != 1 || (ev[0] != "cleaned up" && ev[0] != "poll interrupted") {
			t.Fatalf("call %d: events %v, want [cleaned up] or [poll interrupted]", i, ev)
		}
		if i%3 == 0 && ev[0] == "cleaned up" {
			early++
		}
	}
	if early == 0 {
		t.Fatal("no call whose deadline Python saw first cleaned up in full")
	}
	select {
	case <-s.w.Done():
		t.Fatalf("worker stopped: %v", s.w.Err())
	default:
	}
}

// testOtherContextHoldsNothing: a handler that polls the ctx of another,
// ended call (true: its deadline passed) is interrupted all the same: only
// its own ctx's cancelled() holds its interrupts.
func (s *suite) testOtherContextHoldsNothing(t *testing.T) {
	keep := req("keep_ctx", nil)
	keep.Deadline = time.Now().Add(time.Second)
	s.mustCall(t, keep)
	time.Sleep(time.Until(keep.Deadline))
	s.mustCall(t, req("events", nil)) // clear
	cctx, cancel := context.WithTimeout(ctxBG, 100*time.Millisecond)
	defer cancel()
	if _, err := s.w.Call(cctx, req("spin_polling_kept", nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if v := s.mustCall(t, req("echo", map[string]any{"value": "after"})); v != "after" {
		t.Fatalf("after the interrupt: got %v", v)
	}
	if ev := s.mustCall(t, req("events", nil)); !reflect.DeepEqual(ev, []any{"spin_polling_kept interrupted"}) {
		t.Fatalf("events: got %v, want the spin interrupted", ev)
	}
	select {
	case <-s.w.Done():
		t.Fatalf("worker stopped: %v", s.w.Err())
	default:
	}
}

// lateCtx reports deadline d, which has passed, while its Done channel
// stays open: a context whose timer has not fired yet.
type lateCtx struct {
	context.Context
	d time.Time
}

func (c lateCtx) Deadline() (time.Time, bool) { return c.d, true }

// lateDeadline returns a lateCtx with deadline d that ends (as a hang
// guard) ten seconds from now.
func lateDeadline(d time.Time) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctxBG, 10*time.Second)
	return lateCtx{ctx, d}, cancel
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// recorder is a slog.Handler that keeps records for inspection.
// cancelOn is a slog handler that calls cancel when it sees a record
// with message msg.
type cancelOn struct {
	msg    string
	cancel context.CancelFunc
}

func (c *cancelOn) Enabled(context.Context, slog.Level) bool { return true }
func (c *cancelOn) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *cancelOn) WithGroup(string) slog.Handler            { return c }
func (c *cancelOn) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message == c.msg {
		c.cancel()
	}
	return nil
}

type recorder struct {
	mu   sync.Mutex
	recs []record
}

type record struct {
	msg   string
	level slog.Level
	attrs map[string]any
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	attrs := map[string]any{}
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.Any()
		return true
	})
	r.mu.Lock()
	r.recs = append(r.recs, record{msg: rec.Message, level: rec.Level, attrs: attrs})
	r.mu.Unlock()
	return nil
}

func (r *recorder) find(msg string) (record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.msg == msg {
			return rec, true
		}
	}
	return record{}, false
}

func (r *recorder) messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.recs {
		out = append(out, rec.msg)
	}
	return out
}

// testBuffers: out-of-band payloads reach the handler as read-only
// memoryviews where their markers were; a large bytes-like result comes
// back whole; a view kept past the call is released, a slice of it stays
// readable (its memory stays valid); a marker that names no payload is a
// bad-arguments error.
func (s *suite) testBuffers(t *testing.T) {
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	marker := func(i int) pymarshal.Tuple { return pymarshal.Tuple{"\x00snakepit", "buf", i} }
	r := req("payload_info", map[string]any{"data": marker(0), "other": marker(0)})
	r.Buffers = [][]byte{big}
	got := s.mustCall(t, r).(map[string]any)
	want := map[string]any{"type": "memoryview", "len": int64(len(big)), "readonly": true,
		"head": big[:4], "sum": int64(sumBytes(big[:64])), "same": true}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("payload_info: got %v, want %v", got, want)
	}

	r = req("payload_echo", map[string]any{"data": marker(0)})
	r.Buffers = [][]byte{big}
	if v := s.mustCall(t, r); !bytes.Equal(v.([]byte), big) {
		t.Fatalf("payload_echo: got %d bytes, want the %d sent", len(v.([]byte)), len(big))
	}

	r = req("payload_keep", map[string]any{"data": marker(0)})
	r.Buffers = [][]byte{bytes.Clone(big[:16])}
	s.mustCall(t, r)
	got = s.mustCall(t, req("payload_kept", nil)).(map[string]any)
	if !bytes.Equal(got["slice"].([]byte), big[1:5]) || got["view"] != "released" {
		t.Fatalf("payload_kept: got %v, want slice %v and a released view", got, big[1:5])
	}

	r = req("payload_info", map[string]any{"data": marker(1)})
	r.Buffers = [][]byte{big}
	if _, err := s.call(t, r); !errors.Is(err, worker.ErrBadArguments) {
		t.Fatalf("marker past the payloads: got %v, want ErrBadArguments", err)
	}
}

func sumBytes(b []byte) int {
	n := 0
	for _, c := range b {
		n += int(c)
	}
	return n
}
