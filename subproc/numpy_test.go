package subproc_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const numpyAdapter = `
import numpy as np
import snakepit

@snakepit.command
def stats(values):
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "doubled": a * 2, "version": np.__version__}
`

// TestNumpy: numpy (Debian's python3-numpy, for the system CPython 3.11)
// works in the process profile; its arrays come back as pymarshal.Array.
func TestNumpy(t *testing.T) {
	if pymatrix.WantMinor() != 11 {
		t.Log("numpy is tested in the CPython 3.11 run (TestVersions), where Debian's python3-numpy is installed")
		return
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "numpy_adapter.py"), []byte(numpyAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "numpy_adapter", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t),
	})
	if err != nil {
		t.Fatalf("start (is python3-numpy installed?): %v", err)
	}
	defer w.Close(context.Background())
	args, _ := pymarshal.Marshal(map[string]any{"values": []any{1, 2, 3}})
	resp, err := w.Call(context.Background(), &worker.Request{Command: "stats", Args: args})
	if err != nil {
		t.Fatal(err)
	}
	v, err := pymarshal.Decode(resp.Result)
	if err != nil {
		t.Fatal(err)
	}
	m := v.(map[string]any)
	doubled, _ := m["doubled"].(pymarshal.Array)
	data, err := pymarshal.ArrayData[float64](doubled)
	if m["mean"] != 2.0 || err != nil || !reflect.DeepEqual(data, []float64{2, 4, 6}) {
		t.Fatalf("got %v (%v)", m, err)
	}
	t.Logf("numpy %v in the process profile", m["version"])
}

const numpyHostAdapter = `
import numpy as np
import snakepit

@snakepit.command
def scale(ctx, n):
    a = np.arange(n, dtype=np.float64).reshape(n // 4, 4)
    r = ctx.host.scale(m=a, k=3.0)
    back = r["m"]
    return {"type": type(back).__name__, "shape": list(back.shape), "ok": bool((back == a * 3.0).all())}
`

// TestNumpyHostCall: a numpy matrix of 2 MB crosses a host call both ways
// through the host-call region, its data out of band: Go gets it as a
// pymarshal.Array, and the Array Go returns reaches Python as an ndarray.
func TestNumpyHostCall(t *testing.T) {
	if pymatrix.WantMinor() != 11 {
		t.Log("numpy is tested in the CPython 3.11 run (TestVersions), where Debian's python3-numpy is installed")
		return
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "numpy_host.py"), []byte(numpyHostAdapter), 0o644))
	set, err := host.NewSet(host.New("scale", func(ctx context.Context, a struct {
		M pymarshal.Array `json:"m"`
		K float64         `json:"k"`
	}) (map[string]any, error) {
		in, err := pymarshal.ArrayData[float64](a.M)
		if err != nil {
			return nil, err
		}
		out := make([]float64, len(in))
		for i, v := range in {
			out[i] = v * a.K
		}
		m, err := pymarshal.NewArray(out, a.M.Shape...)
		return map[string]any{"m": m}, err
	}))
	require.NoError(t, err)
	w, err := subproc.Start(context.Background(), subproc.Config{
		Module: "numpy_host", Paths: []string{dir}, Python: pythonExe(t), Registry: testRegistry(t), Host: set,
	})
	require.NoError(t, err)
	defer w.Close(context.Background())
	const n = 1 << 18 // 2 MiB of float64
	args, _ := pymarshal.Marshal(map[string]any{"n": n})
	resp, err := w.Call(context.Background(), &worker.Request{Command: "scale", Args: args})
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, pymarshal.Unmarshal(resp.Result, &got))
	require.Equal(t, map[string]any{"type": "ndarray", "shape": []any{int64(n / 4), int64(4)}, "ok": true}, got)
}
