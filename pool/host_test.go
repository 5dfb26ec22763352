package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	if err := os.WriteFile(filepath.Join(dir, "host_pool_adapter.py"), []byte(hostPoolAdapter), 0o644); err != nil {
		t.Fatal(err)
	}
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
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close(context.Background())
				sess = p.Session("s1", pool.StrictQueue)
				defer sess.Close(context.Background())

				var got []any
				if err := p.Call(ctx, "outer", map[string]any{"how": "pool"}, &got); err != nil {
					t.Fatal(err)
				}
				inner := <-nestedErr
				if size == 1 {
					if !errors.Is(inner, pool.ErrReentrant) || got[0] != "error" {
						t.Fatalf("a pool of one calling itself: got %v (inner %v), want ErrReentrant", got, inner)
					}
				} else if inner != nil || got[0] != "ok" || got[1] != int64(3) {
					t.Fatalf("a pool of two calling itself: got %v (inner %v), want [ok 3]", got, inner)
				}
				// The session's own worker waits on the host function: the
				// nested session call can never run.
				if err := sess.Call(ctx, "outer", map[string]any{"how": "session"}, &got); err != nil {
					t.Fatal(err)
				}
				if inner := <-nestedErr; !errors.Is(inner, pool.ErrReentrant) || got[0] != "error" {
					t.Fatalf("a strict session calling itself: got %v (inner %v), want ErrReentrant", got, inner)
				}
				if ctx.Err() != nil {
					t.Fatal("took until the deadline")
				}
			})
		}
	}
}
