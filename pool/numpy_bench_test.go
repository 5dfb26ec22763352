package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
)

const numpyAdapter = `
import numpy as np
import snakepit

@snakepit.command
def double_lists(m):
    # What a handler had to do without arrays: nested lists both ways.
    return (np.asarray(m, dtype=np.float64) * 2).tolist()

@snakepit.command
def double(m):
    return m * 2
`

// BenchmarkNumpyMatrix: a 10k × 8 float64 matrix doubled by numpy in a
// process-profile pool on Debian's CPython 3.11, through Call as a user
// writes it: as nested lists ([][]float64 both ways), and as a
// pymarshal.Array (read back as an Array, or as [][]float64).
func BenchmarkNumpyMatrix(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "numpy_adapter.py"), []byte(numpyAdapter), 0o644); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Python: pymatrix.Python311(b).Executable, Module: "numpy_adapter", Paths: []string{dir}, Size: 1})
	if err != nil {
		b.Fatalf("start (is python3-numpy installed?): %v", err)
	}
	defer p.Close(ctx)
	const rows, cols = 10000, 8
	nested := make([][]float64, rows)
	flat := make([]float64, rows*cols)
	for i := range nested {
		nested[i] = flat[i*cols : (i+1)*cols : (i+1)*cols]
		for j := range nested[i] {
			nested[i][j] = float64(i*cols + j)
		}
	}
	a, err := pymarshal.NewArray(flat, rows, cols)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("lists", func(b *testing.B) {
		for b.Loop() {
			var out [][]float64
			if err := p.Call(ctx, "double_lists", map[string]any{"m": nested}, &out); err != nil || len(out) != rows {
				b.Fatalf("got %d rows, %v", len(out), err)
			}
		}
	})
	b.Run("array", func(b *testing.B) {
		for b.Loop() {
			var out pymarshal.Array
			if err := p.Call(ctx, "double", map[string]any{"m": a}, &out); err != nil {
				b.Fatal(err)
			}
			if d, err := pymarshal.ArrayData[float64](out); err != nil || len(d) != rows*cols || d[1] != 2 {
				b.Fatalf("got %d values, %v", len(d), err)
			}
		}
	})
	b.Run("array-to-rows", func(b *testing.B) {
		for b.Loop() {
			var out [][]float64
			if err := p.Call(ctx, "double", map[string]any{"m": a}, &out); err != nil || len(out) != rows {
				b.Fatalf("got %d rows, %v", len(out), err)
			}
		}
	})
}
