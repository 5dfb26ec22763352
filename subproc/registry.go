package subproc

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// EnvRunToken is the environment variable that carries a host run's token
// into its worker processes (and, by inheritance, what they start).
const EnvRunToken = "SNAKEPIT_RUN_TOKEN"

// Registry records the worker process groups one host started, in a file
// that the host holds locked (flock) while it lives, so that a later host
// can find and kill groups left behind by a host that died without its
// children noticing (the lifeline normally takes care of that). A group is
// killed only if its leader still has the recorded start time and carries
// the run's random token in its environment: a reused pid is never touched,
// and hosts that are alive are never touched either.
//
// The directory is private to the user (0700, owned by them, not a
// symlink); run files are 0600. A file that another user owns, or that is
// readable by others, is never acted on.
type Registry struct {
	dir   string
	token string

	mu      sync.Mutex // guards f, entries
	f       *os.File   // our run file, locked; nil after Close
	entries map[int]runEntry
}

type runEntry struct {
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"` // /proc/<pgid>/stat start time, in clock ticks since boot
}

type runFile struct {
	HostPID int        `json:"host_pid"`
	Token   string     `json:"token"`
	Groups  []runEntry `json:"groups"`
}

// SweepReport says what a sweep found.
type SweepReport struct {
	// Files is how many run files of dead hosts were examined.
	Files int
	// Killed lists the process groups killed.
	Killed []int
	// Spared lists groups recorded by dead hosts that were left alone, with
	// the reason ("pid 123: start time differs", ...).
	Spared []string
	// Refused lists run files not acted on (wrong owner or mode).
	Refused []string
}

// DefaultRegistryDir returns $XDG_RUNTIME_DIR/snakepit/runs when that is
// set, else os.TempDir()/snakepit-<uid>/runs.
func DefaultRegistryDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "snakepit", "runs")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("snakepit-%d", os.Getuid()), "runs")
}

// OpenRegistry sweeps dir for groups left by dead hosts, then creates this
// host's run file in it. dir "" means DefaultRegistryDir().
func OpenRegistry(dir string) (*Registry, SweepReport, error) {
	if dir == "" {
		dir = DefaultRegistryDir()
	}
	if err := ensurePrivateDir(dir); err != nil {
		return nil, SweepReport{}, err
	}
	report, err := Sweep(dir)
	if err != nil {
		return nil, report, err
	}
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, report, fmt.Errorf("subproc: registry token: %w", err)
	}
	r := &Registry{dir: dir, token: hex.EncodeToString(tok[:]), entries: map[int]runEntry{}}
	// Create under a temporary name, lock, then rename: a sweeper never sees
	// an unlocked file of a live host.
	tmp, err := os.CreateTemp(dir, ".tmp-run-*")
	if err != nil {
		return nil, report, fmt.Errorf("subproc: registry: %w", err)
	}
	if err := syscall.Flock(int(tmp.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, report, fmt.Errorf("subproc: registry lock: %w", err)
	}
	final := filepath.Join(dir, fmt.Sprintf("run-%d-%s.json", os.Getpid(), r.token[:12]))
	if err := os.Rename(tmp.Name(), final); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, report, fmt.Errorf("subproc: registry: %w", err)
	}
	r.f = tmp
	if err := r.writeLocked(); err != nil {
		r.Close()
		return nil, report, err
	}
	return r, report, nil
}

var (
	defaultRegOnce sync.Once
	defaultReg     *Registry
	defaultRegErr  error
)

// DefaultRegistry is the registry of this host process in
// DefaultRegistryDir(), opened (and swept) on first use. Workers whose
// Config.Registry is nil use it.
func DefaultRegistry() (*Registry, error) {
	defaultRegOnce.Do(func() { defaultReg, _, defaultRegErr = OpenRegistry("") })
	return defaultReg, defaultRegErr
}

// Token returns the run token placed in workers' environment.
func (r *Registry) Token() string { return r.token }

// Dir returns the registry directory.
func (r *Registry) Dir() string { return r.dir }

