package subproc

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
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
// symlink), and so is every directory of its path that snakepit creates;
// the directories above must belong to root or the user and, when others
// may write to them, be sticky (as /tmp is). Run files are 0600. A file
// that another user owns, that is readable by others, or that is larger
// than [MaxRunFileSize], is never acted on.
//
// A Registry that could not be opened still carries a run token (see
// [DefaultRegistry]): workers start, and only the orphan cleanup is lost.
type Registry struct {
	dir   string
	token string
	err   error // why the registry is unusable; nil when it works

	mu      sync.Mutex // guards f, root, entries
	root    *os.Root   // the registry directory; nil after Close
	f       *os.File   // our run file, locked; nil after Close
	entries map[int]runEntry
}

// MaxRunFileSize bounds the run files a sweep reads: a host writes a few
// dozen bytes per worker, so a larger file is not one of ours to trust, and
// reading it whole would cost the sweep its size in time and memory.
const MaxRunFileSize = 1 << 20

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
	// Refused lists run files not acted on, with the reason: wrong owner
	// or mode, or larger than MaxRunFileSize (such files are removed).
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
// host's run file in it. dir "" means DefaultRegistryDir(). It fails when
// dir or a directory above it is not safe to use (see [Registry]).
func OpenRegistry(dir string) (*Registry, SweepReport, error) {
	if dir == "" {
		dir = DefaultRegistryDir()
	}
	root, err := openPrivateDir(dir)
	if err != nil {
		return nil, SweepReport{}, err
	}
	report, err := sweepRoot(root)
	if err != nil {
		root.Close()
		return nil, report, err
	}
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		root.Close()
		return nil, report, fmt.Errorf("subproc: registry token: %w", err)
	}
	r := &Registry{dir: dir, root: root, token: hex.EncodeToString(tok[:]), entries: map[int]runEntry{}}
	// Create under a temporary name, lock, then rename: a sweeper never sees
	// an unlocked file of a live host.
	tmpName := ".tmp-run-" + r.token
	tmp, err := root.OpenFile(tmpName, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		root.Close()
		return nil, report, fmt.Errorf("subproc: registry: %w", err)
	}
	if err := unix.Flock(int(tmp.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		tmp.Close()
		root.Remove(tmpName)
		root.Close()
		return nil, report, fmt.Errorf("subproc: registry lock: %w", err)
	}
	if err := root.Rename(tmpName, r.fileName()); err != nil {
		tmp.Close()
		root.Remove(tmpName)
		root.Close()
		return nil, report, fmt.Errorf("subproc: registry: %w", err)
	}
	r.f = tmp
	if err := r.writeLocked(); err != nil {
		r.Close()
		return nil, report, err
	}
	return r, report, nil
}

func (r *Registry) fileName() string {
	return fmt.Sprintf("run-%d-%s.json", os.Getpid(), r.token[:12])
}

// unusableRegistry is a registry that records nothing, for when the real
// one cannot be opened: its token still marks the workers' environment.
func unusableRegistry(err error) *Registry {
	var tok [16]byte
	_, _ = rand.Read(tok[:]) // never fails on Linux; a zero token marks nothing
	return &Registry{token: hex.EncodeToString(tok[:]), err: err}
}

var (
	defaultRegOnce sync.Once
	defaultReg     *Registry
)

// DefaultRegistry is the registry of this host process in
// DefaultRegistryDir(), opened (and swept) on first use. Workers whose
// Config.Registry is nil use it.
//
// The registry never stops workers from starting: when its directory cannot
// be used (another user created it, a path component is a symlink or open
// to others, the disk is full), DefaultRegistry returns a registry that
// records nothing and a nil error; [Registry.Err] says why, and each worker
// started with it logs a warning. The lifeline still ends workers with
// their host; only the cleanup after a lifeline failure is lost.
func DefaultRegistry() (*Registry, error) {
	defaultRegOnce.Do(func() {
		var err error
		if defaultReg, _, err = OpenRegistry(""); err != nil {
			defaultReg = unusableRegistry(err)
		}
	})
	return defaultReg, nil
}

