package subproc

import (
	"context"
	"testing"
)

// BenchmarkNoopPipelined is BenchmarkNoop (one caller) on a worker in the
// sequential pipelined mode (depth 2).
func BenchmarkNoopPipelined(b *testing.B) {
	w := benchWorkerConfig(b, Config{Concurrency: 1, PipelineDepth: 2})
	req := noopRequest(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Call(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