func (r *Registry) add(pgid int) error {
	start, err := processStartTime(pgid)
	if err != nil {
		return fmt.Errorf("subproc: registry: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return errors.New("subproc: registry closed")
	}
	r.entries[pgid] = runEntry{PGID: pgid, Start: start}
	return r.writeLocked()
}

func (r *Registry) remove(pgid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	delete(r.entries, pgid)
	_ = r.writeLocked()
}

func (r *Registry) writeLocked() error {
	rf := runFile{HostPID: os.Getpid(), Token: r.token, Groups: []runEntry{}}
	for _, e := range r.entries {
		rf.Groups = append(rf.Groups, e)
	}
	data, _ := json.Marshal(rf)
	if err := r.f.Truncate(0); err != nil {
		return fmt.Errorf("subproc: registry: %w", err)
	}
	if _, err := r.f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("subproc: registry: %w", err)
	}
	return nil
}

// Close removes this host's run file. Workers still running are not
// affected (their lifeline still ends them with the host).
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	name := filepath.Join(r.dir, fmt.Sprintf("run-%d-%s.json", os.Getpid(), r.token[:12]))
	err := os.Remove(name)
	r.f.Close()
	r.f = nil
	return err
}

// Sweep kills the process groups recorded by hosts that died (their run
// files are no longer locked) when, and only when, the group leader's start
// time and run token still match, then removes those run files.
func Sweep(dir string) (SweepReport, error) {
	var rep SweepReport
	names, err := filepath.Glob(filepath.Join(dir, "run-*.json"))
	if err != nil {
		return rep, err
	}
	uid := os.Getuid()
	for _, name := range names {
		f, err := os.OpenFile(name, os.O_RDWR|syscall.O_NOFOLLOW, 0)
		if err != nil {
			continue // removed meanwhile, or a symlink
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // its host is alive
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil || int(st.Uid) != uid || st.Mode&0o077 != 0 || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			rep.Refused = append(rep.Refused, name)
			f.Close()
			continue
		}
		rep.Files++
		var rf runFile
		data, _ := readAll(f)
		if err := json.Unmarshal(data, &rf); err == nil && rf.Token != "" {
			for _, e := range rf.Groups {
				if why := checkGroup(e, rf.Token); why != "" {
					rep.Spared = append(rep.Spared, fmt.Sprintf("pgid %d: %s", e.PGID, why))
					continue
				}
				if err := syscall.Kill(-e.PGID, syscall.SIGKILL); err == nil {
					rep.Killed = append(rep.Killed, e.PGID)
				}
			}
		}
		os.Remove(name)
		f.Close()
	}
	return rep, nil
}

func readAll(f *os.File) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(f)
	return buf.Bytes(), err
}

// checkGroup returns why a recorded group must be left alone, or "".
func checkGroup(e runEntry, token string) string {
	if e.PGID <= 1 {
		return "invalid pgid"
	}
	start, err := processStartTime(e.PGID)
	if err != nil {
		return "gone"
	}
	if start != e.Start {
		return "start time differs (pid reused)"
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", e.PGID))
	if err != nil {
		return "environment unreadable"
	}
	if !bytes.Contains(append([]byte{0}, env...), []byte("\x00"+EnvRunToken+"="+token+"\x00")) {
		return "run token differs"
	}
	return ""
}

// processStartTime reads field 22 of /proc/<pid>/stat.
func processStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// ensurePrivateDir creates dir (0700) if needed and checks that it is a
// directory owned by this user, not a symlink, and not open to others.
func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("subproc: registry dir: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("subproc: registry dir: %w", err)
	}
	if st.Mode()&fs.ModeSymlink != 0 || !st.IsDir() {
		return fmt.Errorf("subproc: registry dir %s is not a directory", dir)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || int(sys.Uid) != os.Getuid() {
		return fmt.Errorf("subproc: registry dir %s is not owned by this user", dir)
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("subproc: registry dir %s is open to other users: %w", dir, err)
		}
	}
	return nil
}
