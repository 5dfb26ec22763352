package embed_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/worker"
)

// envHostGuardChild makes the test binary, re-executed, run the body of
// TestHostGuards: before the guards, what it tries ended or killed the
// process, which must fail the test rather than end the test binary.
const envHostGuardChild = "SNAKEPIT_TEST_HOSTGUARD_CHILD"

// TestHostGuards checks that Python code cannot act on the host process
// as a whole: os._exit and os.fork raise RuntimeError naming the process
// profile, and so do faulthandler and signal-mask changes, after which Go's
// own signal handling still works (a nil dereference is recovered). It runs
// in a child process; see hostGuardChild.
func TestHostGuards(t *testing.T) {
	if os.Getenv(envHostGuardChild) != "" {
		hostGuardChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostGuards$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envHostGuardChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHostGuards") {
		t.Fatalf("child: got %v, want success; output:\n%s", err, out)
	}
}

func hostGuardChild(t *testing.T) {
	rt := testRuntime(t)
	targets := map[string]*embed.Interpreter{
		"main":       rt.Main(),
		"own GIL":    newInterp(t, embed.InterpreterConfig{}),
		"shared GIL": newInterp(t, embed.InterpreterConfig{SharedGIL: true}),
	}
	ctx := context.Background()
	for name, in := range targets {
		for _, code := range []string{
			"import os; os._exit(3)",
			"import posix; posix._exit(3)",
			"import os; os.fork()",
			"import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGSEGV, signal.SIGURG})",
			"import signal; signal.siginterrupt(signal.SIGURG, True)",
			"import faulthandler; faulthandler.enable()",
			"import faulthandler, signal; faulthandler.register(signal.SIGUSR1)",
			"import multiprocessing as m; m.get_context('fork').Process(target=print).start()",
		} {
			err := in.Exec(ctx, code)
			if err == nil && strings.Contains(code, "faulthandler") {
				// Isolated sub-interpreters (3.12+) refuse to import it.
				continue
			}
			var pe *worker.PythonError
			if !errors.As(err, &pe) || (pe.Type != "RuntimeError" && pe.Type != "ImportError") {
				t.Errorf("%s: %s: got %v, want a RuntimeError", name, code, err)
				continue
			}
			if pe.Type == "RuntimeError" && !strings.Contains(pe.Message, "process profile") && !strings.Contains(pe.Message, "subinterpreter") {
				t.Errorf("%s: %s: got %q, want it to name the process profile", name, code, pe.Message)
			}
		}
		// Go's signal handlers are intact: a nil dereference panics and
		// is recovered.
		if !recoversNilDeref() {
			t.Fatalf("%s: nil dereference not recovered", name)
		}
	}
	// Threads started directly with _thread are never joined: refused in
	// every sub-interpreter.
	for _, cfg := range []embed.InterpreterConfig{{}, {SharedGIL: true}} {
		in := newInterp(t, cfg)
		err := in.Exec(ctx, "import _thread, time; _thread.start_new_thread(time.sleep, (30,))")
		var pe *worker.PythonError
		if !errors.As(err, &pe) || pe.Type != "RuntimeError" || !strings.Contains(pe.Message, "process profile") {
			t.Errorf("%+v: raw thread: got %v, want a RuntimeError naming the process profile", cfg, err)
		}
		// 3.13+: threading's own primitive, whose daemon flag only
		// threading checks.
		err = in.Exec(ctx, "import _thread, time\nif hasattr(_thread, 'start_joinable_thread'):\n    _thread.start_joinable_thread(lambda: time.sleep(30), daemon=True)\nelse:\n    raise RuntimeError('no start_joinable_thread before 3.13: process profile')")
		if !errors.As(err, &pe) || pe.Type != "RuntimeError" || !strings.Contains(pe.Message, "process profile") {
			t.Errorf("%+v: joinable daemon thread: got %v, want a RuntimeError naming the process profile", cfg, err)
		}
		// threading's non-daemon threads still work, also started from
		// a thread threading did not start (the default daemon is False).
		if err := in.Exec(ctx, "import threading; th = threading.Thread(target=len, args=((),)); th.start(); th.join(); assert not th.daemon"); err != nil {
			t.Errorf("%+v: threading.Thread: got %v, want nil", cfg, err)
		}
		mustExec(t, in, `
import threading
def start_thread():
    th = threading.Thread(target=len, args=((),))
    th.start()
    th.join()
    return th.daemon
`)
		f, err := in.Func(ctx, "__main__", "start_thread")
		if err != nil {
			t.Fatal(err)
		}
		out, err := in.CallOnThread(embed.NewCallID(), f, nil, nil, nil)
		if err != nil || string(out) != "F" {
			t.Errorf("%+v: threading.Thread on a caller's thread: got %q, %v, want a non-daemon thread", cfg, out, err)
		}
	}
	if pymatrix.InChild() || rt.Version().Minor < 12 {
		// 3.11: daemon threads are refused in sub-interpreters (one still
		// running when the interpreter ends aborts the process).
		in := newInterp(t, embed.InterpreterConfig{})
		for _, code := range []string{
			"import threading, time; threading.Thread(target=time.sleep, args=(30,), daemon=True).start()",
			"import _thread, time; _thread.start_new_thread(time.sleep, (30,))",
		} {
			err := in.Exec(ctx, code)
			var pe *worker.PythonError
			if !errors.As(err, &pe) || pe.Type != "RuntimeError" || !strings.Contains(pe.Message, "process profile") {
				t.Errorf("%s: got %v, want a RuntimeError naming the process profile", code, err)
			}
		}
		if err := in.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func recoversNilDeref() (ok bool) {
	defer func() { ok = recover() != nil }()
	var p *int
	return *p == 0
}
