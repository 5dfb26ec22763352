package embed

// This file holds the cgo callback: a file with //export may only declare
// C functions in its preamble, so the builtin that calls it is in shim.c.

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/snakepit-go/snakepit/pymarshal"
)

// HostHandler serves a call from Python into Go: Python code of the
// interpreter calls the builtin
//
//	_snakepit_embed.host_call(token, name, payload) -> bytes
//	_snakepit_embed.host_call(token, name, payload, raise_) -> value
//	_snakepit_embed.host_call(token, name, payload, raise_, resolve_) -> value
//
// (token an int, name a str, payload bytes; in the longer forms payload
// may also be the kwargs dict, which the builtin marshals, and the reply
// is decoded there: the value, or raise_(reply) for an error reply, one
// whose first byte is 0x01), and the handler set with
// [Interpreter.SetHostHandler] gets them and returns the reply bytes,
// appended to reply: reply is empty, with room for a small reply in the
// calling C frame's memory, so a reply that fits is not copied again.
//
// Out-of-band arguments: from a kwargs dict, bytes-like values (bytes,
// bytearray, memoryview, any C-contiguous buffer) of [HostBufferMin] bytes
// or more are not copied. bufs holds their memory — the Python objects'
// own, their buffer exports held until the handler returns, so none can
// be resized or freed meanwhile — and payload names them with the
// markers of pymarshal.AppendMarshalOOB: ("\x00snakepit", "buf", i) for
// bytes, and the array marker with data i for numeric buffers
// (array.array, numpy arrays), which pymarshal.UnmarshalOOB resolves.
// bufs is nil when there are none.
//
// Out-of-band results: when replyBufs is true (the five-argument form),
// the handler may return buffers beside the reply, which markers in the
// reply name by index (pymarshal.AppendMarshalOOB): each is copied once,
// straight into a bytes object (none is made for one that is all of a
// bytes argument's memory: that object itself is the value), and the
// decoded value with its markers goes to resolve_(value, buffers) in
// Python. Otherwise it must return none.
//
// The handler runs on the calling Python thread's own OS thread, with that
// interpreter's GIL released: no other OS thread is woken, and the
// interpreter's other threads run meanwhile (and may call the handler
// concurrently). payload and bufs are Python's memory, valid only until
// the handler returns: copy what it keeps (other Python threads may
// write to a writable buffer meanwhile). The handler must not call into
// the same interpreter from its own goroutine: its thread is inside a
// call of it already (CallOnThread fails there; work for the home thread,
// when the host call came from the home thread, would wait for ever).
type HostHandler func(token uint64, name string, payload []byte, bufs [][]byte, reply []byte, replyBufs bool) ([]byte, [][]byte)

// HostBufferMin is the size from which a bytes-like host call argument or
// result crosses out of band (see [HostHandler]): 64 KiB, as for calls
// (pool's out-of-band threshold).
const HostBufferMin = 64 << 10

// The shim's own copy of HostBufferMin must match: a difference makes one
// of these constants negative, which a uint cannot hold.
const _ = uint(HostBufferMin-C.SPK_HOST_BUF_MIN) + uint(C.SPK_HOST_BUF_MIN-HostBufferMin)

// SetHostHandler sets the handler the interpreter's host_call builtin
// calls; nil removes it (host_call then raises RuntimeError). Safe to call
// at any time; calls already running finish with the handler they found.
func (in *Interpreter) SetHostHandler(h HostHandler) {
	if h == nil {
		in.host.Store(nil)
		return
	}
	in.host.Store(&h)
}

