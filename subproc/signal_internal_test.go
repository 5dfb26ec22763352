package subproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/worker"
)

// TestSignalsOnlyBeforeReap: every signal the host sends — the SIGUSR1s
// that interrupt a call, the group kills of a dying or closing worker —
// reaches a process that has not been reaped (a zombie at worst, whose pid
// and group id the kernel cannot hand on), never a pid that may name
// another process by then.
func TestSignalsOnlyBeforeReap(t *testing.T) {
	var mu sync.Mutex
	var sent, late []string
	signalHook = func(pid int, sig unix.Signal) {
		leader := max(pid, -pid)
		st, err := os.ReadFile("/proc/" + strconv.Itoa(leader) + "/stat")
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, fmt.Sprintf("%v to %d", sig, pid))
		if err != nil {
			late = append(late, fmt.Sprintf("%v to %d after its reap (%v)", sig, pid, err))
		} else if len(st) == 0 {
			late = append(late, fmt.Sprintf("%v to %d: empty stat", sig, pid))
		}
	}
	defer func() { signalHook = nil }()
	reg, _, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Module:         "unused",
		Command:        []string{os.Args[0], "-test.run=^TestFakeChild$", "--"},
		Env:            []string{"SNAKEPIT_TEST_FAKE_CHILD=script"},
		StartTimeout:   30 * time.Second,
		StopGrace:      time.Second,
		InterruptGrace: 200 * time.Millisecond,
		Registry:       reg,
	}
	for _, tc := range []struct {
		name, command string
		timeout       time.Duration
	}{
		{"child exits", `{"op":"exit"}`, 20 * time.Second},
		{"handler ignores the interrupt", `{"op":"hang"}`, 20 * time.Millisecond},
	} {
		w, err := Start(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
		_, err = w.Call(ctx, &worker.Request{Command: tc.command})
		cancel()
		if !errors.Is(err, worker.ErrWorkerDead) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: got %v, want ErrWorkerDead or DeadlineExceeded", tc.name, err)
		}
		select {
		case <-w.exited:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: the process was not reaped", tc.name)
		}
		w.Close(context.Background())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sent) == 0 {
		t.Fatalf("got no signals, want the interrupts and kills")
	}
	if len(late) > 0 {
		t.Fatalf("signals sent after the reap: got %v, want none (all: %v)", late, sent)
	}
}
