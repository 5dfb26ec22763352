package host_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
)

type lookupArgs struct {
	UserID int    `json:"user_id"`
	Field  string `json:"field"`
}

type user struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
}

func replyOf(t *testing.T, b []byte) (ok bool, value any) {
	t.Helper()
	if len(b) == 0 {
		t.Fatal("empty reply")
	}
	ok = b[0] != host.ReplyError
	if !ok {
		b = b[1:]
	}
	v, err := pymarshal.Decode(b)
	if err != nil {
		t.Fatalf("reply %q: %v", b, err)
	}
	return ok, v
}

func TestSet(t *testing.T) {
	var seen lookupArgs
	set, err := host.NewSet(
		host.New("lookup", func(ctx context.Context, a lookupArgs) (user, error) {
			seen = a
			if a.UserID == 0 {
				return user{}, host.WithPythonType(errors.New("no such user"), "KeyError")
			}
			return user{Name: "ada", Roles: []string{"admin"}}, nil
		}),
		host.New("wait", func(ctx context.Context, _ struct{}) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}),
		host.New("boom", func(ctx context.Context, _ map[string]any) (int, error) { panic("kaboom") }),
		host.Raw("raw", func(ctx context.Context, args []byte) ([]byte, error) { return args, nil }),
		host.Raw("none", func(ctx context.Context, args []byte) ([]byte, error) { return nil, nil }),
	)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(set.Names(), ","); got != "boom,lookup,none,raw,wait" {
		t.Fatalf("Names: got %s", got)
	}
	args, _ := pymarshal.Marshal(map[string]any{"user_id": 7, "field": "name"})
	ok, v := replyOf(t, set.Invoke(context.Background(), "lookup", args))
	if !ok || fmt.Sprint(v) != "map[name:ada roles:[admin]]" || seen != (lookupArgs{7, "name"}) {
		t.Fatalf("lookup: got %v %v (args %+v)", ok, v, seen)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dl, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()
	bad, _ := pymarshal.Marshal(map[string]any{"user_id": "seven"})
	zero, _ := pymarshal.Marshal(map[string]any{"user_id": 0})
	for _, tc := range []struct {
		ctx        context.Context
		name       string
		args       []byte
		kind, text string
		pyType     string
	}{
		{context.Background(), "lookup", zero, "error", "no such user", "KeyError"},
		{context.Background(), "lookup", bad, "arguments", "host: arguments", ""},
		{context.Background(), "nope", nil, "unknown", `unknown function "nope"`, ""},
		{context.Background(), "boom", nil, "panic", `"boom" panicked: kaboom`, ""},
		{context.Background(), "raw", []byte{host.ReplyError, 'N'}, "error", "not marshal data", ""},
		{ctx, "wait", nil, "cancelled", "context canceled", ""},
		{dl, "wait", nil, "deadline", "context deadline exceeded", ""},
	} {
		ok, v := replyOf(t, set.Invoke(tc.ctx, tc.name, tc.args))
		l, _ := v.([]any)
		if ok || len(l) != 3 || l[0] != tc.kind || !strings.Contains(l[1].(string), tc.text) || l[2] != tc.pyType {
			t.Errorf("%s: got ok=%v %v, want an error reply [%s, ...%s..., %q]", tc.name, ok, v, tc.kind, tc.text, tc.pyType)
		}
	}
	if ok, v := replyOf(t, set.Invoke(context.Background(), "none", nil)); !ok || v != nil {
		t.Fatalf("an empty result: got ok=%v %v, want None", ok, v)
	}
	if _, err := set.Call(context.Background(), "boom", nil); !errors.As(err, new(*host.PanicError)) {
		t.Fatalf("Call of a panicking function: got %v, want a *PanicError", err)
	}
	if _, err := set.Call(context.Background(), "nope", nil); !errors.Is(err, host.ErrUnknownFunction) {
		t.Fatalf("Call of an unknown name: got %v, want ErrUnknownFunction", err)
	}
	var none *host.Set
	if _, err := none.Call(context.Background(), "x", nil); !errors.Is(err, host.ErrUnknownFunction) || len(none.Names()) != 0 {
		t.Fatalf("nil set: got %v", err)
	}
}

func TestNewSetRefuses(t *testing.T) {
	f := func(ctx context.Context, a any) (any, error) { return nil, nil }
	for _, names := range [][]string{{""}, {"_private"}, {"call"}, {"names"}, {"has space"}, {"9lives"}, {"dup", "dup"}, {"héllo"}} {
		var funcs []host.Func
		for _, n := range names {
			funcs = append(funcs, host.New(n, f))
		}
		if _, err := host.NewSet(funcs...); err == nil {
			t.Errorf("NewSet(%q): got no error", names)
		}
	}
	if _, err := host.NewSet(host.Raw("ok_name2", nil)); err == nil {
		t.Error("NewSet of a nil function: got no error")
	}
}

