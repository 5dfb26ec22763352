package subproc_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const matrixAdapter = `
import numpy as np
import snakepit

@snakepit.command
def double_lists(m):
    # What a handler had to do before arrays: nested lists both ways.
    return (np.asarray(m, dtype=np.float64) * 2).tolist()

@snakepit.command
def double(m):
    return m * 2

@snakepit.command
def echo_bytes(b):
    return b
`

// matrixWorker starts a process-profile worker on Debian's CPython 3.11,
// which has python3-numpy.
func matrixWorker(tb testing.TB) *subproc.Worker {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "matrix_adapter.py"), []byte(matrixAdapter), 0o644); err != nil {
		tb.Fatal(err)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "matrix_adapter", Paths: []string{dir}, Python: pymatrix.Python311(tb).Executable, Registry: testRegistry(tb),
	})
	if err != nil {
		tb.Fatalf("start (is python3-numpy installed?): %v", err)
	}
	tb.Cleanup(func() { w.Close(context.Background()) })
	return w
}

func matrix(rows, cols int) [][]float64 {
	m := make([][]float64, rows)
	for i := range m {
		m[i] = make([]float64, cols)
		for j := range m[i] {
			m[i][j] = float64(i*cols + j)
		}
	}
	return m
}

func flatMatrix(rows, cols int) []float64 {
	f := make([]float64, rows*cols)
	for i := range f {
		f[i] = float64(i)
	}
	return f
}

func callInto(tb testing.TB, w *subproc.Worker, command string, args map[string]any, out any) {
	tb.Helper()
	enc, err := pymarshal.Marshal(args)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := w.Call(context.Background(), &worker.Request{Command: command, Args: enc})
	if err != nil {
		tb.Fatal(err)
	}
	if err := pymarshal.Unmarshal(resp.Result, out); err != nil {
		tb.Fatal(err)
	}
}

// TestNumpyMatrix: a 10k × 8 float64 matrix crosses to numpy and back as
// an Array, and as nested lists, with the same values.
func TestNumpyMatrix(t *testing.T) {
	w := matrixWorker(t)
	a, err := pymarshal.NewArray(flatMatrix(10000, 8), 10000, 8)
	if err != nil {
		t.Fatal(err)
	}
	var got pymarshal.Array
	callInto(t, w, "double", map[string]any{"m": a}, &got)
	data, err := pymarshal.ArrayData[float64](got)
	if err != nil {
		t.Fatal(err)
	}
	if got.DType != "<f8" || len(got.Shape) != 2 || got.Shape[0] != 10000 || got.Shape[1] != 8 {
		t.Fatalf("got %s %v, want <f8 [10000 8]", got.DType, got.Shape)
	}
	for i, v := range data {
		if v != float64(2*i) {
			t.Fatalf("element %d: got %v, want %v", i, v, 2*i)
		}
	}
	var rows [][]float64
	callInto(t, w, "double", map[string]any{"m": a}, &rows)
	var lists [][]float64
	callInto(t, w, "double_lists", map[string]any{"m": matrix(10000, 8)}, &lists)
	if len(rows) != 10000 || len(lists) != 10000 || rows[9999][7] != lists[9999][7] || rows[9999][7] != 2*79999 {
		t.Fatalf("got rows %d and lists %d, want 10000 with the same values", len(rows), len(lists))
	}
}

// BenchmarkNumpyMatrix: a 10k × 8 float64 matrix round trip through numpy
// (doubled) in the process profile on Debian's CPython 3.11: as nested
// lists, and as an Array read back as a view or as [][]float64; and, for
// reference, a bytes echo of the same size.
func BenchmarkNumpyMatrix(b *testing.B) {
	w := matrixWorker(b)
	a, err := pymarshal.NewArray(flatMatrix(10000, 8), 10000, 8)
	if err != nil {
		b.Fatal(err)
	}
	nested := matrix(10000, 8)
	b.Run("lists", func(b *testing.B) {
		for b.Loop() {
			var out [][]float64
			callInto(b, w, "double_lists", map[string]any{"m": nested}, &out)
		}
	})
	b.Run("array", func(b *testing.B) {
		for b.Loop() {
			var out pymarshal.Array
			callInto(b, w, "double", map[string]any{"m": a}, &out)
			if _, err := pymarshal.ArrayData[float64](out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bytes-echo", func(b *testing.B) {
		// The transport alone: the same number of bytes each way.
		raw := a.Data
		for b.Loop() {
			var out []byte
			callInto(b, w, "echo_bytes", map[string]any{"b": raw}, &out)
		}
	})
	b.Run("array-to-rows", func(b *testing.B) {
		for b.Loop() {
			var out [][]float64
			callInto(b, w, "double", map[string]any{"m": a}, &out)
		}
	})
}
