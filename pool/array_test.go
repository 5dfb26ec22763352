package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

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
	require.NoError(t, os.WriteFile(filepath.Join(dir, "array_adapter.py"), []byte(arrayAdapter), 0o644))
	m, err := pymarshal.NewArray([]float32{1, 2, 3, 4, 5, 6}, 3, 2)
	require.NoError(t, err)
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		t.Run(profile.String(), func(t *testing.T) {
			ctx := context.Background()
			p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "array_adapter", Paths: []string{dir}, Size: 1})
			require.NoError(t, err)
			defer p.Close(ctx)

			var info struct {
				Type     string `json:"type"`
				Shape    []int  `json:"shape"`
				Format   string `json:"format"`
				ReadOnly bool   `json:"readonly"`
			}
			require.NoError(t, p.Call(ctx, "info", map[string]any{"x": m}, &info))
			want := "memoryview"
			if pymatrix.WantMinor() == 11 && profile == pool.Process {
				want = "ndarray"
			}
			require.Equal(t, want, info.Type, "what the handler got")
			require.Equal(t, []int{3, 2}, info.Shape, "the shape the handler got")
			require.Contains(t, []string{"f", "<f4"}, info.Format, "the format the handler got: want float32")
			require.True(t, info.ReadOnly, "the handler got a writable array: %+v", info)
			t.Logf("the handler got a %s", info.Type)

			var back pymarshal.Array
			require.NoError(t, p.Call(ctx, "echo", map[string]any{"x": m}, &back))
			require.Equal(t, m, back, "echo")
			var rows [][]float32
			require.NoError(t, p.Call(ctx, "doubled", map[string]any{"x": m}, &rows))
			require.Equal(t, [][]float32{{2, 4}, {6, 8}, {10, 12}}, rows, "doubled")
			// A large one (a memoryview result of 800 KB on 3.14) comes
			// back as an array too, not as its raw bytes.
			large, err := pymarshal.NewArray(make([]float64, 100000), 1000, 100)
			require.NoError(t, err)
			require.NoError(t, p.Call(ctx, "echo", map[string]any{"x": large}, &back))
			// Not require.Equal: its message would hold the 800 KB twice.
			if !reflect.DeepEqual(back, large) {
				t.Fatalf("large echo: got %s %v, want <f8 [1000 100]", back.DType, back.Shape)
			}
			// A nested array, inside a list in a dict.
			var nested struct{ X []pymarshal.Array }
			require.NoError(t, p.Call(ctx, "echo", map[string]any{"x": map[string]any{"X": []any{m, m}}}, &nested))
			require.Len(t, nested.X, 2, "nested echo")
			require.Equal(t, m, nested.X[1], "nested echo")
			// A forged marker is refused as bad arguments, and the worker
			// goes on.
			bad := []byte("{z\x01x)\x05z\x09\x00snakepitz\x05arrayz\x03<f8)\x01i\x02\x00\x00\x00s\x03\x00\x00\x00abc0")
			_, err = p.CallRaw(ctx, "echo", bad)
			var ba *worker.BadArgumentsError
			require.ErrorAs(t, err, &ba, "forged marker")
			require.NoError(t, p.Call(ctx, "echo", map[string]any{"x": m}, &back), "after a refused call")
			// A forged array in a result is malformed data, not a panic.
			require.ErrorIs(t, p.Call(ctx, "forged", nil, &back), pymarshal.ErrMalformed, "forged result")
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
