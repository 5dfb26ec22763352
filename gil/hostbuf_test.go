package gil_test

import (
	"context"
	"fmt"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

type dataArgs struct {
	Data []byte `json:"data"`
}

// addrOf returns b's address and length, as Python compares them.
func addrOf(b []byte) []int64 {
	return []int64{int64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))), int64(len(b))}
}

// collectAddrs appends the address and length of every []byte in v.
func collectAddrs(v any, out [][]int64) [][]int64 {
	switch x := v.(type) {
	case []byte:
		out = append(out, addrOf(x))
	case []any:
		for _, e := range x {
			out = collectAddrs(e, out)
		}
	case map[string]any:
		for _, k := range []string{"d", "x", "t", "small"} {
			if e, ok := x[k]; ok {
				out = collectAddrs(e, out)
			}
		}
	}
	return out
}

func startHostBufs(t testing.TB) *gil.Worker {
	t.Helper()
	set, err := host.NewSet(
		host.New("addr", func(ctx context.Context, a dataArgs) ([]int64, error) { return addrOf(a.Data), nil }),
		host.New("addrs", func(ctx context.Context, a map[string]any) ([][]int64, error) { return collectAddrs(a, nil), nil }),
		host.New("size", func(ctx context.Context, a dataArgs) (int, error) { return len(a.Data), nil }),
		host.New("echo", func(ctx context.Context, a dataArgs) ([]byte, error) { return a.Data, nil }),
		host.Raw("raw_len", func(ctx context.Context, args []byte) ([]byte, error) {
			v, err := pymarshal.Decode(args) // inline: no buffers here
			if err != nil {
				return nil, err
			}
			m := v.(map[string]any)
			return pymarshal.Marshal([]any{len(m["data"].([]byte)), m["t"]})
		}),
		host.New("arr", func(ctx context.Context, a struct {
			A pymarshal.Array `json:"a"`
			N int             `json:"n"`
		}) (map[string]any, error) {
			back := make([]float64, a.N)
			for i := range back {
				back[i] = 0.5
			}
			arr, err := pymarshal.NewArray(back, a.N)
			if err != nil {
				return nil, err
			}
			return map[string]any{"go": []any{a.A.DType, a.A.Shape, addrOf(a.A.Data)[1]}, "back": arr}, nil
		}),
	)
	require.NoError(t, err)
	w, err := gil.Start(context.Background(), gil.Config{Module: "hostbuf_adapter", Paths: []string{abs(t, "testdata")},
		Runtime: runtimeFor(t), Host: set})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return w
}

// TestHostBuffersZeroCopy: a host.New function gets a large bytes-like
// argument as the Python object's own memory (the address ctypes gives in
// Python), for bytes, bytearray and memoryview slices at an offset,
// read-only and writable, at the top level and nested; below
// embed.HostBufferMin the value is a copy. Every value arrives intact.
func TestHostBuffersZeroCopy(t *testing.T) {
	w := startHostBufs(t)
	const min = embed.HostBufferMin
	for _, n := range []int{0, 100, min - 1, min, min + 1, 3 << 20} {
		for _, kind := range []string{"bytes", "bytearray", "mv_ro", "mv_rw"} {
			t.Run(fmt.Sprintf("%s/%d", kind, n), func(t *testing.T) {
				got := mustHcall(t, w, "send", map[string]any{"kind": kind, "n": n}).(map[string]any)
				require.Equal(t, true, got["same"], "the value Python sent is not its payload")
				goSaw := got["go"].([]any)
				require.Equal(t, int64(n), goSaw[1], "length Go saw")
				nested := got["nested"].([]any)
				require.True(t, len(nested) == 3, "got %d []byte values nested, want 3 (d.x[1], t[0], small)", len(nested))
				require.Equal(t, []any{goSaw[0] != int64(0), int64(2)}, []any{true, nested[2].([]any)[1]}, "small")
				if n < min {
					require.True(t, goSaw[0] != got["py"], "%d bytes (below %d): Go saw Python's memory, want a copy", n, min)
					return
				}
				for i, a := range [][]any{goSaw, nested[0].([]any), nested[1].([]any)} {
					if a[0] != got["py"] || a[1] != int64(n) {
						t.Fatalf("value %d: Go saw %#x (%d bytes), Python's memory is at %#x", i, a[0], a[1], got["py"])
					}
				}
			})
		}
	}
}