// Err reports why the registry records nothing (see [DefaultRegistry]), or
// nil when it works.
func (r *Registry) Err() error { return r.err }

// Token returns the run token placed in workers' environment.
func (r *Registry) Token() string { return r.token }

// Dir returns the registry directory.
func (r *Registry) Dir() string { return r.dir }

func (r *Registry) add(pgid int) error {
	if r.err != nil {
		return fmt.Errorf("subproc: registry unavailable: %w", r.err)
	}
	start, err := processStartTime(pgid)
	if err != nil {
		return fmt.Errorf("subproc: registry: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return fmt.Errorf("subproc: registry unavailable: %w", r.err)
	}
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
	err := r.root.Remove(r.fileName())
	r.f.Close()
	r.f = nil
	r.root.Close()
	r.root = nil
	if err != nil {
		return fmt.Errorf("subproc: registry: %w", err)
	}
	return nil
}

// Sweep kills the process groups recorded by hosts that died (their run
// files are no longer locked) when, and only when, the group leader's start
// time and run token still match, then removes those run files. It fails
// when dir or a directory above it is not safe to use (see [Registry]).
func Sweep(dir string) (SweepReport, error) {
	root, err := openPrivateDir(dir)
	if err != nil {
		return SweepReport{}, err
	}
	defer root.Close()
	return sweepRoot(root)
}

// removeStaleTemp removes a run file a host left under its temporary name
// (it died between creating and renaming it): one nobody holds locked and
// older than a minute (a live host locks it right after creating it).
func removeStaleTemp(root *os.Root, name string) {
	f, err := root.OpenFile(name, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || int(st.Uid) != os.Getuid() || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	if time.Since(time.Unix(st.Mtim.Unix())) < time.Minute {
		return
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
		root.Remove(name)
	}
}

func sweepRoot(root *os.Root) (SweepReport, error) {
	var rep SweepReport
	d, err := root.Open(".")
	if err != nil {
		return rep, fmt.Errorf("subproc: registry: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return rep, fmt.Errorf("subproc: registry: %w", err)
	}
	slices.Sort(names)
	uid := os.Getuid()
	for _, name := range names {
		if strings.HasPrefix(name, ".tmp-run-") {
			removeStaleTemp(root, name)
			continue
		}
		if !strings.HasPrefix(name, "run-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		path := filepath.Join(root.Name(), name)
		f, err := root.OpenFile(name, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		if err != nil {
			continue // removed meanwhile, a symlink, or not ours to open
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // its host is alive
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || int(st.Uid) != uid || st.Mode&0o077 != 0 || st.Mode&unix.S_IFMT != unix.S_IFREG {
			rep.Refused = append(rep.Refused, path+": not a private file of this user")
			f.Close()
			continue
		}
		data, err := io.ReadAll(io.LimitReader(f, MaxRunFileSize+1))
		if st.Size > MaxRunFileSize || len(data) > MaxRunFileSize {
			rep.Refused = append(rep.Refused, fmt.Sprintf("%s: larger than %d bytes (removed)", path, MaxRunFileSize))
			root.Remove(name)
			f.Close()
			continue
		}
		rep.Files++
		var rf runFile
		if err == nil && json.Unmarshal(data, &rf) == nil && rf.Token != "" {
			for _, e := range rf.Groups {
				if why := checkGroup(e, rf.Token); why != "" {
					rep.Spared = append(rep.Spared, fmt.Sprintf("pgid %d: %s", e.PGID, why))
					continue
				}
				if err := unix.Kill(-e.PGID, unix.SIGKILL); err == nil {
					rep.Killed = append(rep.Killed, e.PGID)
				}
			}
		}
		root.Remove(name)
		f.Close()
	}
	return rep, nil
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
	p, err := procfs.NewProc(e.PGID)
	if err != nil {
		return "gone"
	}
	env, err := p.Environ()
	if err != nil {
		return "environment unreadable"
	}
	if !slices.Contains(env, EnvRunToken+"="+token) {
		return "run token differs"
	}
	return ""
}

// processStartTime returns the start time of a process, in clock ticks
// since boot (field 22 of /proc/<pid>/stat).
func processStartTime(pid int) (uint64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.Starttime, nil
}

// openPrivateDir opens dir as a root, creating what is missing of it.
// dir, and the directories created for it (for the default directory:
// snakepit-<uid> or snakepit too), must be directories, not symlinks,
// owned by this user; they are made 0700. The directories above them must
// be owned by root or this user and, when others may write to them, be
// sticky (checkAncestors).
func openPrivateDir(dir string) (*os.Root, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	base, own := filepath.Dir(dir), []string{filepath.Base(dir)}
	if def := DefaultRegistryDir(); filepath.Clean(def) == dir {
		// snakepit-<uid>/runs or snakepit/runs: both components are ours.
		base, own = filepath.Dir(base), []string{filepath.Base(base), own[0]}
	}
	for {
		if _, err := os.Lstat(base); err == nil || filepath.Dir(base) == base {
			break
		}
		base, own = filepath.Dir(base), append([]string{filepath.Base(base)}, own...)
	}
	realBase, err := filepath.EvalSymlinks(base)
	if err != nil {
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	if err := checkAncestors(realBase); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(realBase)
	if err != nil {
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	uid := os.Getuid()
	for _, name := range own {
		sub, err := openPrivateSubdir(root, name, uid)
		root.Close()
		if err != nil {
			return nil, err
		}
		root = sub
	}
	return root, nil
}

// openPrivateSubdir creates name in root if needed, checks that it is a
// directory owned by uid (not a symlink), makes it 0700 and opens it.
func openPrivateSubdir(root *os.Root, name string, uid int) (*os.Root, error) {
	path := filepath.Join(root.Name(), name)
	if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	st, err := root.Lstat(name)
	if err != nil {
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	if st.Mode()&fs.ModeSymlink != 0 || !st.IsDir() {
		return nil, fmt.Errorf("subproc: registry dir %s is not a directory", path)
	}
	sub, err := root.OpenRoot(name)
	if err != nil {
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	// Check what was opened, not the name: it cannot change under us.
	d, err := sub.Open(".")
	if err != nil {
		sub.Close()
		return nil, fmt.Errorf("subproc: registry dir: %w", err)
	}
	defer d.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &fst); err != nil {
		sub.Close()
		return nil, fmt.Errorf("subproc: registry dir: %w", &fs.PathError{Op: "fstat", Path: path, Err: err})
	}
	if fst.Mode&unix.S_IFMT != unix.S_IFDIR {
		sub.Close()
		return nil, fmt.Errorf("subproc: registry dir %s is not a directory", path)
	}
	if int(fst.Uid) != uid {
		sub.Close()
		return nil, fmt.Errorf("subproc: registry dir %s is not owned by this user (uid %d)", path, fst.Uid)
	}
	if fst.Mode&0o077 != 0 {
		if err := unix.Fchmod(int(d.Fd()), 0o700); err != nil {
			sub.Close()
			return nil, fmt.Errorf("subproc: registry dir %s is open to other users: %w", path, err)
		}
	}
	return sub, nil
}

// checkAncestors checks dir and every directory above it: each must be
// owned by root or this user and, if others may write to it, be sticky, so
// that no other user can replace what lies below.
func checkAncestors(dir string) error {
	uid := uint32(os.Getuid())
	for p := dir; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("subproc: registry dir: %w", &fs.PathError{Op: "lstat", Path: p, Err: err})
		}
		switch {
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return fmt.Errorf("subproc: registry dir %s is not a directory", p)
		case st.Uid != 0 && st.Uid != uid:
			return fmt.Errorf("subproc: registry dir %s is owned by another user (uid %d)", p, st.Uid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			return fmt.Errorf("subproc: registry dir %s is writable by others and not sticky", p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}
