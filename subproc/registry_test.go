package subproc_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const envRegistryHost = "SNAKEPIT_TEST_REGISTRY_HOST" // adapter dir of the host mode

// TestRegistryHostProcess is not a test: it is the body of a host process
// (the test binary re-executed) that starts a worker with the default
// registry, calls it and prints what happened.
func TestRegistryHostProcess(t *testing.T) {
	dir := os.Getenv(envRegistryHost)
	if dir == "" {
		t.Log("runs only as a re-executed host process")
		return
	}
	var logs bytes.Buffer
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "child_adapter", Paths: []string{dir}, Python: pythonExe(t),
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Printf("START FAILED: %v\n", err)
		return
	}
	defer w.Close(context.Background())
	resp, err := w.Call(context.Background(), &worker.Request{Command: "pid"})
	if err != nil {
		fmt.Printf("CALL FAILED: %v\n", err)
		return
	}
	var pid int
	if err := pymarshal.Unmarshal(resp.Result, &pid); err != nil || pid != w.PID() {
		fmt.Printf("CALL FAILED: pid %d, %v\n", pid, err)
		return
	}
	reg, _ := subproc.DefaultRegistry()
	fmt.Printf("STARTED registry error: %v\nLOGS %s\n", reg.Err(), logs.String())
}

// TestRegistryDirTakenByAnotherUser: when the default registry directory
// (or a directory of its path) is another user's, a file or a symlink,
// opening the registry fails, and workers started with the default
// registry start anyway with a warning.
// chownOther gives path to another user (nobody). Only root can: CI runs
// the suite as root; elsewhere the cases that need it are skipped.
func chownOther(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a directory to another user needs root")
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatalf("chown: %v", err)
	}
}

func TestRegistryDirTakenByAnotherUser(t *testing.T) {
	adapters := t.TempDir()
	if err := os.WriteFile(filepath.Join(adapters, "child_adapter.py"), []byte(childAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	leaf := fmt.Sprintf("snakepit-%d", os.Getuid())
	cases := []struct {
		name  string
		setup func(t *testing.T, tmp string)
	}{
		{"directory of another user", func(t *testing.T, tmp string) {
			mustMkdir(t, filepath.Join(tmp, leaf), 0o777)
			chownOther(t, filepath.Join(tmp, leaf))
		}},
		{"a file", func(t *testing.T, tmp string) {
			if err := os.WriteFile(filepath.Join(tmp, leaf), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"a symlink to a directory of this user", func(t *testing.T, tmp string) {
			target := t.TempDir()
			mustMkdir(t, filepath.Join(target, "runs"), 0o700)
			if err := os.Symlink(target, filepath.Join(tmp, leaf)); err != nil {
				t.Fatal(err)
			}
		}},
		{"runs of another user", func(t *testing.T, tmp string) {
			mustMkdir(t, filepath.Join(tmp, leaf), 0o700)
			mustMkdir(t, filepath.Join(tmp, leaf, "runs"), 0o700)
			chownOther(t, filepath.Join(tmp, leaf, "runs"))
		}},
		{"a parent writable by all, not sticky", func(t *testing.T, tmp string) {
			if err := os.Chmod(tmp, 0o777); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmp := filepath.Join(t.TempDir(), "tmp")
			mustMkdir(t, tmp, 0o700)
			tc.setup(t, tmp)
			t.Setenv("TMPDIR", tmp)
			t.Setenv("XDG_RUNTIME_DIR", "")
			reg, _, err := subproc.OpenRegistry("")
			if err == nil {
				reg.Close()
				t.Fatalf("OpenRegistry in %s: got success, want an error", tmp)
			}
			t.Logf("OpenRegistry: %v", err)

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRegistryHostProcess$")
			cmd.Env = append(os.Environ(), envRegistryHost+"="+adapters)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "STARTED registry error: subproc: registry dir") {
				t.Fatalf("host with the default registry: got %v\n%s\nwant a started worker and the registry's error", err, out)
			}
			if !strings.Contains(string(out), "worker not recorded for orphan cleanup") {
				t.Fatalf("host logs:\n%s\nwant a warning that the worker is not recorded", out)
			}
		})
	}
}

// TestSweepOversizedRunFile: a run file larger than MaxRunFileSize (here
// sparse) is not read: the sweep refuses and removes it.
func TestSweepOversizedRunFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "run-1-oversized.json")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2*subproc.MaxRunFileSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep, err := subproc.Sweep(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Refused) != 1 || !strings.Contains(rep.Refused[0], "larger than") || rep.Files != 0 {
		t.Fatalf("sweep report %+v: want the oversized file refused and nothing read", rep)
	}
	if _, err := os.Stat(name); !os.IsNotExist(err) {
		t.Fatalf("oversized run file: got %v, want it removed", err)
	}
}

// TestSweepStaleTempFile: a run file left under its temporary name by a
// host that died before renaming it is removed once a minute old and
// unlocked; a fresh one (a host creating its file now) is left.
func TestSweepStaleTempFile(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, ".tmp-run-stale")
	fresh := filepath.Join(dir, ".tmp-run-fresh")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := subproc.Sweep(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temporary run file: got %v, want it removed", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatalf("fresh temporary run file: got %v, want it kept", err)
	}
}

func mustMkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}
