package gil

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// decodeHostReply returns a host reply's error kind and message ("" for
// a success) and its value.
func decodeHostReply(t *testing.T, reply []byte) (kind, msg string, v any) {
	t.Helper()
	if len(reply) == 0 {
		t.Fatal("got an empty reply")
	}
	failed := reply[0] == host.ReplyError
	if failed {
		reply = reply[1:]
	}
	v, err := pymarshal.Decode(reply)
	if err != nil {
		t.Fatalf("decode reply %q: %v", reply, err)
	}
	if !failed {
		return "", "", v
	}
	l, ok := v.([]any)
	if !ok || len(l) != 3 {
		t.Fatalf("got error reply %v, want [kind, message, type]", v)
	}
	return l[0].(string), l[1].(string), nil
}

// TestServeHostEndedCall: a host call for the current call runs with the
// call's ctx and correlation id; once the call ended it is refused, with
// the reason (a deadline: kind "deadline") when it ended early; a token
// that is not the current call's is refused too.
func TestServeHostEndedCall(t *testing.T) {
	var seen context.Context
	set, err := host.NewSet(host.New("echo", func(ctx context.Context, a map[string]any) (string, error) {
		seen = ctx
		return "ran", nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	w := &Worker{id: "w", host: set}
	for _, c := range []struct {
		name     string
		ctx      func() (context.Context, context.CancelFunc)
		wantKind string
	}{
		{"returned", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }, "error"},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		}, "deadline"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := c.ctx()
			defer cancel()
			hc := w.newHostCall(ctx, "cid-"+c.name)
			hc.token = 41
			w.cur.Store(hc)
			if kind, msg, v := decodeHostReply(t, serveHost(w, 41, "echo")); kind != "" || v != "ran" {
				t.Fatalf("in flight: got %q %q %v, want the function's result", kind, msg, v)
			}
			if got := worker.CorrelationID(seen); got != "cid-"+c.name {
				t.Fatalf("got correlation id %q, want %q", got, "cid-"+c.name)
			}
			if kind, msg, _ := decodeHostReply(t, serveHost(w, 40, "echo")); kind != "error" || !strings.Contains(msg, errCallEnded) {
				t.Fatalf("other token: got %q %q, want an error saying %q", kind, msg, errCallEnded)
			}
			w.endHostCall(hc)
			if seen.Err() == nil {
				t.Fatal("the host function's ctx is not done after its call ended")
			}
			seen = nil
			kind, msg, _ := decodeHostReply(t, serveHost(w, 41, "echo"))
			if kind != c.wantKind || !strings.Contains(msg, errCallEnded) {
				t.Fatalf("ended: got %q %q, want kind %q saying %q", kind, msg, c.wantKind, errCallEnded)
			}
			if seen != nil {
				t.Fatal("the host function ran for an ended call")
			}
		})
	}
}

// serveHost is w.serveHost without buffers, returning the reply alone.
func serveHost(w *Worker, token uint64, name string) []byte {
	out, _ := w.serveHost(token, name, nil, nil, nil, false)
	return out
}
