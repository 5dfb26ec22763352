package pool_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pool"
)

const hostPoolAdapter = `
import snakepit

@snakepit.command
def add(a, b):
    return a + b

@snakepit.command
def outer(ctx, how):
    """Asks Go to call back into the pool ("pool" or "session")."""
    try:
        return ["ok", ctx.host.nested(how=how)]
    except snakepit.HostError as e:
        return ["error", str(e)]
`

// TestHostReentrant: a host function may call the pool it was called from:
// the call goes to another worker; one that could never get a worker (a
// pool of one, or the strict session whose worker is waiting) fails at
// once with ErrReentrant, not at its deadline.
func TestHostReentrant(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "host_pool_adapter.py"), []byte(hostPoolAdapter), 0o644))
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		for _, size := range []int{1, 2} {
			t.Run(profile.String()+"/size"+string(rune('0'+size)), func(t *testing.T) {
				var p *pool.Pool
				var sess *pool.Session
				type nestedArgs struct {
					How string `json:"how"`
				}
				nestedErr := make(chan error, 1)
				nested := host.New("nested", func(ctx context.Context, a nestedArgs) (int, error) {
					var n int
					var err error
					if a.How == "session" {
						err = sess.Call(ctx, "add", map[string]any{"a": 1, "b": 2}, &n)
					} else {
						err = p.Call(ctx, "add", map[string]any{"a": 1, "b": 2}, &n)
					}
					nestedErr <- err
					return n, err
				})
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				var err error
				p, err = pool.New(ctx, pool.Config{Profile: profile, Module: "host_pool_adapter", Paths: []string{dir}, Size: size, Host: []host.Func{nested}})
				require.NoError(t, err)
				defer p.Close(context.Background())
				sess = p.Session("s1", pool.StrictQueue)
				defer sess.Close(context.Background())

				var got []any
				require.NoError(t, p.Call(ctx, "outer", map[string]any{"how": "pool"}, &got))
				inner := <-nestedErr
				if size == 1 {
					require.ErrorIs(t, inner, pool.ErrReentrant, "a pool of one calling itself")
					require.Equal(t, "error", got[0], "a pool of one calling itself: got %v", got)
				} else {
					require.NoError(t, inner, "a pool of two calling itself")
					require.Equal(t, []any{"ok", int64(3)}, got, "a pool of two calling itself")
				}
				// The session's own worker waits on the host function: the
				// nested session call can never run.
				require.NoError(t, sess.Call(ctx, "outer", map[string]any{"how": "session"}, &got))
				require.ErrorIs(t, <-nestedErr, pool.ErrReentrant, "a strict session calling itself")
				require.Equal(t, "error", got[0], "a strict session calling itself: got %v", got)
				require.NoError(t, ctx.Err(), "took until the deadline")
			})
		}
	}
}
