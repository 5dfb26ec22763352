package pool

import (
	"context"
	"runtime"
	"time"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

// profileFactory returns the function that starts one worker of the
// configured profile.
func profileFactory(c Config) (func(ctx context.Context, id string) (worker.Worker, error), error) {
	var hostSet worker.Host
	if len(c.Host) > 0 {
		s, err := host.NewSet(c.Host...)
		if err != nil {
			return nil, err
		}
		hostSet = s
	}
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
		return func(ctx context.Context, id string) (worker.Worker, error) {
			return subproc.Start(ctx, subproc.Config{
				Module: c.Module, Paths: c.Paths, Python: c.Python, Env: c.Env, ID: id, Logger: c.Logger,
				InterruptGrace: c.InterruptGrace, StopGrace: c.StopGrace, Spin: spin,
				SharedThreshold: c.SharedThreshold, MaxSharedMemory: c.MaxSharedMemory,
				Host: hostSet, Concurrency: c.WorkerConcurrency, PipelineDepth: c.PipelineDepth,
			})
		}, nil
	default:
		rt, err := gil.LoadRuntime(c.LibPython)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, id string) (worker.Worker, error) {
			return gil.Start(ctx, gil.Config{
				Module: c.Module, Paths: c.Paths, Runtime: rt, ID: id, Logger: c.Logger,
				InterruptGrace: c.InterruptGrace, Host: hostSet, Concurrency: c.WorkerConcurrency,
			})
		}, nil
	}
}
