package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

const arrayAdapter = `
import snakepit

@snakepit.command
def info(x):
    kind = type(x).__name__
    fmt = x.format if kind == "memoryview" else x.dtype.str
    return {"type": kind, "shape": list(x.shape), "format": fmt, "readonly": kind != "memoryview" or x.readonly}

@snakepit.command
def echo(x):
    return x

@snakepit.command
def forged():
    return ("\x00snakepit", "array", "<f8", (2, 3), b"short")

@snakepit.command
def doubled(x):
    # Works on a memoryview and on a numpy array.
    import array
    flat = memoryview(x).cast("B").cast("f")
    return memoryview(array.array("f", [v * 2 for v in flat])).cast("B").cast("f", x.shape)
`

// TestArrays sends an Array through both profiles and gets arrays back: a
// numpy.ndarray in the handler where numpy imports (a process worker on
// Debian's 3.11 with python3-numpy), a memoryview of that format and shape
// otherwise (the hermetic 3.14 has no numpy, and thread workers on 3.11
// refuse it).
func TestArrays(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "array_adapter.py"), []byte(arrayAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := pymarshal.NewArray([]float32{1, 2, 3, 4, 5, 6}, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		t.Run(profile.String(), func(t *testing.T) {
			ctx := context.Background()
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "array_adapter", Paths: []string{dir}, Size: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(ctx)

			var info struct {
				Type     string `json:"type"`
				Shape    []int  `json:"shape"`
				Format   string `json:"format"`
				ReadOnly bool   `json:"readonly"`
			}
			if err := p.Call(ctx, "info", map[string]any{"x": m}, &info); err != nil {
				t.Fatal(err)
			}
			want := "memoryview"
			if pymatrix.WantMinor() == 11 && profile == pool.Process {
				want = "ndarray"
			}
			if info.Type != want {
				t.Fatalf("handler got %s, want %s", info.Type, want)
			}
			if !reflect.DeepEqual(info.Shape, []int{3, 2}) || (info.Format != "f" && info.Format != "<f4") || !info.ReadOnly {
				t.Fatalf("handler got %+v, want a read-only (3, 2) float32 array", info)
			}
			t.Logf("the handler got a %s", info.Type)

			var back pymarshal.Array
			if err := p.Call(ctx, "echo", map[string]any{"x": m}, &back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, m) {
				t.Fatalf("echo: got %+v, want %+v", back, m)
			}
			var rows [][]float32
			if err := p.Call(ctx, "doubled", map[string]any{"x": m}, &rows); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(rows, [][]float32{{2, 4}, {6, 8}, {10, 12}}) {
				t.Fatalf("doubled: got %v", rows)
			}
			// A large one (a memoryview result of 800 KB on 3.14) comes
			// back as an array too, not as its raw bytes.
			large, err := pymarshal.NewArray(make([]float64, 100000), 1000, 100)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Call(ctx, "echo", map[string]any{"x": large}, &back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, large) {
				t.Fatalf("large echo: got %s %v, want <f8 [1000 100]", back.DType, back.Shape)
			}
			// A nested array, inside a list in a dict.
			var nested struct{ X []pymarshal.Array }
			if err := p.Call(ctx, "echo", map[string]any{"x": map[string]any{"X": []any{m, m}}}, &nested); err != nil {
				t.Fatal(err)
			}
			if len(nested.X) != 2 || !reflect.DeepEqual(nested.X[1], m) {
				t.Fatalf("nested echo: got %+v", nested)
			}
			// A forged marker is refused as bad arguments, and the worker
			// goes on.
			bad := []byte("{z\x01x)\x05z\x09\x00snakepitz\x05arrayz\x03<f8)\x01i\x02\x00\x00\x00s\x03\x00\x00\x00abc0")
			_, err = p.CallRaw(ctx, "echo", bad)
			var ba *worker.BadArgumentsError
			if !errors.As(err, &ba) {
				t.Fatalf("forged marker: got %v, want a BadArgumentsError", err)
			}
			if err := p.Call(ctx, "echo", map[string]any{"x": m}, &back); err != nil {
				t.Fatalf("after a refused call: %v", err)
			}
			// A forged array in a result is malformed data, not a panic.
			if err := p.Call(ctx, "forged", nil, &back); !errors.Is(err, pymarshal.ErrMalformed) {
				t.Fatalf("forged result: got %v, want ErrMalformed", err)
			}
		})
	}
}

// BenchmarkArrayEcho: a 10k × 8 float64 Array echoed by a handler, in both
// profiles (a memoryview in Python on the hermetic 3.14).
func BenchmarkArrayEcho(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "array_adapter.py"), []byte(arrayAdapter), 0o644); err != nil {
		b.Fatal(err)
	}
	a, err := pymarshal.NewArray(make([]float64, 10000*8), 10000, 8)
	if err != nil {
		b.Fatal(err)
	}
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		b.Run(profile.String(), func(b *testing.B) {
			ctx := context.Background()
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "array_adapter", Paths: []string{dir}, Size: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close(ctx)
			b.SetBytes(int64(len(a.Data)))
			for b.Loop() {
				var out pymarshal.Array
				if err := p.Call(ctx, "echo", map[string]any{"x": a}, &out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
