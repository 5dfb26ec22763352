package python_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// TestEncodeCallArgsExactlyOneDict checks that EncodeCall refuses Args
// that are not exactly one marshalled dict: a dict followed by more
// values would replace the correlation and session ids in the call tuple.
func TestEncodeCallArgsExactlyOneDict(t *testing.T) {
	s1, _ := pymarshal.Marshal("evil-correlation")
	s2, _ := pymarshal.Marshal("other-session")
	smuggle := append(append([]byte{'{', '0'}, s1...), s2...)
	dict, _ := pymarshal.Marshal(map[string]any{"a": 1})
	list, _ := pymarshal.Marshal([]any{1})
	for name, args := range map[string][]byte{
		"dict then strings": smuggle,
		"dict then a byte":  append(append([]byte{}, dict...), '0'),
		"truncated dict":    dict[:len(dict)-1],
		"list":              list,
		"int keys":          {'{', 'i', 1, 0, 0, 0, 'i', 2, 0, 0, 0, '0'},
	} {
		t.Run(name, func(t *testing.T) {
			req := &worker.Request{Command: "c", Args: args, CorrelationID: "cid", SessionID: "sid"}
			_, err := python.EncodeCall(nil, req, time.Time{})
			var nse *worker.NotSerializableError
			require.ErrorAs(t, err, &nse, "want an argument NotSerializableError")
			require.Equal(t, "argument", nse.What, "NotSerializableError %v", err)
		})
	}
	req := &worker.Request{Command: "c", Args: dict, CorrelationID: "cid", SessionID: "sid"}
	b, err := python.EncodeCall(nil, req, time.Time{})
	require.NoError(t, err)
	v, err := pymarshal.Decode(b)
	require.NoError(t, err)
	require.IsType(t, []any{}, v, "want a 6-tuple with the request's ids")
	tup := v.([]any)
	require.Len(t, tup, 6, "want a 6-tuple with the request's ids")
	require.Equal(t, []any{"cid", "sid"}, tup[2:4], "the tuple's correlation and session ids: got %#v", v)
}

// TestEncodeCallTraceParent: a request's traceparent is the ninth element
// of the call tuple, with None in the buffers and call_id places where
// those are absent, in every encoding; without one the tuple is as before.
func TestEncodeCallTraceParent(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	plain := &worker.Request{Command: "c", CorrelationID: "cid", TraceParent: tp}
	bufs := &worker.Request{Command: "c", CorrelationID: "cid", TraceParent: tp, Buffers: [][]byte{[]byte("xy")}}
	decode := func(b []byte, err error) []any {
		t.Helper()
		require.NoError(t, err)
		v, err := pymarshal.Decode(b)
		require.NoError(t, err)
		tup, ok := v.([]any)
		require.True(t, ok, "a tuple, got %T", v)
		return tup
	}
	tup := decode(python.EncodeCall(nil, plain, time.Time{}))
	require.Len(t, tup, 9)
	assert.Nil(t, tup[6], "buffers")
	assert.Nil(t, tup[7], "call_id")
	assert.Equal(t, tp, tup[8])

	tup = decode(python.EncodeCallID(nil, plain, time.Time{}, 7))
	require.Len(t, tup, 9)
	assert.Equal(t, int64(7), tup[7])
	assert.Equal(t, tp, tup[8])

	tup = decode(python.EncodeCall(nil, bufs, time.Time{}))
	require.Len(t, tup, 9)
	assert.Equal(t, []any{[]byte("xy")}, tup[6])
	assert.Nil(t, tup[7])
	assert.Equal(t, tp, tup[8])

	mem := make([]byte, python.RegionCallSize(bufs))
	start, end, err := python.EncodeCallInRegion(mem, bufs, time.Time{})
	tup = decode(mem[start:end], err)
	require.Len(t, tup, 9)
	assert.IsType(t, []any{}, tup[6], "region spans")
	assert.Equal(t, tp, tup[8])

	tup = decode(python.EncodeCall(nil, &worker.Request{Command: "c", CorrelationID: "cid"}, time.Time{}))
	assert.Len(t, tup, 6, "no traceparent: the tuple as before")
}
