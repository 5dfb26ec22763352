package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
)

const typedAdapter = `
import snakepit

@snakepit.command
def echo(d):
    return d
`

// typedPayload is a small record, the shape most calls carry.
func typedPayload() map[string]any {
	return map[string]any{"id": 42, "name": "snake", "score": 1.5, "tags": []any{"a", "b"}}
}

// typedResult is typedPayload as a Go struct.
type typedResult struct {
	ID    int      `json:"id"`
	Name  string   `json:"name"`
	Score float64  `json:"score"`
	Tags  []string `json:"tags"`
}

func typedPool(tb testing.TB, profile pool.Profile) *pool.Pool {
	tb.Helper()
	dir := tb.TempDir()
	require.NoError(tb, os.WriteFile(filepath.Join(dir, "typed_adapter.py"), []byte(typedAdapter), 0o644))
	p, err := pool.New(context.Background(), pool.Config{Profile: profile, Module: "typed_adapter", Paths: []string{dir}, Size: 1})
	require.NoError(tb, err)
	tb.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// BenchmarkTypedCall compares, in one run, a typed Call (a map argument
// holding a 4-key record, a struct result) with CallRaw of the same
// argument bytes, encoded beforehand, on one thread-profile worker.
func BenchmarkTypedCall(b *testing.B) {
	p := typedPool(b, pool.Thread)
	ctx := context.Background()
	payload := typedPayload()
	raw, err := pymarshal.Marshal(map[string]any{"d": payload})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Call", func(b *testing.B) {
		b.ReportAllocs()
		var res typedResult
		for b.Loop() {
			if err := p.Call(ctx, "echo", map[string]any{"d": payload}, &res); err != nil {
				b.Fatal(err)
			}
		}
		if res.ID != 42 || res.Name != "snake" || len(res.Tags) != 2 {
			b.Fatalf("got %+v, want the payload back", res)
		}
	})
	b.Run("CallRaw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.CallRaw(ctx, "echo", raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTypedCallRatio runs a typed Call and a CallRaw of the same
// payload in every iteration, in alternating order, and reports the median
// time of each (call-p50-ns, raw-p50-ns) and their ratio (call/raw): load
// on the machine falls on both alike, and the medians leave out the
// iterations a collection or a preemption hit.
func BenchmarkTypedCallRatio(b *testing.B) {
	p := typedPool(b, pool.Thread)
	ctx := context.Background()
	payload := typedPayload()
	raw, err := pymarshal.Marshal(map[string]any{"d": payload})
	if err != nil {
		b.Fatal(err)
	}
	var res typedResult
	typed := func() {
		if err := p.Call(ctx, "echo", map[string]any{"d": payload}, &res); err != nil {
			b.Fatal(err)
		}
	}
	untyped := func() {
		if _, err := p.CallRaw(ctx, "echo", raw); err != nil {
			b.Fatal(err)
		}
	}
	const maxSamples = 1 << 20
	tCall, tRaw := make([]time.Duration, 0, maxSamples), make([]time.Duration, 0, maxSamples)
	i := 0
	for b.Loop() {
		t0 := time.Now()
		var c, r time.Duration
		if i%2 == 0 {
			typed()
			t1 := time.Now()
			untyped()
			c, r = t1.Sub(t0), time.Since(t1)
		} else {
			untyped()
			t1 := time.Now()
			typed()
			r, c = t1.Sub(t0), time.Since(t1)
		}
		if len(tCall) < maxSamples {
			tCall, tRaw = append(tCall, c), append(tRaw, r)
		}
		i++
	}
	slices.Sort(tCall)
	slices.Sort(tRaw)
	c, r := tCall[len(tCall)/2], tRaw[len(tRaw)/2]
	b.ReportMetric(float64(c.Nanoseconds()), "call-p50-ns")
	b.ReportMetric(float64(r.Nanoseconds()), "raw-p50-ns")
	b.ReportMetric(float64(c)/float64(r), "call/raw")
}
