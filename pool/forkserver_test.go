package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/subproc"
)

const forkPoolAdapter = `
import os
import sys
import threading
import time

import snakepit

if os.environ.get("START_A_THREAD"):
    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()


@snakepit.command
def whoami():
    return {"pid": os.getpid(), "ppid": os.getppid(), "minor": sys.version_info[1]}


@snakepit.command
def die():
    os._exit(1)
`

func forkPoolDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "forkpool_adapter.py"), []byte(forkPoolAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type whoami struct {
	PID, PPID, Minor int
}

func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && len(b) > i+2 && b[i+2] != 'Z'
}

func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func waitProcessesGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for processAlive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d still alive", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestForkServerPool: a process pool with a fork server forks every worker,
// recycled ones included, from one template; a template that dies is
// replaced at the next start; Close leaves no process.
func TestForkServerPool(t *testing.T) {
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{
		Profile: pool.Process, Module: "forkpool_adapter", Paths: []string{forkPoolDir(t)}, Size: 2, MaxCalls: 5,
		ForkServer: &pool.ForkServerOptions{ImportAdapter: true}, RestartBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	pids := map[int]bool{}
	template := 0
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; p.Stats().Recycled < 2; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no recycling after %d calls: %+v", i, p.Stats())
		}
		var w whoami
		if err := p.Call(ctx, "whoami", nil, &w); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if template == 0 {
			template = w.PPID
		}
		if w.PPID != template || w.PPID == os.Getpid() {
			t.Fatalf("worker %d's parent is %d, want the template %d (not the host %d)", w.PID, w.PPID, template, os.Getpid())
		}
		pids[w.PID] = true
	}

	// The template dies; a worker dies: its replacement comes from a new
	// template.
	if err := unix.Kill(template, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitProcessesGone(t, []int{template})
	_ = p.Call(ctx, "die", nil, nil)
	deadline = time.Now().Add(30 * time.Second)
	var next whoami
	// Workers forked by the dead template live on (their parent is now
	// another process): wait for one whose parent is a template of this
	// host.
	for next.PPID == 0 || next.PPID == template || parentOf(next.PPID) != os.Getpid() {
		if time.Now().After(deadline) {
			t.Fatalf("no worker forked by a new template after the old one died: %+v", p.Stats())
		}
		if err := p.Call(ctx, "whoami", nil, &next); err != nil {
			t.Fatal(err)
		}
		pids[next.PID] = true
	}
	if next.PPID == os.Getpid() {
		t.Fatalf("replacement worker %d started by the host, want a new template", next.PID)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	all := []int{next.PPID}
	for pid := range pids {
		all = append(all, pid)
	}
	waitProcessesGone(t, all)
}

// TestForkServerPoolConfig: the fork server needs the process profile,
// and a template whose imports start a thread fails New.
func TestForkServerPoolConfig(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []pool.Config{
		{Profile: pool.Thread, Module: "forkpool_adapter", ForkServer: &pool.ForkServerOptions{}},
		{Profile: pool.Process, NewWorker: newInstant, ForkServer: &pool.ForkServerOptions{}},
	} {
		var ce *pool.ConfigError
		if _, err := pool.New(ctx, cfg); !errors.As(err, &ce) || !strings.Contains(err.Error(), "ForkServer") {
			t.Errorf("New(%+v): got %v, want a ConfigError naming ForkServer", cfg, err)
		}
	}
	_, err := pool.New(ctx, pool.Config{
		Profile: pool.Process, Module: "forkpool_adapter", Paths: []string{forkPoolDir(t)}, Size: 1,
		Env: []string{"START_A_THREAD=1"}, ForkServer: &pool.ForkServerOptions{ImportAdapter: true},
	})
	if !errors.Is(err, subproc.ErrForkUnsafe) {
		t.Fatalf("New with a threaded template: got %v, want ErrForkUnsafe", err)
	}
}

// TestForkServerShared: pools fork from a fork server the program started
// and owns (ForkServerOptions.Server): one after the other, they use it
// and leave it running; one for another module is refused; once it has
// stopped, a pool's start fails clearly.
func TestForkServerShared(t *testing.T) {
	ctx := context.Background()
	dir := forkPoolDir(t)
	fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{Module: "forkpool_adapter", ImportAdapter: true, Paths: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close(ctx)
	cfg := pool.Config{Profile: pool.Process, Module: "forkpool_adapter", Paths: []string{dir}, Size: 2,
		ForkServer: &pool.ForkServerOptions{Server: fs}}
	for round := range 2 {
		p, err := pool.New(ctx, cfg)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		var w whoami
		if err := p.Call(ctx, "whoami", nil, &w); err != nil {
			t.Fatal(err)
		}
		if w.PPID != fs.PID() {
			t.Fatalf("round %d: worker's parent is %d, want the shared template %d", round, w.PPID, fs.PID())
		}
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if !processAlive(fs.PID()) {
			t.Fatalf("round %d: the pool's Close stopped the program's fork server", round)
		}
		waitProcessesGone(t, []int{w.PID})
	}
	other := cfg
	other.Module = "other_adapter"
	var ce *pool.ConfigError
	if _, err := pool.New(ctx, other); !errors.As(err, &ce) || !strings.Contains(err.Error(), "forkpool_adapter") {
		t.Fatalf("a fork server of another module: got %v, want a ConfigError naming its module", err)
	}
	if err := fs.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.New(ctx, cfg); !errors.Is(err, subproc.ErrForkServerDead) {
		t.Fatalf("a stopped fork server: got %v, want ErrForkServerDead", err)
	}
}