// TestHostBuffersEcho: a []byte result (here the argument itself) comes
// back as bytes with the same content, small or large; a large one that is
// all of a bytes argument is that bytes object itself (immutable: no copy
// needed), a bytearray's or a view's a new bytes.
func TestHostBuffersEcho(t *testing.T) {
	w := startHostBufs(t)
	for _, n := range []int{0, 100, embed.HostBufferMin, 1 << 20} {
		for _, kind := range []string{"bytes", "bytearray", "mv_rw", "mv_ro"} {
			got := mustHcall(t, w, "echo", map[string]any{"kind": kind, "n": n})
			same := kind == "bytes" && (n >= embed.HostBufferMin || n == 0) // b"" is a singleton
			require.Equal(t, []any{"bytes", true, int64(n), same}, got, "%s of %d bytes", kind, n)
		}
	}
}

// TestHostBuffersRaw: a host.Raw function gets large arguments inline in
// its marshal bytes (tuples kept), as it takes no buffers.
func TestHostBuffersRaw(t *testing.T) {
	w := startHostBufs(t)
	got := mustHcall(t, w, "raw_len", map[string]any{"n": 1 << 20})
	require.Equal(t, []any{int64(1 << 20), []any{int64(1), "x"}}, got)
}

// TestHostBuffersArrays: an array.array reaches Go as a pymarshal.Array
// (its data out of band when large) and an Array result reaches Python as
// a read-only array (a memoryview without numpy) with its shape.
func TestHostBuffersArrays(t *testing.T) {
	w := startHostBufs(t)
	for _, n := range []int{3, 20000} {
		got := mustHcall(t, w, "arrays", map[string]any{"n": n}).(map[string]any)
		require.Equal(t, []any{"<f8", []any{int64(n)}, int64(8 * n)}, got["go"], "n=%d", n)
		require.Equal(t, []any{"memoryview", "d", true, []any{int64(n)}, 0.5 * float64(n)}, got["back"], "n=%d", n)
	}
}

// BenchmarkHostCall16MiB: a handler calls a host function with 16 MiB of
// bytes: "arg" returns its length (the bytes cross without a copy), "echo"
// returns them (the bytes object itself comes back: no copy), and
// "echo-bytearray" sends a bytearray, whose echo is copied once, into the
// bytes Python gets; "copy-floor" is a Go allocate-and-copy of 16 MiB.
// ns/op is one host call.
func BenchmarkHostCall16MiB(b *testing.B) {
	const n = 16 << 20
	w := startHostBufs(b)
	ctx := context.Background()
	run := func(b *testing.B, name, kind string) {
		warm := mustMarshal(b, map[string]any{"name": name, "n": n, "rounds": 1, "kind": kind})
		if _, err := w.Call(ctx, &worker.Request{Command: "bench", Args: warm}); err != nil {
			b.Fatal(err)
		}
		args := mustMarshal(b, map[string]any{"name": name, "n": n, "rounds": b.N, "kind": kind})
		b.SetBytes(n)
		b.ResetTimer()
		resp, err := w.Call(ctx, &worker.Request{Command: "bench", Args: args})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		var got int
		if err := pymarshal.Unmarshal(resp.Result, &got); err != nil || got != n {
			b.Fatalf("got %d, %v; want %d", got, err, n)
		}
	}
	b.Run("arg", func(b *testing.B) { run(b, "size", "bytes") })
	b.Run("echo", func(b *testing.B) { run(b, "echo", "bytes") })
	b.Run("echo-bytearray", func(b *testing.B) { run(b, "echo", "bytearray") })
	b.Run("copy-floor", func(b *testing.B) {
		data := make([]byte, n)
		b.SetBytes(n)
		for range b.N {
			out := make([]byte, n)
			copy(out, data)
			if out[n-1] != data[n-1] {
				b.Fatal("copy")
			}
		}
	})
}

// inlineHost is a worker.Host that is not a *host.Set: it takes marshal
// bytes alone, and replies with what it found in them.
type inlineHost struct{}

func (inlineHost) Names() []string { return []string{"addr"} }

func (inlineHost) Invoke(ctx context.Context, name string, args []byte) []byte {
	v, err := pymarshal.Decode(args)
	if err != nil {
		return host.Reply(nil, err)
	}
	d := v.(map[string]any)["data"].([]byte)
	out, err := pymarshal.Marshal([]int64{0, int64(len(d))})
	return host.Reply(out, err)
}

// TestHostBuffersForeignHost: a worker.Host other than *host.Set gets
// large arguments inline, as it takes no buffers.
func TestHostBuffersForeignHost(t *testing.T) {
	w, err := gil.Start(context.Background(), gil.Config{Module: "hostbuf_adapter", Paths: []string{abs(t, "testdata")},
		Runtime: runtimeFor(t), Host: inlineHost{}})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	v, err := hcall(t, w, "echo_addr", map[string]any{"n": 1 << 20})
	require.NoError(t, err)
	require.Equal(t, []any{int64(0), int64(1 << 20)}, v)
}
