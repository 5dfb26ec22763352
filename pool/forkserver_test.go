package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	require.NoError(t, os.WriteFile(filepath.Join(dir, "forkpool_adapter.py"), []byte(forkPoolAdapter), 0o644))
	return dir
}

type whoami struct {
	PID, PPID, Minor int
}

// procStat returns process pid's /proc/<pid>/stat, or false once it is
// gone.
func procStat(pid int) (procfs.ProcStat, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStat{}, false
	}
	st, err := p.Stat()
	return st, err == nil
}

// processAlive reports whether process pid exists and is not a zombie.
func processAlive(pid int) bool {
	st, ok := procStat(pid)
	return ok && st.State != "Z"
}

// parentOf returns process pid's parent, or 0 once it is gone.
func parentOf(pid int) int {
	st, _ := procStat(pid)
	return st.PPID
}

// waitProcessesGone waits up to 10 s for each of pids to end.
func waitProcessesGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		require.Eventually(t, func() bool { return !processAlive(pid) }, 10*time.Second, 10*time.Millisecond, "process %d still alive", pid)
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
	require.NoError(t, err)
	defer p.Close(ctx)
	pids := map[int]bool{}
	template := 0
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; p.Stats().Recycled < 2; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no recycling after %d calls: %+v", i, p.Stats())
		}
		var w whoami
		require.NoError(t, p.Call(ctx, "whoami", nil, &w), "call %d", i)
		if template == 0 {
			template = w.PPID
		}
		require.NotEqual(t, os.Getpid(), w.PPID, "worker %d's parent: want the template, not the host", w.PID)
		require.Equal(t, template, w.PPID, "worker %d's parent: want the template", w.PID)
		pids[w.PID] = true
	}

	// The template dies; a worker dies: its replacement comes from a new
	// template.
	require.NoError(t, unix.Kill(template, unix.SIGKILL))
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
		require.NoError(t, p.Call(ctx, "whoami", nil, &next))
		pids[next.PID] = true
	}
	require.NotEqual(t, os.Getpid(), next.PPID, "replacement worker %d started by the host, want a new template", next.PID)
	require.NoError(t, p.Close(ctx))
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
		_, err := pool.New(ctx, cfg)
		if assert.ErrorAs(t, err, &ce, "New(%+v)", cfg) {
			assert.ErrorContains(t, err, "ForkServer", "New(%+v): want a ConfigError naming ForkServer", cfg)
		}
	}
	_, err := pool.New(ctx, pool.Config{
		Profile: pool.Process, Module: "forkpool_adapter", Paths: []string{forkPoolDir(t)}, Size: 1,
		Env: []string{"START_A_THREAD=1"}, ForkServer: &pool.ForkServerOptions{ImportAdapter: true},
	})
	require.ErrorIs(t, err, subproc.ErrForkUnsafe, "New with a threaded template")
}

// TestForkServerShared: pools fork from a fork server the program started
// and owns (ForkServerOptions.Server): one after the other, they use it
// and leave it running; one for another module is refused; once it has
// stopped, a pool's start fails clearly.
func TestForkServerShared(t *testing.T) {
	ctx := context.Background()
	dir := forkPoolDir(t)
	fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{Module: "forkpool_adapter", ImportAdapter: true, Paths: []string{dir}})
	require.NoError(t, err)
	defer fs.Close(ctx)
	cfg := pool.Config{Profile: pool.Process, Module: "forkpool_adapter", Paths: []string{dir}, Size: 2,
		ForkServer: &pool.ForkServerOptions{Server: fs}}
	for round := range 2 {
		p, err := pool.New(ctx, cfg)
		require.NoError(t, err, "round %d", round)
		var w whoami
		require.NoError(t, p.Call(ctx, "whoami", nil, &w))
		require.Equal(t, fs.PID(), w.PPID, "round %d: the worker's parent, want the shared template", round)
		require.NoError(t, p.Close(ctx))
		require.True(t, processAlive(fs.PID()), "round %d: the pool's Close stopped the program's fork server", round)
		waitProcessesGone(t, []int{w.PID})
	}
	other := cfg
	other.Module = "other_adapter"
	var ce *pool.ConfigError
	_, err = pool.New(ctx, other)
	require.ErrorAs(t, err, &ce, "a fork server of another module")
	require.ErrorContains(t, err, "forkpool_adapter", "a fork server of another module: want a ConfigError naming its module")
	require.NoError(t, fs.Close(ctx))
	_, err = pool.New(ctx, cfg)
	require.ErrorIs(t, err, subproc.ErrForkServerDead, "a stopped fork server")
}
