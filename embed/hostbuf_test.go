package embed_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/embed"
	"github.com/snakepit-go/snakepit/pymarshal"
)

// seenBufs is what a buffer-aware host handler saw: each call's decoded
// payload and the spans of its out-of-band buffers.
type seenBufs struct {
	mu    sync.Mutex
	value any
	addrs []uintptr
	lens  []int
	err   error
}

// TestHostCallBuffersIn: from a kwargs dict, bytes-like values of at least
// HostBufferMin bytes reach Go as the Python object's own memory (the
// address Python's ctypes sees), named by markers in the payload; smaller
// ones are inline. Every kind of buffer: bytes, bytearray, read-only and
// writable memoryview slices at an offset, array.array (an array marker),
// nested in dicts, lists and tuples.
func TestHostCallBuffersIn(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	var seen seenBufs
	in.SetHostHandler(func(token uint64, name string, payload []byte, bufs [][]byte, reply []byte, _ bool) ([]byte, [][]byte) {
		seen.mu.Lock()
		defer seen.mu.Unlock()
		seen.value, seen.err = pymarshal.DecodeOOB(payload, bufs)
		seen.addrs, seen.lens = nil, nil
		for _, b := range bufs {
			seen.addrs = append(seen.addrs, uintptr(unsafe.Pointer(unsafe.SliceData(b))))
			seen.lens = append(seen.lens, len(b))
		}
		return append(reply, 'N'), nil
	})
	mustExec(t, in, `import _snakepit_embed, ctypes, array
hc = _snakepit_embed.host_call
def raise_(reply):
    raise RuntimeError(reply)
def resolve_(value, bufs):
    return value
def addr(base, off):
    """The address of byte off of base's buffer (bytes or bytearray)."""
    if isinstance(base, bytes):
        return ctypes.cast(ctypes.c_char_p(base), ctypes.c_void_p).value + off
    return ctypes.addressof(ctypes.c_char.from_buffer(base)) + off
`)
	const min = embed.HostBufferMin
	for _, n := range []int{0, 1, min - 1, min, min + 1, 1 << 20} {
		for _, kind := range []string{"bytes", "bytearray", "mv_ro", "mv_rw"} {
			t.Run(fmt.Sprintf("%s/%d", kind, n), func(t *testing.T) {
				mustExec(t, in, fmt.Sprintf(`n = %d
kind = %q
raw = bytes(range(256)) * (n // 256 + 2)
if kind == "bytes":
    val = raw[3:3 + n]
    base, off = val, 0
elif kind == "bytearray":
    val = bytearray(raw[3:3 + n])
    base, off = val, 0
else:
    base = bytearray(raw[:n + 7]) if kind == "mv_rw" else raw[:n + 7]
    val = memoryview(base)[5:5 + n]
    if kind == "mv_ro":
        val = val.toreadonly()
    off = 5
r = hc(1, "f", {"x": val, "nested": {"l": [1, val, (val, "t")]}, "small": b"ab"}, raise_, resolve_)
`, n, kind))
				seen.mu.Lock()
				defer seen.mu.Unlock()
				require.NoError(t, seen.err)
				want := mustEval(t, in, "bytes(val)").([]byte)
				m := seen.value.(map[string]any)
				nested := m["nested"].(map[string]any)["l"].([]any)
				for i, got := range []any{m["x"], nested[1], nested[2].([]any)[0]} {
					b, ok := got.([]byte)
					if !ok || !bytes.Equal(b, want) {
						t.Fatalf("value %d: got %T of %d bytes, want the %d bytes sent", i, got, len(b), len(want))
					}
				}
				require.Equal(t, []byte("ab"), m["small"])
				if n < min {
					require.Empty(t, seen.addrs, "got out-of-band buffers for %d bytes (below %d)", n, min)
					return
				}
				require.Len(t, seen.addrs, 3, "got %d out-of-band buffers, want one per occurrence", len(seen.addrs))
				addr := uintptr(mustEvalInt(t, in, "addr(base, off)"))
				for i, a := range seen.addrs {
					if a != addr || seen.lens[i] != n {
						t.Fatalf("buffer %d: Go saw %#x (%d bytes), Python's memory is at %#x (%d bytes)", i, a, seen.lens[i], addr, n)
					}
				}
			})
		}
	}
	t.Run("many", func(t *testing.T) { // more than the builtin keeps on its stack
		mustExec(t, in, `many = [bytes([i]) * (65536 + i) for i in range(19)]
r = hc(1, "f", {"l": many}, raise_, resolve_)`)
		seen.mu.Lock()
		defer seen.mu.Unlock()
		require.NoError(t, seen.err)
		require.Len(t, seen.addrs, 19)
		l := seen.value.(map[string]any)["l"].([]any)
		for i, v := range l {
			b := v.([]byte)
			require.True(t, len(b) == 65536+i && b[0] == byte(i) && b[len(b)-1] == byte(i), "value %d: got %d bytes of %d", i, len(b), b[0])
			addr := uintptr(mustEvalInt(t, in, fmt.Sprintf("addr(many[%d], 0)", i)))
			require.Equal(t, addr, seen.addrs[i], "value %d: not Python's memory", i)
		}
	})
	t.Run("array", func(t *testing.T) {
		// The arrays stay alive while Go reads what it saw of them.
		mustExec(t, in, `small, big = array.array("i", [1, -2]), array.array("d", range(20000))
r = hc(1, "f", {"small": small, "big": big}, raise_, resolve_)`)
		seen.mu.Lock()
		defer seen.mu.Unlock()
		require.NoError(t, seen.err)
		m := seen.value.(map[string]any)
		small, ok := m["small"].(pymarshal.Array)
		require.True(t, ok, "small array: got %T", m["small"])
		require.Equal(t, "<i4", small.DType)
		require.Equal(t, []int{2}, small.Shape)
		require.Equal(t, []int32{1, -2}, mustArrayData[int32](t, small))
		big, ok := m["big"].(pymarshal.Array)
		require.True(t, ok, "big array: got %T", m["big"])
		require.Equal(t, "<f8", big.DType)
		require.Equal(t, []int{20000}, big.Shape)
		require.Len(t, seen.addrs, 1)
		require.Equal(t, uintptr(unsafe.Pointer(unsafe.SliceData(big.Data))), seen.addrs[0], "the array's data is not the buffer")
		d := mustArrayData[float64](t, big)
		require.Equal(t, 19999.0, d[19999])
	})
}

