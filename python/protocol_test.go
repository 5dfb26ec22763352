package python

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
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

// Args is spliced into the call as it is: bytes after the dict would be
// read as the call's correlation and session ids (selecting another
// session's state), so anything but exactly one dict is refused.
func TestEncodeCallChecksArgs(t *testing.T) {
	sid, _ := pymarshal.Marshal("someone-elses-session")
	spliced := append(append([]byte{'{', '0'}, sid...), sid...)
	list, _ := pymarshal.Marshal([]any{int64(1)})
	for name, args := range map[string][]byte{"trailing values": spliced, "a list": list, "truncated": {'{', 'z', 1}} {
		_, err := EncodeCall(nil, &worker.Request{Command: "c", Args: args}, time.Time{})
		if !errors.Is(err, worker.ErrNotSerializable) {
			t.Errorf("%s: got %v, want ErrNotSerializable", name, err)
		}
	}
	good, _ := pymarshal.Marshal(map[string]any{"x": int64(1)})
	if _, err := EncodeCall(nil, &worker.Request{Command: "c", Args: good}, time.Time{}); err != nil {
		t.Fatalf("a dict: %v", err)
	}
}
