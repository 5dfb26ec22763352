package embed_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/embed"
)

// TestCloseWithRunningThread: Close returns at its ctx's end while a
// non-daemon Python thread runs (the interpreter ends in the background
// once it finishes), and creating another interpreter meanwhile is not
// held up by the ending one.
func TestCloseWithRunningThread(t *testing.T) {
	r := testRuntime(t)
	base := r.Interpreters()
	in, err := r.NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	gate := filepath.Join(t.TempDir(), "gate")
	release := func() { os.WriteFile(gate, nil, 0o644) }
	defer release()
	mustExec(t, in, `import os, threading, time
def _wait():
    for _ in range(6000):
        if os.path.exists(r'`+gate+`'):
            return
        time.sleep(0.01)
threading.Thread(target=_wait).start()
`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- in.Close(ctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second): // hang guard
		release()
		<-closed
		t.Fatal("Close did not return at its ctx's end")
	}
	// The ending interpreter must not block the creation of another.
	created := make(chan error, 1)
	go func() {
		other, err := r.NewInterpreter(embed.InterpreterConfig{})
		if err == nil {
			err = other.Close(context.Background())
		}
		created <- err
	}()
	select {
	case err := <-created:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // hang guard
		release()
		<-created
		t.Fatal("NewInterpreter blocked while another interpreter was ending")
	}
	release()
	if err := in.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := r.Interpreters(); got != base {
		t.Fatalf("got %d interpreters, want %d", got, base)
	}
}