func mustArrayData[T pymarshal.Numeric](t *testing.T, a pymarshal.Array) []T {
	t.Helper()
	d, err := pymarshal.ArrayData[T](a)
	require.NoError(t, err)
	return d
}

func mustEvalInt(t *testing.T, in *embed.Interpreter, expr string) int64 {
	t.Helper()
	v, ok := mustEval(t, in, expr).(int64)
	if !ok {
		t.Fatalf("%s: got %T, want an int", expr, v)
	}
	return v
}

// TestHostCallBuffersResize: a bytearray passed out of band cannot be
// resized while Go reads it: another Python thread that tries gets
// BufferError (the export is held until the handler returns), and can
// again once it has.
func TestHostCallBuffersResize(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	entered, release := make(chan struct{}), make(chan struct{})
	in.SetHostHandler(func(token uint64, name string, payload []byte, bufs [][]byte, reply []byte, _ bool) ([]byte, [][]byte) {
		switch name {
		case "hold": // holds the buffer until "release"
			close(entered)
			select {
			case <-release:
			case <-time.After(hangGuard):
			}
			return pymarshal.AppendBytes(reply, []byte{byte(len(bufs))}), nil
		case "entered": // waits until "hold" runs
			select {
			case <-entered:
			case <-time.After(hangGuard):
			}
		case "release":
			close(release)
		}
		return append(reply, 'N'), nil
	})
	mustExec(t, in, `import _snakepit_embed, threading
hc = _snakepit_embed.host_call
def raise_(reply):
    raise RuntimeError(reply)
ba = bytearray(200000)
out = {}
def holder():
    out["held"] = hc(1, "hold", {"data": ba}, raise_)
def resize():
    try:
        ba.extend(b"x")
        return "resized"
    except BufferError as e:
        return "BufferError: %s" % e
t = threading.Thread(target=holder)
t.start()
hc(1, "entered", {}, raise_)
out["during"] = resize()
hc(1, "release", {}, raise_)
t.join()
out["after"] = resize()
`)
	got := mustEval(t, in, "[out['held'], out['during'][:11], out['after'], len(ba)]")
	require.Equal(t, []any{[]byte{1}, "BufferError", "resized", int64(200001)}, got)
}

