package remote_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/remote"
	"github.com/snakepit-go/snakepit/worker"
)

// hangGuard bounds a test's calls.
func hangGuard(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestCalls: calls spread over three instances (one of them a
// thread-profile pool) and come back with what a local call gives:
// results, correlation ids, attachments, typed errors; $SRV.STATS
// reports each instance's pool.
func TestCalls(t *testing.T) {
	url := natsServer(t, 0)
	a := startInstance(t, url, "a", instanceOpts{})
	b := startInstance(t, url, "b", instanceOpts{})
	c := startInstance(t, url, "c", instanceOpts{profile: "thread"})
	p := newClient(t, connect(t, url), "py", remote.Options{})
	ctx := hangGuard(t)

	seen := map[string]int{}
	for range 60 {
		var tag string
		require.NoError(t, p.Call(ctx, "tag", nil, &tag))
		seen[tag]++
	}
	for _, in := range []*instance{a, b, c} {
		assert.Positive(t, seen[in.tag], "calls served by %s: got %v, want some on each", in.tag, seen)
	}

	var echo struct {
		Value       []int  `json:"value"`
		CID         string `json:"cid"`
		Attachments []int  `json:"attachments"`
	}
	err := p.Call(pool.WithCorrelationID(ctx, "order-42"), "echo", map[string]any{"value": []int{1, 2}}, &echo,
		remote.WithAttachments([]byte("abc"), make([]byte, 1000)))
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2}, echo.Value)
	assert.Equal(t, "order-42", echo.CID)
	assert.Equal(t, []int{3, 1000}, echo.Attachments)

	raw, err := p.CallRaw(ctx, "tag", nil)
	require.NoError(t, err)
	assert.NotEmpty(t, raw)

	err = p.Call(pool.WithCorrelationID(ctx, "bad-1"), "boom", map[string]any{"message": "no way"}, nil)
	var pe *worker.PythonError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "ValueError", pe.Type)
	assert.Equal(t, "no way", pe.Message)
	assert.Contains(t, err.Error(), "bad-1")
	var re *remote.RemoteError
	require.ErrorAs(t, err, &re)
	assert.Contains(t, []string{a.id, b.id, c.id}, re.Instance)

	err = p.Call(ctx, "nope", nil, nil)
	assert.ErrorIs(t, err, worker.ErrCommandNotFound)
	var nf *worker.CommandNotFoundError
	require.ErrorAs(t, err, &nf)
	assert.Contains(t, nf.Available, "tag")

	err = p.Call(ctx, "tag", map[string]any{"x": 1}, nil)
	assert.ErrorIs(t, err, worker.ErrBadArguments)
	err = p.Call(ctx, "squares", map[string]any{"n": 1}, nil)
	assert.ErrorIs(t, err, worker.ErrStreamMismatch)
	err = p.Call(ctx, "tag", []int{1}, nil)
	assert.ErrorIs(t, err, worker.ErrNotSerializable)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = p.Call(short, "sleep", map[string]any{"seconds": 5}, nil)
	assert.ErrorIs(t, err, context.DeadlineExceeded)

	st := p.Stats()
	assert.Equal(t, "py", st.Name)
	assert.GreaterOrEqual(t, st.Calls, int64(62))
	assert.GreaterOrEqual(t, st.Failed, int64(6))
	assert.Zero(t, st.InFlight)

	is, err := p.Instances(ctx, time.Second)
	require.NoError(t, err)
	ids := map[string]pool.Stats{}
	for _, s := range is {
		ids[s.ID] = s.Stats
	}
	require.Len(t, ids, 3, "got %v", is)
	for _, in := range []*instance{a, b, c} {
		assert.Equal(t, "py", ids[in.id].Name, "instance %s", in.tag)
		assert.Equal(t, 2, ids[in.id].Workers, "instance %s", in.tag)
	}
	assert.Equal(t, pool.Thread, ids[c.id].Profile)
}

// TestNoResponders: a pool nobody serves is a typed error, at once.
func TestNoResponders(t *testing.T) {
	url := natsServer(t, 0)
	p := newClient(t, connect(t, url), "nobody", remote.Options{})
	ctx := hangGuard(t)
	err := p.Call(ctx, "tag", nil, nil)
	require.ErrorIs(t, err, remote.ErrNoResponders)
	for _, err := range p.Stream(ctx, "squares", map[string]any{"n": 3}) {
		require.ErrorIs(t, err, remote.ErrNoResponders)
	}
	assert.Equal(t, int64(2), p.Stats().NoResponders)

	_, err = remote.New(connect(t, url), "bad name", remote.Options{})
	assert.ErrorIs(t, err, remote.ErrBadName)
	_, err = remote.New(connect(t, url), "x", remote.Options{Heartbeat: time.Second, DeadAfter: time.Second})
	assert.Error(t, err)
}

// TestPayloadTooLarge: requests, results and stream chunks over the
// server's max payload are refused with a typed error.
func TestPayloadTooLarge(t *testing.T) {
	url := natsServer(t, 64<<10)
	startInstance(t, url, "a", instanceOpts{size: 1})
	p := newClient(t, connect(t, url), "py", remote.Options{})
	ctx := hangGuard(t)

	err := p.Call(ctx, "echo", map[string]any{"value": make([]byte, 100<<10)}, nil)
	var pe *remote.PayloadError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "request", pe.What)
	assert.Equal(t, int64(64<<10), pe.Max)

	err = p.Call(ctx, "big", map[string]any{"n": 100 << 10}, nil)
	require.ErrorIs(t, err, remote.ErrPayloadTooLarge)

	var big []byte
	require.NoError(t, p.Call(ctx, "big", map[string]any{"n": 32 << 10}, &big))
	assert.Len(t, big, 32<<10)
}
