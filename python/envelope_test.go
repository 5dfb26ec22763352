package python

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

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
	if _, err := DecodeReply(b, "cmd", "cid"); !errors.Is(err, pymarshal.ErrTooLarge) {
		t.Fatalf("DecodeReply of an envelope of %d Nones: got %v, want ErrTooLarge", n, err)
	}
	if _, err := DecodeLogs(b[15:]); !errors.Is(err, pymarshal.ErrTooLarge) {
		t.Fatalf("DecodeLogs of %d Nones: got %v, want ErrTooLarge", n, err)
	}
	// An ordinary envelope with a log record decodes.
	ok, err := pymarshal.Marshal(pymarshal.Tuple{int64(0), []byte{'N'}, []any{pymarshal.Tuple{int64(20), "hello from the handler", "adapter", "cid", "greet", 1.5}}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := DecodeReply(ok, "cmd", "cid")
	if err != nil || len(r.Logs) != 1 {
		t.Fatalf("ordinary envelope: got %d records, error %v; want 1, nil", len(r.Logs), err)
	}
}