// TestHostCallBuffersOut: with resolve_, a handler's out-of-band reply
// buffers reach Python as bytes objects (one copy each), passed with the
// decoded value to resolve_; without it (four arguments), a handler that
// returns some fails the call instead of dropping them.
func TestHostCallBuffersOut(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	big := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	in.SetHostHandler(func(token uint64, name string, payload []byte, _ [][]byte, reply []byte, replyBufs bool) ([]byte, [][]byte) {
		v := map[string]any{"a": big, "b": []byte("small"), "l": []any{big[:embed.HostBufferMin]}, "ok": replyBufs}
		out, bufs, err := pymarshal.AppendMarshalOOB(reply, v, embed.HostBufferMin, nil)
		if err != nil {
			panic(err)
		}
		return out, bufs
	})
	mustExec(t, in, `import _snakepit_embed
hc = _snakepit_embed.host_call
def raise_(reply):
    raise RuntimeError(reply)
seen = {}
def sub(v, bufs):
    if type(v) is tuple and len(v) == 3 and v[:2] == ("\x00snakepit", "buf"):
        return bufs[v[2]]
    if type(v) is dict:
        return {k: sub(x, bufs) for k, x in v.items()}
    if type(v) is list:
        return [sub(x, bufs) for x in v]
    return v
def resolve_(value, bufs):
    seen["types"] = [type(b).__name__ for b in bufs]
    return sub(value, bufs)
r = hc(1, "f", {}, raise_, resolve_)
try:
    hc(1, "f", {}, raise_)
    four = "no error"
except RuntimeError as e:
    four = str(e)
`)
	require.Equal(t, []any{"bytes", "bytes"}, mustEval(t, in, "seen['types']"))
	got := mustEval(t, in, "[r['a'], r['b'], r['l'][0], r['ok'], type(r['a']).__name__]").([]any)
	require.True(t, bytes.Equal(got[0].([]byte), big), "a: got %d bytes, want the %d sent", len(got[0].([]byte)), len(big))
	require.Equal(t, []byte("small"), got[1])
	require.True(t, bytes.Equal(got[2].([]byte), big[:embed.HostBufferMin]), "l[0]: wrong bytes")
	require.Equal(t, true, got[3])
	require.Equal(t, "bytes", got[4])
	require.Contains(t, mustEval(t, in, "four").(string), "out-of-band buffers to a caller that takes none")
}

// hangGuard bounds waits that only a bug makes long.
const hangGuard = 30 * time.Second

// TestHostCallBuffersHostileExporter: an object whose buffer export runs
// Python code (3.12+: __buffer__) that shrinks the list being encoded or
// mutates the dict makes a clear error or a consistent payload, never a
// crash; on 3.11, where Python code cannot export a buffer, the object is
// refused as marshal refuses it (NotImplemented).
func TestHostCallBuffersHostileExporter(t *testing.T) {
	in := newInterp(t, embed.InterpreterConfig{})
	in.SetHostHandler(func(token uint64, name string, payload []byte, bufs [][]byte, reply []byte, _ bool) ([]byte, [][]byte) {
		if _, err := pymarshal.DecodeOOB(payload, bufs); err != nil {
			return pymarshal.AppendBytes(reply, []byte("bad payload: "+err.Error())), nil
		}
		return append(reply, 'T'), nil
	})
	mustExec(t, in, `import _snakepit_embed, sys
hc = _snakepit_embed.host_call
def raise_(reply):
    raise RuntimeError(reply)
def resolve_(value, bufs):
    return value
data = bytes(100000)
class Shrinker:
    def __init__(self, victim):
        self.victim = victim
    def __buffer__(self, flags):
        self.victim.clear()
        return memoryview(data)
    def __release_buffer__(self, view):
        pass
def outcome(f):
    try:
        return repr(f())
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)
lst = [1, 2, 3]
lst.insert(0, Shrinker(lst))
shrunk_list = outcome(lambda: hc(1, "f", {"l": lst}, raise_, resolve_))
d = {"a": 1}
d["s"] = Shrinker(d)
d["z"] = 2
mutated_dict = outcome(lambda: hc(1, "f", d, raise_, resolve_))
new_exporters = sys.version_info >= (3, 12)
`)
	if mustEval(t, in, "new_exporters") == true {
		require.Contains(t, mustEval(t, in, "shrunk_list").(string), "changed size")
		require.Equal(t, "True", mustEval(t, in, "mutated_dict"))
	} else {
		require.Equal(t, "NotImplemented", mustEval(t, in, "shrunk_list"))
		require.Equal(t, "NotImplemented", mustEval(t, in, "mutated_dict"))
	}
}
