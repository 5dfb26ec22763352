package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/subproc"
)

// TestBLASThreads: a process-profile pool's workers, and its fork server's
// template and forked workers, get Config.BLASThreads (1 by default) as the
// thread count of native math libraries.
func TestBLASThreads(t *testing.T) {
	for _, k := range subproc.BLASThreadVars {
		t.Setenv(k, "")
		require.NoError(t, os.Unsetenv(k))
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blas_adapter.py"), []byte(`
import os, snakepit
# The template's value, when the fork server imports the adapter.
AT_IMPORT = os.environ.get("OPENBLAS_NUM_THREADS", "unset")

@snakepit.command
def threads():
    return [AT_IMPORT, os.environ.get("OPENBLAS_NUM_THREADS", "unset"), os.environ.get("OMP_NUM_THREADS", "unset")]
`), 0o644))
	for _, c := range []struct {
		name    string
		threads int
		fork    bool
		want    []string
	}{
		{"default", 0, false, []string{"1", "1", "1"}},
		{"two", 2, false, []string{"2", "2", "2"}},
		{"off", -1, false, []string{"unset", "unset", "unset"}},
		{"forkserver", 3, true, []string{"3", "3", "3"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := pool.Config{Profile: pool.Process, Module: "blas_adapter", Paths: []string{dir}, Size: 1, BLASThreads: c.threads}
			if c.fork {
				cfg.ForkServer = &pool.ForkServerOptions{ImportAdapter: true}
			}
			p, err := pool.New(ctx, cfg)
			require.NoError(t, err)
			defer p.Close(ctx)
			var got []string
			require.NoError(t, p.Call(ctx, "threads", nil, &got))
			assert.Equal(t, c.want, got)
		})
	}
}
