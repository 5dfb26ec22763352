package subproc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const orphanAdapter = `
import ctypes
import os
import subprocess
import sys

import snakepit


@snakepit.command
def spawn_grandchild():
    """Start a process in the worker's group and return its pid."""
    p = subprocess.Popen(["sleep", "300"])
    return p.pid


@snakepit.command
def detach_from_host():
    """Simulate a failed lifeline: stop watching it, and drop Pdeathsig."""
    sys.modules["__main__"].LIFELINE_ENABLED = False
    ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG = 0
    return os.getpid()


@snakepit.command
def hang():
    """Stay busy, deaf to signals, so the closed socket goes unnoticed."""
    import signal
    import time
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
    time.sleep(300)
`

const envHost = "SNAKEPIT_TEST_HOST" // registry dir; the host mode's adapter dir is in SNAKEPIT_TEST_HOST_ADAPTERS

// TestHostProcess is not a test: it is the body of a host process (the test
// binary re-executed) that starts workers and prints their pids, then waits
// to be killed.
func TestHostProcess(t *testing.T) {
	dir := os.Getenv(envHost)
	if dir == "" {
		t.Log("runs only as a re-executed host process")
		return
	}
	reg, _, err := subproc.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	detach := os.Getenv("SNAKEPIT_TEST_HOST_DETACH") != ""
	var fs *subproc.ForkServer
	if os.Getenv("SNAKEPIT_TEST_HOST_FORK") != "" {
		if fs, err = subproc.StartForkServer(context.Background(), subproc.ForkServerConfig{
			Module: "orphan_adapter", ImportAdapter: true, Paths: []string{os.Getenv("SNAKEPIT_TEST_HOST_ADAPTERS")},
			Python: pythonExe(t), Registry: reg,
		}); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("FORKSERVER %d\n", fs.PID())
	}
	for i := range 2 {
		w, err := subproc.Start(context.Background(), subproc.Config{
			Module: "orphan_adapter", Paths: []string{os.Getenv("SNAKEPIT_TEST_HOST_ADAPTERS")},
			Python: pythonExe(t), Registry: reg, ForkServer: fs,
		})
		if err != nil {
			t.Fatal(err)
		}
		if detach && i == 0 {
			if _, err := w.Call(context.Background(), &worker.Request{Command: "detach_from_host"}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := w.Call(context.Background(), &worker.Request{Command: "spawn_grandchild"})
		if err != nil {
			t.Fatal(err)
		}
		var gc int
		if err := pymarshal.Unmarshal(resp.Result, &gc); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("WORKER %d GRANDCHILD %d DETACHED %v\n", w.PID(), gc, detach && i == 0)
		if detach && i == 0 {
			go w.Call(context.Background(), &worker.Request{Command: "hang"})
		}
	}
	time.Sleep(200 * time.Millisecond) // let the hang call start
	fmt.Println("READY")
	time.Sleep(5 * time.Minute)
}

type hostPids struct {
	workers, grandchildren, detached []int
	forkServer                       int // 0: none
}

// runHost starts a host process, waits until its workers are ready, and
// returns it with their pids.
func runHost(t *testing.T, regDir string, detach, fork bool) (*exec.Cmd, hostPids) {
	t.Helper()
	adapters := t.TempDir()
	if err := os.WriteFile(filepath.Join(adapters, "orphan_adapter.py"), []byte(orphanAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostProcess$", "-test.v")
	cmd.Env = append(os.Environ(), envHost+"="+regDir, "SNAKEPIT_TEST_HOST_ADAPTERS="+adapters)
	if detach {
		cmd.Env = append(cmd.Env, "SNAKEPIT_TEST_HOST_DETACH=1")
	}
	if fork {
		cmd.Env = append(cmd.Env, "SNAKEPIT_TEST_HOST_FORK=1")
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var p hostPids
	sc := bufio.NewScanner(out)
	ready := make(chan error, 1)
	go func() {
		for sc.Scan() {
			line := sc.Text()
			var w, g int
			var d bool
			if n, _ := fmt.Sscanf(line, "WORKER %d GRANDCHILD %d DETACHED %v", &w, &g, &d); n == 3 {
				p.workers = append(p.workers, w)
				p.grandchildren = append(p.grandchildren, g)
				if d {
					p.detached = append(p.detached, w, g)
				}
			}
			fmt.Sscanf(line, "FORKSERVER %d", &p.forkServer)
			if line == "READY" {
				ready <- nil
				return
			}
		}
		ready <- fmt.Errorf("host ended before READY")
	}()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("host did not become ready")
	}
	return cmd, p
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && len(b) > i+2 && b[i+2] != 'Z' // a zombie is dead
}

func waitGone(t *testing.T, pids []int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes still alive after %v: %v", within, left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHostKilled: SIGKILL a host with busy workers; the lifeline takes every
// worker and grandchild down, and a new host's sweep finds nothing to do.
func TestHostKilled(t *testing.T) { testHostKilled(t, false) }

// TestHostKilledForked: TestHostKilled with workers forked by a fork
// server, which goes too.
func TestHostKilledForked(t *testing.T) { testHostKilled(t, true) }

func testHostKilled(t *testing.T, fork bool) {
	dir := t.TempDir()
	host, p := runHost(t, dir, false, fork)
	all := append(append([]int(nil), p.workers...), p.grandchildren...)
	if fork {
		if p.forkServer == 0 {
			t.Fatal("the host reported no fork server")
		}
		all = append(all, p.forkServer)
	}
	for _, pid := range all {
		if !alive(pid) {
			t.Fatalf("pid %d not running before the host died", pid)
		}
	}
	host.Process.Signal(syscall.SIGKILL)
	host.Wait()
	waitGone(t, all, 10*time.Second)
	rep, err := subproc.Sweep(dir)
	if err != nil || len(rep.Killed) != 0 {
		t.Fatalf("sweep after a clean lifeline: %+v, %v; want nothing killed", rep, err)
	}
}

// TestLifelineFailure: a worker that ignores its lifeline survives its
// host; the next host's registry sweep kills it and its grandchild, and
// spares a decoy with a recycled-looking pid.
func TestLifelineFailure(t *testing.T) { testLifelineFailure(t, false) }

// TestLifelineFailureForked: TestLifelineFailure with workers forked by a
// fork server: the sweep finds and kills the forked worker's group.
func TestLifelineFailureForked(t *testing.T) { testLifelineFailure(t, true) }

func testLifelineFailure(t *testing.T, fork bool) {
	dir := t.TempDir()
	host, p := runHost(t, dir, true, fork)
	if len(p.detached) != 2 {
		t.Fatalf("detached pids: %v", p.detached)
	}
	host.Process.Signal(syscall.SIGKILL)
	host.Wait()
	var normal []int
	for _, pid := range append(p.workers, p.grandchildren...) {
		if !slices.Contains(p.detached, pid) {
			normal = append(normal, pid)
		}
	}
	waitGone(t, normal, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	for _, pid := range p.detached {
		if !alive(pid) {
			t.Fatalf("pid %d (of detached %v, workers %v) died with the host; the simulated lifeline failure did not hold", pid, p.detached, p.workers)
		}
	}
	t.Cleanup(func() {
		for _, pid := range p.detached {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	reg, rep, err := subproc.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if !slices.Contains(rep.Killed, p.detached[0]) {
		t.Fatalf("sweep report %+v: want group %d killed", rep, p.detached[0])
	}
	waitGone(t, p.detached, 10*time.Second)
}

// TestSweepSafety: the sweep acts only on a dead host's file that this user
// owns and keeps private, and only on a group whose leader's start time and
// run token match.
func TestSweepSafety(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	startDecoy := func(token string) *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Env = []string{subproc.EnvRunToken + "=" + token}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	startTime := func(pid int) uint64 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		n, _ := strconv.ParseUint(f[19], 10, 64)
		return n
	}
	writeRun := func(name, token string, mode os.FileMode, pid int, start uint64) string {
		path := filepath.Join(dir, name)
		data, _ := json.Marshal(map[string]any{"host_pid": 1, "token": token,
			"groups": []map[string]any{{"pgid": pid, "start": start}}})
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, mode)
		return path
	}
	// A live host: its file is locked. (Opening it sweeps too: do it first.)
	liveHost, _, err := subproc.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer liveHost.Close()
	recycled := startDecoy("tok-a")
	writeRun("run-1-recycled.json", "tok-a", 0o600, recycled.Process.Pid, startTime(recycled.Process.Pid)+1)
	otherToken := startDecoy("tok-b")
	writeRun("run-2-token.json", "tok-other", 0o600, otherToken.Process.Pid, startTime(otherToken.Process.Pid))
	public := startDecoy("tok-c")
	writeRun("run-3-public.json", "tok-c", 0o644, public.Process.Pid, startTime(public.Process.Pid))
	foreign := startDecoy("tok-d")
	foreignFile := writeRun("run-4-foreign.json", "tok-d", 0o600, foreign.Process.Pid, startTime(foreign.Process.Pid))
	if err := os.Chown(foreignFile, 65534, 65534); err != nil {
		t.Fatalf("chown (the test runs as root in CI): %v", err)
	}
	orphan := startDecoy("tok-e")
	writeRun("run-5-orphan.json", "tok-e", 0o600, orphan.Process.Pid, startTime(orphan.Process.Pid))

	rep, err := subproc.Sweep(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sweep: %+v", rep)
	if !slices.Equal(rep.Killed, []int{orphan.Process.Pid}) {
		t.Fatalf("killed %v, want only the matching orphan %d", rep.Killed, orphan.Process.Pid)
	}
	for _, c := range []*exec.Cmd{recycled, otherToken, public, foreign} {
		if !alive(c.Process.Pid) {
			t.Fatalf("decoy %d was killed", c.Process.Pid)
		}
	}
	if len(rep.Refused) != 2 {
		t.Fatalf("refused %v, want the public and the foreign file", rep.Refused)
	}
	if len(rep.Spared) != 2 {
		t.Fatalf("spared %v, want the recycled pid and the wrong token", rep.Spared)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("registry dir mode %v", st.Mode())
	}
	files, _ := filepath.Glob(filepath.Join(dir, "run-*.json"))
	owned := 0
	for _, f := range files {
		if !strings.HasPrefix(filepath.Base(f), fmt.Sprintf("run-%d-", os.Getpid())) {
			continue
		}
		owned++
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("own run file %s: %v, want mode 0600", f, err)
		}
	}
	if owned != 1 {
		t.Fatalf("%d run files of this process in %v, want 1", owned, files)
	}
}
