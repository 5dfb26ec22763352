package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"

	"github.com/prometheus/procfs"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
)

// BenchmarkPipelineProcess: a no-op called by 64 goroutines on a process
// pool of 2 workers, without pipelining (depth 0) and with a depth of 2,
// 4 and 16; ns/op is per call. It is the load of the pipeline scenario of
// the benchmark program, for profiling the host (-cpuprofile) and for
// counting system calls and context switches per call (perf stat). It
// reports the CPU time per call of the host and of the worker processes
// (cpu-µs/call, both together, user and system), which bounds the
// throughput once the cores are full.
func BenchmarkPipelineProcess(b *testing.B) {
	dir := b.TempDir()
	const adapter = "import snakepit\n\n\n@snakepit.command\ndef noop(req):\n    return req\n"
	if err := os.WriteFile(filepath.Join(dir, "pipebench_adapter.py"), []byte(adapter), 0o644); err != nil {
		b.Fatal(err)
	}
	args, err := pymarshal.Marshal(map[string]any{"req": map[string]any{"id": 7}})
	if err != nil {
		b.Fatal(err)
	}
	for _, depth := range []int{0, 2, 4, 16} {
		b.Run("depth="+strconv.Itoa(depth), func(b *testing.B) {
			ctx := context.Background()
			p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "pipebench_adapter", Paths: []string{dir},
				Size: 2, QueueSize: 1024, PipelineDepth: depth})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close(ctx)
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			b.ReportAllocs()
			before := cpuTime(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := p.CallRaw(ctx, "noop", args); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-before)/1e3/float64(b.N), "cpu-µs/call")
		})
	}
}

// cpuTime is the CPU time (user and system, in nanoseconds) this process
// and its live child processes (the workers) have used so far.
func cpuTime(b *testing.B) int64 {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	total := ru.Utime.Nano() + ru.Stime.Nano()
	procs, err := procfs.AllProcs()
	if err != nil {
		b.Fatal(err)
	}
	me := os.Getpid()
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil || st.PPID != me {
			continue // gone meanwhile, or not a worker
		}
		total += int64(st.CPUTime() * 1e9)
	}
	return total
}
