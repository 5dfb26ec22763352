package pool_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// checkedArgs is a worker that records, per call, whether the request
// vouched for its arguments (worker.Request.ArgsChecked).
type checkedArgs struct {
	instant
	mu      sync.Mutex
	checked []bool // guarded by mu
}

func (w *checkedArgs) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	w.mu.Lock()
	w.checked = append(w.checked, req.ArgsChecked)
	w.mu.Unlock()
	return w.resp, nil
}

// TestArgsChecked: Call vouches for the arguments it encoded itself, so
// the worker does not walk them again, unless they hold a RawValue (bytes
// the encoder copies unchecked); CallRaw's arguments, the caller's bytes,
// are never vouched for.
func TestArgsChecked(t *testing.T) {
	ctx := context.Background()
	w := &checkedArgs{instant: instant{id: "w", done: make(chan struct{}), resp: &worker.Response{Result: []byte("N")}}}
	p, err := pool.New(ctx, pool.Config{Size: 1, NewWorker: func(context.Context, string) (worker.Worker, error) { return w, nil }})
	require.NoError(t, err)
	defer p.Close(ctx)
	raw, _ := pymarshal.Marshal(map[string]any{"a": 1})
	s := p.Session("s", pool.Hint)
	calls := []struct {
		name string
		call func() error
		want bool
	}{
		{"Call map", func() error { return p.Call(ctx, "c", map[string]any{"a": []any{1, "x"}}, nil) }, true},
		{"Call struct", func() error { return p.Call(ctx, "c", struct{ A int }{1}, nil) }, true},
		{"Call nil", func() error { return p.Call(ctx, "c", nil, nil) }, true},
		{"Call RawValue", func() error { return p.Call(ctx, "c", map[string]any{"a": pymarshal.RawValue("N")}, nil) }, false},
		{"Call nested RawValue", func() error {
			return p.Call(ctx, "c", map[string]any{"a": []any{map[string]any{"b": pymarshal.RawValue("N")}}}, nil)
		}, false},
		{"CallRaw", func() error { _, err := p.CallRaw(ctx, "c", raw); return err }, false},
		{"Session.Call", func() error { return s.Call(ctx, "c", map[string]any{"a": 1}, nil) }, true},
		{"Session.CallRaw", func() error { _, err := s.CallRaw(ctx, "c", raw); return err }, false},
	}
	for i, c := range calls {
		require.NoError(t, c.call(), c.name)
		w.mu.Lock()
		got := w.checked[i]
		w.mu.Unlock()
		assert.Equal(t, c.want, got, "%s: ArgsChecked", c.name)
	}
}

// TestCallRawValueArgsChecked: a RawValue in Call's arguments that is not
// one value (here it closes the dict early and adds a value after it) is
// refused by the worker, as in CallRaw, rather than shifting the call's
// other fields.
func TestCallRawValueArgsChecked(t *testing.T) {
	p := typedPool(t, pool.Thread)
	ctx := context.Background()
	var out any
	err := p.Call(ctx, "echo", map[string]any{"d": pymarshal.RawValue("N0N")}, &out)
	var nse *worker.NotSerializableError
	require.ErrorAs(t, err, &nse)
	require.ErrorIs(t, err, pymarshal.ErrMalformed)
	err = p.Call(ctx, "echo", map[string]any{"d": pymarshal.RawValue("N")}, &out)
	require.NoError(t, err, "a well-formed RawValue")
	require.Nil(t, out, "a well-formed RawValue")
}
