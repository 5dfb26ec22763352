package pool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

// profile is how a pool starts the workers of its profile.
type profile struct {
	// newWorker starts one worker.
	newWorker func(ctx context.Context, id string) (worker.Worker, error)
	// prepare starts what the workers need besides themselves (the fork
	// server), before the first worker starts.
	prepare func(ctx context.Context) error
	// close stops that, once no worker starts any more and every worker
	// is closed.
	close func(ctx context.Context)
}

// profileFactory returns how to start the workers of the configured
// profile.
func profileFactory(c Config) (profile, error) {
	var hostSet worker.Host
	if len(c.Host) > 0 {
		s, err := host.NewSet(c.Host...)
		if err != nil {
			return profile{}, err
		}
		hostSet = s
	}
	prepare := func(context.Context) error { return nil }
	nothing := func(context.Context) {}
	switch c.Profile {
	case Process:
		// A worker process polls briefly for its next request after each
		// reply, which saves a wake-up per call when cores are spare; with
		// a worker per core or more, polling would take the CPU the host
		// needs to send that request, so it is off.
		spin := time.Duration(0) // subproc's default
		if c.Size >= runtime.NumCPU() {
			spin = -1
		}
		wcfg := subproc.Config{
			Module: c.Module, Paths: c.Paths, Python: c.Python, Env: c.Env, BLASThreads: c.BLASThreads, Logger: c.Logger,
			InterruptGrace: c.InterruptGrace, StopGrace: c.StopGrace, Spin: spin,
			SharedThreshold: c.SharedThreshold, MaxSharedMemory: c.MaxSharedMemory,
			Host: hostSet, Concurrency: c.WorkerConcurrency, PipelineDepth: c.PipelineDepth,
		}
		if c.ForkServer == nil {
			return profile{func(ctx context.Context, id string) (worker.Worker, error) {
				cfg := wcfg
				cfg.ID = id
				return subproc.Start(ctx, cfg)
			}, prepare, nothing}, nil
		}
		fh := &forkHolder{cfg: subproc.ForkServerConfig{
			Module: c.Module, ImportAdapter: c.ForkServer.ImportAdapter, Paths: c.Paths, Python: c.Python,
			Env: c.Env, BLASThreads: c.BLASThreads, ID: c.Name + "-forkserver", Logger: c.Logger, StartTimeout: c.StartTimeout, StopGrace: c.StopGrace,
		}, shared: c.ForkServer.Server}
		return profile{func(ctx context.Context, id string) (worker.Worker, error) {
			cfg := wcfg
			cfg.ID = id
			return fh.start(ctx, cfg)
		}, func(ctx context.Context) error {
			_, err := fh.server(ctx)
			return err
		}, fh.close}, nil
	default:
		rt, err := gil.LoadRuntimeFor(c.LibPython, c.Python)
		if err != nil {
			return profile{}, err
		}
		return profile{func(ctx context.Context, id string) (worker.Worker, error) {
			return gil.Start(ctx, gil.Config{
				Module: c.Module, Paths: c.Paths, Runtime: rt, ID: id, Logger: c.Logger,
				InterruptGrace: c.InterruptGrace, Host: hostSet, Concurrency: c.WorkerConcurrency,
			})
		}, prepare, nothing}, nil
	}
}

// forkHolder holds a process-profile pool's fork server. A template that
// died is replaced at the next start rather than failing every start for
// the rest of the pool's life: it may have been killed for reasons of its
// own (the OOM killer, an operator), and the workers it forked live on.
// A template that keeps failing to start fails the worker starts that
// need it, which the pool's supervision turns into backoff and, in the
// end, a degraded pool.
type forkHolder struct {
	cfg    subproc.ForkServerConfig
	shared *subproc.ForkServer // ForkServerOptions.Server: the program's, never replaced or stopped

	mu     sync.Mutex // guards fs, closed; held while a template starts
	fs     *subproc.ForkServer
	closed bool
}

// server returns the live template, starting one if there is none.
func (h *forkHolder) server(ctx context.Context) (*subproc.ForkServer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("pool: fork server: %w", ErrClosed)
	}
	if h.shared != nil {
		select {
		case <-h.shared.Done():
			return nil, &worker.SetupError{Stage: "start", Err: fmt.Errorf("pool: the shared fork server (pid %d) has stopped: %w", h.shared.PID(), subproc.ErrForkServerDead)}
		default:
			return h.shared, nil
		}
	}
	if h.fs != nil {
		select {
		case <-h.fs.Done():
			h.fs.Close(ctx) // frees what the host held of it
			h.fs = nil
		default:
			return h.fs, nil
		}
	}
	fs, err := subproc.StartForkServer(ctx, h.cfg)
	if err != nil {
		return nil, err
	}
	h.fs = fs
	return fs, nil
}

// start forks a worker; when the template turns out to be dead, it starts
// a new one and tries once more.
func (h *forkHolder) start(ctx context.Context, cfg subproc.Config) (worker.Worker, error) {
	for try := 0; ; try++ {
		fs, err := h.server(ctx)
		if err != nil {
			return nil, err
		}
		cfg.ForkServer = fs
		w, err := subproc.Start(ctx, cfg)
		if err != nil && try == 0 && errors.Is(err, subproc.ErrForkServerDead) && h.shared == nil {
			// Start fails with ErrForkServerDead only once the template is
			// seen gone or has been killed: server replaces it.
			select {
			case <-fs.Done():
			case <-ctx.Done():
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return w, nil
	}
}

// close stops the template; no start may follow.
func (h *forkHolder) close(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.fs != nil {
		h.fs.Close(ctx)
		h.fs = nil
	}
}
