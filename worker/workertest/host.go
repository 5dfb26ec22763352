package workertest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// hostProbe is the Go side of the suite's host functions: what they saw.
type hostProbe struct {
	mu       sync.Mutex
	blocked  chan struct{} // closed when block has started
	unblock  chan error    // block's ctx error, once its ctx ended
	barrierN int
	arrived  int
	release  chan struct{}
}

func newHostProbe() *hostProbe {
	return &hostProbe{blocked: make(chan struct{}), unblock: make(chan error, 1)}
}

// set returns the host functions the suite registers.
func (p *hostProbe) set() *host.Set {
	type addArgs struct {
		A int `json:"a"`
		B int `json:"b"`
	}
	type failArgs struct {
		Typed    bool `json:"typed"`
		Deadline bool `json:"deadline"`
	}
	type barrierArgs struct {
		N int `json:"n"`
		I int `json:"i"`
	}
	type blobArgs struct {
		Data []byte `json:"data"`
	}
	s, err := host.NewSet(
		host.New("add", func(ctx context.Context, a addArgs) (int, error) { return a.A + a.B, nil }),
		host.New("whoami", func(ctx context.Context, _ struct{}) (map[string]any, error) {
			d, ok := ctx.Deadline()
			return map[string]any{"cid": worker.CorrelationID(ctx), "deadline": ok, "until": time.Until(d).Seconds()}, nil
		}),
		host.New("fail", func(ctx context.Context, a failArgs) (any, error) {
			switch {
			case a.Typed:
				return nil, host.WithPythonType(errors.New("no such key"), "KeyError")
			case a.Deadline:
				return nil, fmt.Errorf("upstream: %w", context.DeadlineExceeded)
			}
			return nil, errors.New("go failed")
		}),
		host.New("block", func(ctx context.Context, _ struct{}) (any, error) {
			close(p.blocked)
			<-ctx.Done()
			p.unblock <- ctx.Err()
			return nil, ctx.Err()
		}),
		host.New("boom", func(ctx context.Context, _ struct{}) (any, error) { panic("host function exploded") }),
		host.New("invert", func(ctx context.Context, a blobArgs) (map[string]any, error) {
			back := make([]byte, len(a.Data))
			for i, b := range a.Data {
				back[i] = ^b
			}
			return map[string]any{"len": len(a.Data), "back": back}, nil
		}),
		host.New("barrier", func(ctx context.Context, a barrierArgs) (int, error) {
			p.mu.Lock()
			if p.release == nil || p.arrived == p.barrierN {
				p.release, p.arrived, p.barrierN = make(chan struct{}), 0, a.N
			}
			p.arrived++
			rel := p.release
			if p.arrived == p.barrierN {
				close(rel)
			}
			p.mu.Unlock()
			select {
			case <-rel:
				return a.I, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}),
	)
	if err != nil {
		panic(err)
	}
	return s
}

func (s *suite) testHost(t *testing.T, p *hostProbe, start func(t *testing.T, h worker.Host) worker.Worker) {
	callV := func(t *testing.T, r *worker.Request) any {
		t.Helper()
		v, err := s.call(t, r)
		if err != nil {
			t.Fatalf("%s: %v", r.Command, err)
		}
		return v
	}
	t.Run("Values", func(t *testing.T) {
		if got := callV(t, req("host_add", map[string]any{"a": 2, "b": 40})); got != int64(42) {
			t.Fatalf("host_add: got %v, want 42", got)
		}
		if got := callV(t, req("host_add", map[string]any{"a": 2, "b": 40, "enum_a": true})); got != int64(42) {
			t.Fatalf("host_add of an IntEnum: got %v, want 42", got)
		}
		ctx, cancel := context.WithTimeout(ctxBG, time.Minute)
		defer cancel()
		r := req("host_info", nil)
		resp, err := s.w.Call(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		v := decodeOrFail(t, resp.Result).(map[string]any)
		if got := fmt.Sprint(v["names"]); got != "[add barrier block boom fail invert whoami]" {
			t.Errorf("names: got %s", got)
		}
		who := v["who"].(map[string]any)
		if who["cid"] != r.CorrelationID || who["deadline"] != true || who["until"].(float64) < 30 || who["until"].(float64) > 60 {
			t.Errorf("whoami: got %v, want the call's correlation id %q and its deadline (about 60 s away)", who, r.CorrelationID)
		}
		if v["has_add"] != true {
			t.Errorf("dir(ctx.host) lacks add: %v", v)
		}
	})
	t.Run("Errors", func(t *testing.T) {
		for _, tc := range []struct {
			args  map[string]any
			kind  string
			text  string
			check string
		}{
			{map[string]any{"name": "fail"}, "error", "go failed", ""},
			{map[string]any{"name": "fail", "typed": true}, "error", "no such key", "key_error"},
			{map[string]any{"name": "fail", "deadline": true}, "deadline", "upstream: context deadline exceeded", "timeout"},
			{map[string]any{"name": "add", "a": "two"}, "arguments", "arguments", "type_error"},
			{map[string]any{"name": "nope"}, "unknown", "nope", ""},
			{map[string]any{"name": "boom"}, "panic", "host function exploded", ""},
		} {
			v, ok := callV(t, req("host_error", tc.args)).(map[string]any)
			if !ok || v["kind"] != tc.kind || !hasText(v["text"], tc.text) || (tc.check != "" && v[tc.check] != true) {
				t.Errorf("%v: got %v, want kind %q, text with %q, %s", tc.args, v, tc.kind, tc.text, tc.check)
			}
		}
	})
	t.Run("Threads", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctxBG, 30*time.Second)
		defer cancel()
		resp, err := s.w.Call(ctx, req("host_threads", map[string]any{"n": 4}))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(decodeOrFail(t, resp.Result)); got != "[0 1 2 3]" {
			t.Fatalf("4 concurrent host calls from 4 threads: got %s, want [0 1 2 3]", got)
		}
	})
	t.Run("LargeBytes", func(t *testing.T) {
		// Bytes both ways, below and above the sizes from which profiles
		// pass them out of band (thread: 64 KiB; process: 256 KiB), from
		// threads at once.
		ctx, cancel := context.WithTimeout(ctxBG, time.Minute)
		defer cancel()
		sizes := []int{1000, 100 << 10, 300 << 10, 3 << 20}
		resp, err := s.w.Call(ctx, req("host_invert", map[string]any{"sizes": sizes}))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(decodeOrFail(t, resp.Result)); got != "[true true true true]" {
			t.Fatalf("host calls with %v bytes each way: got %s, want [true true true true]", sizes, got)
		}
	})
	t.Run("Async", func(t *testing.T) {
		if got := fmt.Sprint(callV(t, req("host_async", nil))); got != "[3 7]" {
			t.Fatalf("host_async: got %s, want [3 7]", got)
		}
	})
	t.Run("Stream", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctxBG, 30*time.Second)
		defer cancel()
		st, err := s.w.Stream(ctx, req("host_stream", map[string]any{"n": 3}))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for i := range 3 {
			b, err := st.Next(ctx)
			if err != nil {
				t.Fatalf("item %d: %v", i, err)
			}
			if got := decodeOrFail(t, b); got != int64(i+100) {
				t.Fatalf("item %d: got %v, want %d", i, got, i+100)
			}
		}
	})
	t.Run("AfterTheCall", func(t *testing.T) {
		if got := callV(t, req("host_keep_thread", nil)); got != "started" {
			t.Fatalf("host_keep_thread: %v", got)
		}
		if got := callV(t, req("host_late_result", nil)); got != "ended" {
			t.Fatalf("a host call from a thread after its call ended: got %v, want HostError kind \"ended\"", got)
		}
	})
	t.Run("DeadlineWhileInHost", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctxBG, 500*time.Millisecond)
		defer cancel()
		_, err := s.w.Call(ctx, req("host_block", nil))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a call waiting in a host function past its deadline: got %v, want DeadlineExceeded", err)
		}
		select {
		case <-p.blocked:
		default:
			t.Fatal("the host function never ran")
		}
		select {
		case e := <-p.unblock:
			if !errors.Is(e, context.DeadlineExceeded) {
				t.Fatalf("host function's ctx ended with %v, want DeadlineExceeded", e)
			}
		case <-time.After(hangGuard):
			t.Fatal("the host function's ctx did not end after its call's deadline")
		}
		// The worker is usable again.
		ctx2, cancel2 := context.WithTimeout(ctxBG, 30*time.Second)
		defer cancel2()
		var last error
		for ctx2.Err() == nil {
			if _, last = s.w.Call(ctx2, req("host_add", map[string]any{"a": 1, "b": 1})); last == nil {
				break
			}
		}
		if last != nil {
			t.Fatalf("after an interrupted host call: %v", last)
		}
	})
	t.Run("NoHost", func(t *testing.T) {
		w := start(t, nil)
		defer w.Close(ctxBG)
		resp, err := w.Call(ctxBG, req("host_none", nil))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(decodeOrFail(t, resp.Result)); got != "[[] unknown]" {
			t.Fatalf("a worker without host functions: got %s, want [[] unknown]", got)
		}
	})
}

// hangGuard bounds waits that only a hang would exceed.
const hangGuard = 30 * time.Second

func hasText(v any, sub string) bool {
	s, ok := v.(string)
	return ok && strings.Contains(s, sub)
}

func decodeOrFail(t *testing.T, b []byte) any {
	t.Helper()
	v, err := pymarshal.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