// TagCalls makes every later [Interpreter.CallOnThread] (and
// CallOnThreadBuffers) set attribute attr of f's object to the call's id,
// an int, right before calling, under the same GIL hold: Python code can
// then tell calls apart (the thread profile's host calls use it). A
// failure to set it fails the call. Call it before calling the interpreter
// on other goroutines; a later TagCalls replaces the earlier one.
func (in *Interpreter) TagCalls(ctx context.Context, f *Func, attr string) error {
	f.check(in)
	var err error
	herr := in.onHome(ctx, func(s *scope) {
		cs := C.CString(attr)
		defer C.free(unsafe.Pointer(cs))
		name := C.spk_intern(s.ts, cs, s.res)
		if _, err = s.take(nil); err != nil {
			return
		}
		in.mu.Lock()
		in.funcs = append(in.funcs, name) // released when the interpreter ends
		in.mu.Unlock()
		C.spk_interp_tag_calls(in.ci, f.obj, name)
	})
	if herr != nil {
		return herr
	}
	return err
}

// installHost sets _snakepit_embed.host_call in the interpreter (on the
// home thread, after the bootstrap made the module).
func (in *Interpreter) installHost(ctx context.Context) error {
	var err error
	herr := in.onHome(ctx, func(s *scope) {
		mod := C.CString("_snakepit_embed")
		defer C.free(unsafe.Pointer(mod))
		C.spk_install_host(s.ts, mod, C.uintptr_t(in.hostID), s.res)
		_, err = s.take(nil)
	})
	if herr != nil {
		return herr
	}
	return err
}

// spkHostCall is called by the host_call builtin (shim.c) with the GIL
// released. It returns 0 with the reply in rep, or -1 with a message there
// (host_call then raises RuntimeError). It never panics back into C: a
// panic would end the process.
//
//export spkHostCall
func spkHostCall(handle C.uintptr_t, token C.uint64_t, name *C.char, nlen C.Py_ssize_t, payload *C.char, plen C.Py_ssize_t, bufs *C.spk_buf, nbufs C.int, rep *C.spk_hostreply) (rc C.int) {
	defer func() {
		if v := recover(); v != nil {
			rc = putHostError(rep, fmt.Sprintf("embed: host handler panicked: %v", v))
		}
	}()
	in := (*hostTargets.m.Load())[uintptr(handle)]
	if in == nil {
		return putHostError(rep, "embed: host_call: its interpreter has ended")
	}
	h := in.host.Load()
	if h == nil {
		return putHostError(rep, "embed: host_call: no host handler is set for this interpreter")
	}
	var p []byte
	if plen > 0 {
		p = unsafe.Slice((*byte)(unsafe.Pointer(payload)), int(plen))
	}
	var args [][]byte
	if nbufs > 0 {
		spans := unsafe.Slice(bufs, int(nbufs))
		args = make([][]byte, len(spans))
		for i, b := range spans {
			if b.len > 0 {
				args[i] = unsafe.Slice((*byte)(unsafe.Pointer(b.ptr)), int(b.len))
			} else {
				args[i] = []byte{}
			}
		}
	}
	nb := unsafe.Slice((*byte)(unsafe.Pointer(name)), int(nlen))
	buf := unsafe.Slice((*byte)(unsafe.Pointer(rep.buf)), int(rep.cap))[:0]
	out, outBufs := (*h)(uint64(token), in.hostName(nb), p, args, buf, rep.bufs_ok != 0)
	if len(outBufs) > 0 {
		if rep.bufs_ok == 0 {
			return putHostError(rep, "embed: host handler returned out-of-band buffers to a caller that takes none")
		}
		if err := putHostBuffers(rep, outBufs, args); err != "" {
			return putHostError(rep, err)
		}
	}
	if rep.bufs_ok != 0 && (len(outBufs) > 0 || pymarshal.HasMarkers(out)) {
		rep.markers = 1
	}
	putHostReply(rep, out)
	return 0
}

