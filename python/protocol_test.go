package python_test

import (
	"errors"
	"testing"
	"time"

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
			if !errors.As(err, &nse) || nse.What != "argument" {
				t.Fatalf("got %v, want an argument NotSerializableError", err)
			}
		})
	}
	req := &worker.Request{Command: "c", Args: dict, CorrelationID: "cid", SessionID: "sid"}
	b, err := python.EncodeCall(nil, req, time.Time{})
	if err != nil {
		t.Fatalf("got %v, want no error", err)
	}
	v, err := pymarshal.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	tup, ok := v.([]any)
	if !ok || len(tup) != 6 || tup[2] != "cid" || tup[3] != "sid" {
		t.Fatalf("got %#v, want a 6-tuple with the request's ids", v)
	}
}