// TestAppendInvoke: the reply is appended after what dst holds, which
// stays as it was, for results and errors alike; the typed function's
// reused argument and result boxes keep nothing of an earlier call.
func TestAppendInvoke(t *testing.T) {
	type args struct {
		A int    `json:"a"`
		B string `json:"b"`
		L []int  `json:"l"`
	}
	set, err := host.NewSet(
		host.New("echo", func(ctx context.Context, a args) (args, error) { return a, nil }),
		host.New("fail", func(ctx context.Context, a args) (args, error) { return a, errors.New("no") }),
	)
	if err != nil {
		t.Fatal(err)
	}
	prefix := []byte("keep")
	full, _ := pymarshal.Marshal(map[string]any{"a": 1, "b": "x", "l": []int{1, 2}})
	empty, _ := pymarshal.Marshal(map[string]any{})
	out := set.AppendInvoke(bytes.Clone(prefix), context.Background(), "echo", full)
	var got args
	if !bytes.HasPrefix(out, prefix) {
		t.Fatalf("got %q, want it to start with %q", out, prefix)
	}
	if err := pymarshal.Unmarshal(out[len(prefix):], &got); err != nil || got.A != 1 || got.B != "x" || len(got.L) != 2 {
		t.Fatalf("got %+v, %v, want {1 x [1 2]}", got, err)
	}
	// The next call with no arguments sees zero values, not the last call's.
	out = set.AppendInvoke(nil, context.Background(), "echo", empty)
	got = args{}
	if err := pymarshal.Unmarshal(out, &got); err != nil || got.A != 0 || got.B != "" || got.L != nil {
		t.Fatalf("got %+v, %v, want zero values", got, err)
	}
	out = set.AppendInvoke(bytes.Clone(prefix), context.Background(), "fail", full)
	if !bytes.HasPrefix(out, prefix) || out[len(prefix)] != host.ReplyError {
		t.Fatalf("got %q, want %q then an error reply", out, prefix)
	}
	if want := host.Reply(nil, errors.New("no")); !bytes.Equal(out[len(prefix):], want) {
		t.Fatalf("got %q, want %q", out[len(prefix):], want)
	}
}

// TestAppendInvokeBuffers: a New function gets out-of-band arguments as
// the buffers themselves and returns large results out of band (from
// outMin bytes); a Raw function gets them inline and returns none; an
// error adds no buffers; bad references are an arguments error.
func TestAppendInvokeBuffers(t *testing.T) {
	type blobArgs struct {
		Blob []byte `json:"blob"`
		Tag  string `json:"tag"`
	}
	var seen []byte
	set, err := host.NewSet(
		host.New("echo", func(ctx context.Context, a blobArgs) (map[string]any, error) {
			seen = a.Blob
			return map[string]any{"blob": a.Blob, "tag": a.Tag}, nil
		}),
		host.New("fail", func(ctx context.Context, a blobArgs) ([]byte, error) { return a.Blob, errors.New("no") }),
		host.Raw("raw", func(ctx context.Context, args []byte) ([]byte, error) {
			return args, nil // the arguments dict as the result
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("b"), 200)
	args, in, err := pymarshal.AppendMarshalOOB(nil, map[string]any{"blob": blob, "tag": "t"}, 100, nil)
	if err != nil || len(in) != 1 {
		t.Fatalf("got %d buffers, %v; want 1", len(in), err)
	}
	prior := [][]byte{[]byte("prior")}
	out, bufs := set.AppendInvokeBuffers([]byte("pre"), context.Background(), "echo", args, in, 100, prior)
	if unsafe.SliceData(seen) != unsafe.SliceData(blob) {
		t.Errorf("the function got a copy of the out-of-band argument, want the buffer itself")
	}
	if len(bufs) != 2 || unsafe.SliceData(bufs[1]) != unsafe.SliceData(blob) {
		t.Fatalf("got %d reply buffers, want prior plus the result's blob (itself)", len(bufs))
	}
	v, err := pymarshal.DecodeOOB(out[3:], bufs)
	if err != nil || !bytes.Equal(v.(map[string]any)["blob"].([]byte), blob) {
		t.Fatalf("got %v, %v; want the blob back", v, err)
	}
	// Without outMin, the result is inline.
	out, bufs = set.AppendInvokeBuffers(nil, context.Background(), "echo", args, in, 0, nil)
	if len(bufs) != 0 || !bytes.Contains(out, blob) {
		t.Fatalf("outMin 0: got %d buffers, want the result inline", len(bufs))
	}
	// Errors: the reply, and no buffers added.
	out, bufs = set.AppendInvokeBuffers(nil, context.Background(), "fail", args, in, 100, prior)
	if len(bufs) != 1 || out[0] != host.ReplyError {
		t.Fatalf("error: got %q and %d buffers, want an error reply and prior alone", out, len(bufs))
	}
	// Raw: inline arguments.
	out, bufs = set.AppendInvokeBuffers(nil, context.Background(), "raw", args, in, 100, nil)
	if ok, v := replyOf(t, out); !ok || len(bufs) != 0 || !bytes.Equal(v.(map[string]any)["blob"].([]byte), blob) {
		t.Fatalf("raw: got %v (%d buffers), want the arguments with the blob inline", v, len(bufs))
	}
	// A reference to a buffer that is not there.
	for _, name := range []string{"echo", "raw"} {
		out, _ = set.AppendInvokeBuffers(nil, context.Background(), name, args, [][]byte{}, 100, nil)
		if ok, v := replyOf(t, out); ok || v.([]any)[0] != "arguments" {
			t.Fatalf("%s, missing buffer: got %v, want an arguments error", name, v)
		}
	}
}
