package subproc_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

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