// putHostBuffers copies bufs into bytes objects that rep keeps for the
// host_call builtin: one copy, from Go's memory into Python's, made here
// without the GIL. A buffer that is all of an argument's (args: the
// call's) is no copy at all when that argument is a bytes object: the
// reply holds the object itself. It returns a message on failure.
func putHostBuffers(rep *C.spk_hostreply, bufs, args [][]byte) string {
	if len(bufs) > 1<<20 {
		return "embed: host handler returned too many out-of-band buffers"
	}
	lens := make([]C.Py_ssize_t, len(bufs))
	same := make([]C.int, len(bufs))
	for i, b := range bufs {
		lens[i] = C.Py_ssize_t(len(b))
		same[i] = -1
		for j, a := range args {
			if len(a) == len(b) && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b) {
				same[i] = C.int(j)
				break
			}
		}
	}
	ptrs := C.spk_host_result_bufs(rep, &lens[0], &same[0], C.int(len(bufs)))
	if ptrs == nil {
		return "embed: host_call: out of memory for the reply's buffers"
	}
	for i, p := range unsafe.Slice(ptrs, len(bufs)) {
		if p != nil && len(bufs[i]) > 0 {
			copy(unsafe.Slice((*byte)(unsafe.Pointer(p)), len(bufs[i])), bufs[i])
		}
	}
	return ""
}

// hostName returns b as a string, without allocating for a name seen
// before (a handler calls few names, many times).
func (in *Interpreter) hostName(b []byte) string {
	m := in.hostNames.Load()
	if m != nil {
		if s, ok := (*m)[string(b)]; ok { // no allocation: a lookup
			return s
		}
	}
	s := string(b)
	if m == nil || len(*m) < maxHostNames {
		in.mu.Lock()
		cur := in.hostNames.Load()
		if cur == nil || len(*cur) < maxHostNames {
			next := make(map[string]string, 1+lenOf(cur))
			if cur != nil {
				maps.Copy(next, *cur)
			}
			next[s] = s
			in.hostNames.Store(&next)
		}
		in.mu.Unlock()
	}
	return s
}

// maxHostNames bounds the names an interpreter keeps (see hostName).
const maxHostNames = 256

func lenOf(m *map[string]string) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// hostTargets maps the ids host_call builtins carry to their live
// interpreters. It is read on every host call, without a lock: the map is
// replaced, not changed, when an interpreter starts or ends (rarely).
var hostTargets struct {
	mu   sync.Mutex // serialises writers
	last uintptr
	m    atomic.Pointer[map[uintptr]*Interpreter]
}

func init() {
	hostTargets.m.Store(&map[uintptr]*Interpreter{})
}

// registerHostTarget gives in an id for its host_call builtin.
func registerHostTarget(in *Interpreter) uintptr {
	hostTargets.mu.Lock()
	defer hostTargets.mu.Unlock()
	hostTargets.last++
	id := hostTargets.last
	cur := *hostTargets.m.Load()
	next := make(map[uintptr]*Interpreter, len(cur)+1)
	maps.Copy(next, cur)
	next[id] = in
	hostTargets.m.Store(&next)
	return id
}

// unregisterHostTarget forgets id, once its interpreter has ended.
func unregisterHostTarget(id uintptr) {
	hostTargets.mu.Lock()
	defer hostTargets.mu.Unlock()
	cur := *hostTargets.m.Load()
	next := make(map[uintptr]*Interpreter, len(cur))
	maps.Copy(next, cur)
	delete(next, id)
	hostTargets.m.Store(&next)
}

// putHostReply copies out into rep's buffer, or into malloc'd memory when
// it does not fit; out already in rep's buffer stays where it is.
func putHostReply(rep *C.spk_hostreply, out []byte) {
	n := len(out)
	if n > 0 && n <= int(rep.cap) && unsafe.Pointer(&out[0]) == unsafe.Pointer(rep.buf) {
		rep.out, rep.len = rep.buf, C.Py_ssize_t(n)
		return
	}
	dst := rep.buf
	if C.Py_ssize_t(n) > rep.cap {
		dst = (*C.char)(C.malloc(C.size_t(n)))
		rep.heap = 1
	}
	if n > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(dst)), n), out)
	}
	rep.out = dst
	rep.len = C.Py_ssize_t(n)
}

// putHostError puts msg, NUL-terminated, in rep and returns -1.
func putHostError(rep *C.spk_hostreply, msg string) C.int {
	putHostReply(rep, append([]byte(msg), 0))
	rep.len--
	return -1
}
