package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/snakepit-go/snakepit/worker"
)

// envLibPython is the environment variable package locate reads for the
// libpython (locate.EnvLibPython); the pool knows the Python only through
// the profile packages, so it names it itself.
const envLibPython = "SNAKEPIT_LIBPYTHON"

// newProfile returns how to start the workers of c.Profile, and what
// reports the profile they run (Stats.Effective).
func newProfile(c Config) (profile, func() Profile, error) {
	if c.Profile == Auto {
		a, err := autoFactory(c)
		if err != nil {
			return profile{}, nil, err
		}
		return profile{
			newWorker: a.newWorker,
			prepare:   func(context.Context) error { return nil },
			close:     func(context.Context) {},
		}, a.effective, nil
	}
	prof, err := profileFactory(c)
	if err != nil {
		return profile{}, nil, err
	}
	eff := c.Profile
	return prof, func() Profile { return eff }, nil
}

// autoProfile starts the workers of an Auto pool: the first start decides
// between the thread and the process profile (see [Auto]), every later one
// uses the profile decided.
type autoProfile struct {
	thread  profile // its newWorker is nil when the thread runtime could not be loaded
	process profile
	log     *slog.Logger

	// lead is held by the start that tries the thread profile while the
	// profile is undecided: the other starts wait for its outcome.
	lead    chan struct{}
	decided chan struct{} // closed once eff is set

	mu     sync.Mutex // guards eff, reason
	eff    Profile    // Auto until decided
	reason error      // why the process profile was chosen
}

// autoFactory prepares both profiles of an Auto pool. Errors that are not
// the Python's or the adapter's inability to run sub-interpreters are
// returned: a Host set that does not build, an explicit libpython
// (Config.LibPython or SNAKEPIT_LIBPYTHON) that does not load.
func autoFactory(c Config) (*autoProfile, error) {
	pc := c
	pc.Profile = Process
	proc, err := profileFactory(pc)
	if err != nil {
		return nil, err
	}
	a := &autoProfile{process: proc, log: c.Logger.With("pool", c.Name), lead: make(chan struct{}, 1), decided: make(chan struct{}), eff: Auto}
	tc := c
	tc.Profile = Thread
	th, err := profileFactory(tc)
	switch {
	case err == nil:
		a.thread = th
	case c.LibPython != "" || os.Getenv(envLibPython) != "":
		return nil, err
	default:
		a.decide(Process, fmt.Errorf("pool: the thread profile cannot load this Python: %w", err))
	}
	return a, nil
}

// effective returns the profile decided, Auto before the first start.
func (a *autoProfile) effective() Profile {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.eff
}

// chosen returns the profile decided, if it is.
func (a *autoProfile) chosen() (Profile, bool) {
	select {
	case <-a.decided:
		return a.effective(), true
	default:
		return Auto, false
	}
}

// decide records the profile and logs it; only the first call counts.
func (a *autoProfile) decide(p Profile, reason error) {
	a.mu.Lock()
	if a.eff != Auto {
		a.mu.Unlock()
		return
	}
	a.eff, a.reason = p, reason
	a.mu.Unlock()
	close(a.decided)
	if p == Process {
		a.log.Warn("profile auto: thread workers cannot run this adapter, starting process workers", "profile", "process", "reason", reason)
	} else {
		a.log.Info("profile auto: starting thread workers", "profile", "thread")
	}
}

// switchToProcess makes process workers the decided profile after thread
// workers were decided: the workers already started stay (they work) until
// they are recycled or die; every later start is a process worker. It
// happens at most once.
func (a *autoProfile) switchToProcess(reason error) {
	a.mu.Lock()
	if a.eff != Thread {
		a.mu.Unlock()
		return
	}
	a.eff, a.reason = Process, reason
	a.mu.Unlock()
	a.log.Warn("profile auto: a thread worker was refused, starting process workers from now on", "profile", "process", "reason", reason)
}

// start starts a worker of the decided profile p. A thread worker refused
// by the adapter switches the pool to process workers, this one included:
// a module may load in one interpreter per process only, so that the
// first thread worker starts and the next ones are refused. A process
// worker that fails to start says why the process profile was chosen.
func (a *autoProfile) start(ctx context.Context, p Profile, id string) (worker.Worker, error) {
	if p == Thread {
		w, err := a.thread.newWorker(ctx, id)
		if err == nil || !errors.Is(err, worker.ErrNotSubinterpreterSafe) {
			return w, err
		}
		a.switchToProcess(err)
	}
	w, err := a.process.newWorker(ctx, id)
	if err != nil {
		a.mu.Lock()
		reason := a.reason
		a.mu.Unlock()
		return nil, fmt.Errorf("pool: process worker (the profile Auto chose because %w): %w", reason, err)
	}
	return w, nil
}

// newWorker starts a worker of the decided profile; while none is decided,
// one start at a time tries a thread worker and decides from its outcome.
func (a *autoProfile) newWorker(ctx context.Context, id string) (worker.Worker, error) {
	if p, ok := a.chosen(); ok {
		return a.start(ctx, p, id)
	}
	select {
	case a.lead <- struct{}{}:
	case <-a.decided:
		p, _ := a.chosen()
		return a.start(ctx, p, id)
	case <-ctx.Done():
		return nil, &worker.SetupError{WorkerID: id, Stage: "start",
			Err: fmt.Errorf("pool: waiting for the first worker to decide the profile: %w", context.Cause(ctx))}
	}
	if p, ok := a.chosen(); ok {
		<-a.lead
		return a.start(ctx, p, id)
	}
	w, err := a.thread.newWorker(ctx, id)
	switch {
	case err == nil:
		a.decide(Thread, nil)
		<-a.lead
		return w, nil
	case !errors.Is(err, worker.ErrNotSubinterpreterSafe):
		// Not a refusal of sub-interpreters: the next start tries again,
		// and New returns this error.
		<-a.lead
		return nil, err
	}
	a.decide(Process, err)
	<-a.lead
	return a.start(ctx, Process, id)
}
