package python

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/pymarshal"
)

// A reply envelope whose log records are built to expand (a million
// one-byte Nones: 16 MiB of Go slots for 1 MiB of input) is refused by
// the envelope's tight budget, not decoded into the host's memory.
func TestDecodeReplyEnvelopeBudget(t *testing.T) {
	const n = 1 << 20
	b := []byte{'(', 3, 0, 0, 0, 'i', 0, 0, 0, 0, 's', 0, 0, 0, 0, '['}
	b = binary.LittleEndian.AppendUint32(b, n)
	b = append(b, bytes.Repeat([]byte{'N'}, n)...)
	_, err := DecodeReply(b, "cmd", "cid")
	require.ErrorIs(t, err, pymarshal.ErrTooLarge, "DecodeReply of an envelope of %d Nones", n)
	_, err = DecodeLogs(b[15:])
	require.ErrorIs(t, err, pymarshal.ErrTooLarge, "DecodeLogs of %d Nones", n)
	// An ordinary envelope with a log record decodes.
	ok, err := pymarshal.Marshal(pymarshal.Tuple{int64(0), []byte{'N'}, []any{pymarshal.Tuple{int64(20), "hello from the handler", "adapter", "cid", "greet", 1.5}}})
	require.NoError(t, err)
	r, err := DecodeReply(ok, "cmd", "cid")
	require.NoError(t, err, "ordinary envelope")
	require.Len(t, r.Logs, 1, "ordinary envelope")
}
