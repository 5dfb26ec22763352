package pool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/pool"
)

const hygieneAdapter = `
import os
import snakepit

@snakepit.command
def environment():
    return dict(os.environ)

@snakepit.command
def ping():
    return "pong"
`

func hygieneDir(t *testing.T) string {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hygiene_adapter.py"), []byte(hygieneAdapter), 0o644))
	return dir
}

// socketInodes returns the inodes of the sockets process pid has open
// (none once it is gone).
func socketInodes(pid int) map[uint64]bool {
	out := map[uint64]bool{}
	p, err := procfs.NewProc(pid)
	if err != nil {
		return out
	}
	targets, _ := p.FileDescriptorTargets()
	for _, l := range targets {
		if inode, ok := strings.CutPrefix(l, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(inode, "]"), 10, 64); err == nil {
				out[n] = true
			}
		}
	}
	return out
}

// listening returns the sockets among inodes that listen (TCP or Unix),
// or that have a path (in the filesystem or abstract). A system without
// IPv6 has no /proc/net/tcp6.
func listening(t *testing.T, inodes map[uint64]bool) []string {
	t.Helper()
	fs, err := procfs.NewDefaultFS()
	require.NoError(t, err)
	var bad []string
	for _, tcp := range []struct {
		file string
		read func() (procfs.NetTCP, error)
	}{{"/proc/net/tcp", fs.NetTCP}, {"/proc/net/tcp6", fs.NetTCP6}} {
		lines, err := tcp.read()
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		require.NoError(t, err, tcp.file)
		for _, l := range lines {
			if inodes[l.Inode] && l.St == 0x0A { // TCP_LISTEN
				bad = append(bad, fmt.Sprintf("%s: inode %d", tcp.file, l.Inode))
			}
		}
	}
	unixSockets, err := fs.NetUNIX()
	require.NoError(t, err, "/proc/net/unix")
	for _, l := range unixSockets.Rows {
		if inodes[l.Inode] && (l.Flags&0x10000 != 0 || l.Path != "") { // __SO_ACCEPTCON, or a path
			bad = append(bad, fmt.Sprintf("/proc/net/unix: %+v", *l))
		}
	}
	return bad
}

// childPIDs returns the host's child processes (the kernel lists each
// thread's children in /proc/self/task/<tid>/children).
func childPIDs() []int {
	var out []int
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// TestNoListeningSockets: neither profile creates a listening socket or a
// socket with a filesystem path, in the host or in the workers.
func TestNoListeningSockets(t *testing.T) {
	ctx := context.Background()
	dir := hygieneDir(t)
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "hygiene_adapter", Paths: []string{dir}, Size: 2})
		require.NoError(t, err)
		defer p.Close(ctx)
		require.NoError(t, p.Call(ctx, "ping", nil, nil))
	}
	pids := append([]int{os.Getpid()}, childPIDs()...)
	require.GreaterOrEqual(t, len(pids), 3, "expected the process workers among the children, got %v", pids)
	for _, pid := range pids {
		require.Empty(t, listening(t, socketInodes(pid)), "process %d has listening or named sockets", pid)
	}
}

// TestChildEnvironment: a process worker sees only the explicit
// environment, not the host's secrets.
func TestChildEnvironment(t *testing.T) {
	t.Setenv("SNAKEPIT_TEST_SECRET", "hunter2")
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "hygiene_adapter", Paths: []string{hygieneDir(t)}, Size: 1, Env: []string{"GIVEN=yes"}})
	require.NoError(t, err)
	defer p.Close(ctx)
	var env map[string]string
	require.NoError(t, p.Call(ctx, "environment", nil, &env))
	require.NotContains(t, env, "SNAKEPIT_TEST_SECRET", "the host's environment leaked into the worker")
	require.Equal(t, "yes", env["GIVEN"], "explicit environment missing: %v", env)
	require.NotEmpty(t, env["PATH"], "explicit environment missing: %v", env)
	require.NotEmpty(t, env["SNAKEPIT_RUN_TOKEN"], "explicit environment missing: %v", env)
}

func countFDs() int {
	p, err := procfs.Self()
	if err != nil {
		return 0
	}
	n, _ := p.FileDescriptorsLen()
	return n
}

func countThreads() int {
	tasks, _ := os.ReadDir("/proc/self/task")
	return len(tasks)
}

// TestNoLeaksAfterClose: goroutines, OS threads, file descriptors and child
// processes return to their baseline when a pool closes (after a first
// cycle, which warms what lives for the process: the Go runtime's threads,
// the embedded interpreter's main thread).
func TestNoLeaksAfterClose(t *testing.T) {
	ctx := context.Background()
	dir := hygieneDir(t)
	cycle := func() {
		for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "hygiene_adapter", Paths: []string{dir}, Size: 2, MaxCalls: 10})
			require.NoError(t, err)
			for range 50 {
				require.NoError(t, p.Call(ctx, "ping", nil, nil))
			}
			var n int
			for _, err := range p.Stream(ctx, "nope", nil) {
				_ = err
				n++
			}
			require.NoError(t, p.Close(ctx))
		}
	}
	rt, err := embed.Default()
	require.NoError(t, err)
	// Let interpreters of earlier tests finish ending (a stuck handler's
	// worker closes when its call returns) so they do not blur the baseline.
	for end := time.Now().Add(15 * time.Second); rt.Interpreters() > 0 && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	cycle()
	cycle() // warm: Go's scheduler threads reach their working set
	time.Sleep(100 * time.Millisecond)
	g0, th0, fd0, in0 := runtime.NumGoroutine(), countThreads(), countFDs(), rt.Interpreters()
	cycle()
	// The OS threads this library starts are the interpreters' home threads,
	// which end with them: Interpreters counts them exactly. Go's own
	// scheduler threads are not counted (Go keeps them, and makes more under
	// load); the thread total is logged.
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, th, fd, kids, in := runtime.NumGoroutine(), countThreads(), countFDs(), childPIDs(), rt.Interpreters()
		if g <= g0 && fd <= fd0 && len(kids) == 0 && in <= in0 {
			t.Logf("goroutines %d→%d, fds %d→%d, sub-interpreters %d→%d (OS threads %d→%d)", g0, g, fd0, fd, in0, in, th0, th)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Close: goroutines %d (baseline %d), fds %d (%d), children %v, sub-interpreters %d (%d)", g, g0, fd, fd0, kids, in, in0)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
