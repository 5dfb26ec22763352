package subproc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// Host calls (Python calling Go, ctx.host in a handler) travel as these
// frame types:
//
//   - HOST_CALL (child → host): the frame's request id is the host call's
//     own id, which the child assigns with hostCallIDBit set, so it never
//     equals one of the host's request ids. The payload is the marshalled
//     tuple (call id, name, kwargs bytes): the call id is the request id
//     of the CALL or STREAM_OPEN frame whose handler made the host call,
//     the kwargs bytes the marshalled keyword arguments.
//   - HOST_REPLY (host → child): the same request id as the HOST_CALL; the
//     payload is what worker.Host.Invoke returned (see host.Reply).
//   - HOST_SPACE (host → child) and HOST_GRANT (child → host): a reply too
//     large for the socket asks the child for room in the host-call region
//     (below) and gets it, or an empty grant.
//
// Because each HOST_CALL names its call, several calls in flight on one
// worker need no other frames. Every HOST_CALL is answered once, with a
// HOST_REPLY or a HOST_SPACE, and every HOST_GRANT with a HOST_REPLY. The
// child waits for an answer only while the call is live: a HOST_SPACE that
// comes once it has ended is not granted, and the host drops the result
// it held when the call ends.
//
// Payloads of at least the shared threshold travel through the host-call
// region, a memfd of its own (the request region may hold the call's
// request, viewed by its handler, while host calls run; and in the
// concurrent modes there is none). The child alone allocates its spans
// and grows it; the host only copies out of it and into the spans the
// child granted, so neither side ever writes where the other may:
//
//   - A HOST_CALL whose payload is large has the shared bit, and a region
//     reference (generation 0) to the payload. The child keeps the span
//     until the host's HOST_SPACE or HOST_REPLY for that id: the host has
//     copied the payload out before it runs the function.
//   - A large result is held while the host sends HOST_SPACE (its size, a
//     little-endian uint64). The child's thread waiting for the reply
//     allocates that many bytes and sends HOST_GRANT with their reference
//     (empty when the region is full), only while the call is live: as a
//     HOST_CALL, never after the call's reply. The host copies the result
//     into the span and sends HOST_REPLY with the shared bit and that
//     reference; the child copies it out and frees the span. A HOST_GRANT
//     for no held result (its call ended, and the held result was dropped)
//     gets an error reply through the socket, which frees the span granted
//     (the child raises HostError "ended"), as any reply through the
//     socket frees the spans of its host call.
//
// Large bytes are set apart both ways, as for calls (the data plane): the
// child sends large bytes, bytearray and array keyword arguments (their
// data) as out-of-band buffers after
// the HOST_CALL tuple (see decodeHostCall), which a host.BufferInvoker's
// functions get without a copy of their own; with the region, large []byte
// and array data of a result go beside the reply (hostReplyBuffers), each
// copied once into the region and once out of it by the child.
//
// Both sides keep the frame cap: a payload above Config.MaxFrame is refused
// whichever way it would travel.

// hostCallIDBit is set in the request id of every HOST_CALL.
const hostCallIDBit = 1 << 63

// hostCallBudget bounds what decoding a HOST_CALL payload may allocate,
// beyond the payload's size: its shape is a flat tuple of three values.
const hostCallBudget = 4 << 10

// errBadHostCall: a HOST_CALL payload that is not (call id, name, kwargs).
var errBadHostCall = errors.New("subproc: malformed HOST_CALL")

// maxHostBuffers bounds the out-of-band buffers of one host call.
const maxHostBuffers = 1 << 16

// decodeHostCall parses a HOST_CALL payload: the marshalled tuple (call
// id: a non-negative int, name: str, kwargs: bytes), or (call id, name,
// kwargs, lengths: bytes of little-endian uint64s) followed by the
// out-of-band buffers those lengths measure, in order, to the end of p
// (the kwargs' buffer markers name them). In the layout the child writes
// (see parseHostCallLayout) the kwargs and buffers share p's memory, which the
// caller hands over; a tuple of 3 in any other encoding is decoded in
// general, with a copy.
func decodeHostCall(p []byte) (callID uint64, name string, args []byte, in [][]byte, err error) {
	if id, name, args, in, ok := parseHostCallLayout(p); ok {
		return id, name, args, in, nil
	}
	v, err := pymarshal.DecodeLimit(p, int64(len(p))+hostCallBudget)
	if err != nil {
		return 0, "", nil, nil, fmt.Errorf("%w: %w", errBadHostCall, err)
	}
	t, ok := v.([]any) // a tuple (or a list) decodes to []any
	if !ok || len(t) != 3 {
		return 0, "", nil, nil, fmt.Errorf("%w: got %T, want a tuple of 3", errBadHostCall, v)
	}
	id, ok := t[0].(int64)
	if !ok || id < 0 {
		return 0, "", nil, nil, fmt.Errorf("%w: call id %v (%T), want a non-negative int", errBadHostCall, t[0], t[0])
	}
	name, ok = t[1].(string)
	if !ok {
		return 0, "", nil, nil, fmt.Errorf("%w: name of type %T, want str", errBadHostCall, t[1])
	}
	args, ok = t[2].([]byte)
	if !ok {
		return 0, "", nil, nil, fmt.Errorf("%w: arguments of type %T, want bytes", errBadHostCall, t[2])
	}
	return uint64(id), name, args, nil, nil
}

// parseHostCallLayout reads a HOST_CALL payload laid out as the child
// writes it (marshal version 2): a small tuple of 3 or 4, the call id as
// an int, the name as a str, the kwargs as bytes, and for a tuple of 4 the
// buffers' lengths as bytes, then the buffers to the end of p. ok is false
// for any other layout.
func parseHostCallLayout(p []byte) (callID uint64, name string, args []byte, in [][]byte, ok bool) {
	if len(p) < 2 || p[0] != ')' || (p[1] != 3 && p[1] != 4) {
		return 0, "", nil, nil, false
	}
	callID, rest, ok := cutMarshalInt(p[2:])
	if !ok || len(rest) < 5 || rest[0] != 'u' {
		return 0, "", nil, nil, false
	}
	n := uint64(binary.LittleEndian.Uint32(rest[1:5]))
	rest = rest[5:]
	if n > uint64(len(rest)) {
		return 0, "", nil, nil, false
	}
	name, rest = string(rest[:n]), rest[n:]
	if !utf8.ValidString(name) {
		return 0, "", nil, nil, false
	}
	if args, rest, ok = cutMarshalBytes(rest); !ok {
		return 0, "", nil, nil, false
	}
	if p[1] == 3 {
		return callID, name, args, nil, len(rest) == 0
	}
	lens, rest, ok := cutMarshalBytes(rest)
	if !ok || len(lens)%8 != 0 || len(lens)/8 > maxHostBuffers {
		return 0, "", nil, nil, false
	}
	in = make([][]byte, len(lens)/8)
	for i := range in {
		l := binary.LittleEndian.Uint64(lens[8*i:])
		if l > uint64(len(rest)) {
			return 0, "", nil, nil, false
		}
		in[i], rest = rest[:l:l], rest[l:]
	}
	return callID, name, args, in, len(rest) == 0
}

// cutMarshalInt cuts a marshalled non-negative int below 1<<63 off the
// front of p, as marshal writes it: type 'i' (int32), or from 1<<31 on
// 'l' with up to 5 digits of 15 bits, the highest not zero.
func cutMarshalInt(p []byte) (v uint64, rest []byte, ok bool) {
	switch {
	case len(p) >= 5 && p[0] == 'i':
		i := int32(binary.LittleEndian.Uint32(p[1:5]))
		return uint64(i), p[5:], i >= 0
	case len(p) >= 5 && p[0] == 'l':
		n := int32(binary.LittleEndian.Uint32(p[1:5]))
		if n < 1 || n > 5 || len(p) < 5+2*int(n) {
			return 0, nil, false
		}
		for i := int(n) - 1; i >= 0; i-- {
			d := binary.LittleEndian.Uint16(p[5+2*i:])
			if d >= 1<<15 || v >= 1<<(63-15) {
				return 0, nil, false
			}
			v = v<<15 | uint64(d)
		}
		if v < 1<<31 || binary.LittleEndian.Uint16(p[5+2*(int(n)-1):]) == 0 {
			return 0, nil, false // not as marshal writes it
		}
		return v, p[5+2*int(n):], true
	}
	return 0, nil, false
}

// cutMarshalBytes cuts a marshalled bytes value (type 's') off the front of
// p: its contents, sharing p's memory, and what follows.
func cutMarshalBytes(p []byte) (v, rest []byte, ok bool) {
	if len(p) < 5 || p[0] != 's' {
		return nil, nil, false
	}
	n := uint64(binary.LittleEndian.Uint32(p[1:5]))
	if n > uint64(len(p)-5) {
		return nil, nil, false
	}
	return p[5 : 5+n : 5+n], p[5+n:], true
}

// hostReplyBuffers is the first byte of a host call's reply that carries
// out-of-band buffers (no marshalled value starts with it, nor an error
// reply): then the buffers' count k (uint32), the length of the reply
// proper (uint64), the k buffers' lengths (uint64 each), the reply proper
// (a marshalled value whose buffer markers name the buffers) and the
// buffers, in order; little-endian.
const hostReplyBuffers = 0x02

// hostReplyParts lays out a reply and its out-of-band buffers (see
// hostReplyBuffers) as the parts to write one after the other, and their
// total size. Without buffers the reply is the one part.
func hostReplyParts(reply []byte, out [][]byte) (parts [][]byte, size int) {
	if len(out) == 0 {
		return [][]byte{reply}, len(reply)
	}
	head := make([]byte, 0, 1+4+8+8*len(out))
	head = append(head, hostReplyBuffers)
	head = binary.LittleEndian.AppendUint32(head, uint32(len(out)))
	head = binary.LittleEndian.AppendUint64(head, uint64(len(reply)))
	for _, b := range out {
		head = binary.LittleEndian.AppendUint64(head, uint64(len(b)))
		size += len(b)
	}
	return append([][]byte{head, reply}, out...), len(head) + len(reply) + size
}

// hostScope is a call (or an open stream) whose handler may call host
// functions: HOST_CALL frames naming its request id run with its context.
type hostScope struct {
	id     uint64
	parent context.Context // the call's (the stream's) context
	cid    string
	// ctx and cancel are made at the first host call of the scope (most
	// calls make none), guarded by hostCalls.mu.
	ctx    context.Context
	cancel context.CancelFunc
}

// hostCalls tracks the scopes in flight and the goroutines reading a
// request's frames (and running host functions).
type hostCalls struct {
	mu      sync.Mutex // guards scopes, held, heldBytes, closed and the additions to running
	scopes  map[uint64]*hostScope
	closed  bool           // Close waits for running: no reader starts any more
	running sync.WaitGroup // hostReader goroutines
	// held are the results waiting for room in the host-call region
	// (HOST_SPACE sent, HOST_GRANT not read yet), by host call id; they
	// go with their scope. heldBytes is their total, at most
	// Config.MaxSharedMemory.
	held      map[uint64]heldReply
	heldBytes int
}

// heldReply is a host function's result waiting for its HOST_GRANT: the
// parts of its reply (see hostReplyParts), of size bytes in all.
type heldReply struct {
	scope *hostScope
	name  string
	parts [][]byte
	size  int
}

// newScope returns the scope of a call with context ctx, or nil when the
// worker has no host functions (a HOST_CALL then gets an "unknown" reply
// whatever call it names).
func (w *Worker) newScope(ctx context.Context, cid string) *hostScope {
	if w.cfg.Host == nil {
		return nil
	}
	return &hostScope{parent: ctx, cid: cid}
}

// beginScope makes sc's host calls (HOST_CALL frames naming request id)
// run from now on.
func (w *Worker) beginScope(sc *hostScope, id uint64) {
	if sc == nil {
		return
	}
	sc.id = id
	w.hosts.mu.Lock()
	if w.hosts.scopes == nil {
		w.hosts.scopes = make(map[uint64]*hostScope)
	}
	w.hosts.scopes[id] = sc
	w.hosts.mu.Unlock()
}

// endScope ends sc: the contexts of its host calls still running are
// done, and a HOST_CALL naming it from now on is refused.
func (w *Worker) endScope(sc *hostScope) {
	if sc == nil {
		return
	}
	w.hosts.mu.Lock()
	if w.hosts.scopes[sc.id] == sc {
		delete(w.hosts.scopes, sc.id)
	}
	for id, h := range w.hosts.held {
		if h.scope == sc {
			w.hosts.heldBytes -= h.size
			delete(w.hosts.held, id)
		}
	}
	cancel := sc.cancel
	w.hosts.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// hostInlineBudget is how long the reader of a request's frames may run a
// host function itself (and so leave the connection unread) before
// another goroutine takes over reading: a host call that returns within it
// costs no goroutine hand-off, and a slow one delays neither other host
// calls nor the reply (nor the caller's return at its deadline) by much
// more.
const hostInlineBudget = 500 * time.Microsecond

// replyResult is what the reader of a request's frames hands the request.
type replyResult struct {
	f   frame
	err error
}

// hostCall is a parsed HOST_CALL, or a HOST_GRANT (grant set).
type hostCall struct {
	ctx     context.Context // the call's; nil when it is not in flight
	scope   *hostScope      // the call's; nil when it is not in flight
	id      uint64          // the HOST_CALL's request id
	callID  uint64
	name    string
	args    []byte
	in      [][]byte   // the out-of-band buffers args' markers name
	grant   *regionRef // HOST_GRANT: the span granted; nil for none (an empty grant) or a HOST_CALL
	isGrant bool
}

// isHostFrame reports whether a frame of type typ (the shared bit
// ignored) is the child's part of a host call: served while the call's
// reply is awaited.
func isHostFrame(typ byte) bool {
	typ &^= frameShared
	return typ == frameHostCall || typ == frameHostGrant
}

// hostReading is the reading of one request's frames once a host call
// came: one hostReader goroutine at a time reads them and runs the host
// functions that come, until the reply, which it hands over on res. A
// watchdog timer, armed while a reader runs a host function (once per
// budget, not per call: arming a timer can wake an idle thread), starts
// the next reader when one has run a host function for hostInlineBudget.
type hostReading struct {
	id    uint64
	res   chan replyResult
	start func() // starts the next reader (goHostReader)

	mu      sync.Mutex // guards the fields below
	gen     uint64     // counts the host functions run inline
	inline  bool       // the reader runs host function gen
	since   time.Time  // when it began
	taken   uint64     // the last gen whose reader was relieved of reading
	timer   *time.Timer
	armed   bool // the timer will fire
	stopped bool // the reply was handed over: no reader starts
}

// enter marks the start of an inline host function; it returns its gen.
func (hr *hostReading) enter() uint64 {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	hr.gen++
	hr.inline, hr.since = true, time.Now()
	if !hr.armed {
		hr.armed = true
		if hr.timer == nil {
			hr.timer = time.AfterFunc(hostInlineBudget, hr.watch)
		} else {
			hr.timer.Reset(hostInlineBudget)
		}
	}
	return hr.gen
}

// leave marks the end of inline host function gen; it reports whether
// its reader still reads (no other reader took over).
func (hr *hostReading) leave(gen uint64) bool {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	if hr.gen == gen {
		hr.inline = false
	}
	// A reader runs gens in order, and a later gen runs only after a
	// takeover relieved it: it was relieved if any gen from its own on
	// was taken.
	return hr.taken < gen
}

// watch is the timer's: it starts another reader when the current one
// has been running a host function for hostInlineBudget.
func (hr *hostReading) watch() {
	hr.mu.Lock()
	if !hr.inline || hr.stopped {
		hr.armed = false
		hr.mu.Unlock()
		return
	}
	if left := hostInlineBudget - time.Since(hr.since); left > 0 {
		hr.timer.Reset(left)
		hr.mu.Unlock()
		return
	}
	hr.taken, hr.inline, hr.armed = hr.gen, false, false
	hr.mu.Unlock()
	hr.start()
}

// deliver hands over the reading's outcome; the timer is stopped.
func (hr *hostReading) deliver(r replyResult) {
	hr.mu.Lock()
	hr.stopped = true
	if hr.timer != nil {
		hr.timer.Stop()
	}
	hr.mu.Unlock()
	hr.res <- r
}

// goHostReader starts a goroutine that reads hr's frames (see
// hostReader). first, if not nil, is a HOST_CALL already read, to serve
// first. Once the worker is closed it starts nothing and hands over its
// error.
func (w *Worker) goHostReader(hr *hostReading, first *frame) {
	w.hosts.mu.Lock()
	if w.hosts.closed {
		w.hosts.mu.Unlock()
		hr.deliver(replyResult{err: w.unavailable()})
		return
	}
	w.hosts.running.Add(1)
	w.hosts.mu.Unlock()
	go w.hostReader(hr, first)
}

// hostReader reads request hr.id's frames: it serves the HOST_CALL frames
// that come, each on this goroutine (see serveInline), until the reply or
// an error (a read timeout too), which it hands over. It stops reading,
// handing nothing over, when another reader took over.
func (w *Worker) hostReader(hr *hostReading, first *frame) {
	defer w.hosts.running.Done()
	if first != nil && !w.serveInline(hr, *first) {
		return
	}
	for {
		f, err := w.rd.next()
		if err == nil && isHostFrame(f.typ) {
			if !w.serveInline(hr, f) {
				return
			}
			continue
		}
		f, err = w.checkReply(hr.id, f, err)
		hr.deliver(replyResult{f: f, err: err})
		return
	}
}

// serveInline runs the host call f on the goroutine reading hr's frames.
// It reports whether that goroutine still reads: false when the function
// took so long that another reader took over. A malformed f kills the
// worker (the error is handed over, false).
func (w *Worker) serveInline(hr *hostReading, f frame) bool {
	hc, err := w.parseHostCall(f)
	if err != nil {
		perr := &ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()}
		w.die(perr)
		hr.deliver(replyResult{err: perr})
		return false
	}
	gen := hr.enter()
	w.runHostCall(hc)
	return hr.leave(gen)
}

// parseHostCall checks and decodes a HOST_CALL (or HOST_GRANT) frame and
// finds the call it names. An error means the child broke the protocol.
func (w *Worker) parseHostCall(f frame) (hostCall, error) {
	if f.id&hostCallIDBit == 0 {
		return hostCall{}, fmt.Errorf("%w: host call id %d without the host call bit", ErrBadFrame, f.id)
	}
	if f.typ&^frameShared == frameHostGrant {
		if f.typ&frameShared != 0 {
			return hostCall{}, fmt.Errorf("%w: HOST_GRANT with the shared bit", ErrBadFrame)
		}
		hc := hostCall{id: f.id, isGrant: true}
		if len(f.payload) > 0 {
			ref, err := parseRegionRef(f.payload)
			if err != nil {
				return hostCall{}, err
			}
			hc.grant = &ref
		}
		return hc, nil
	}
	payload := f.payload
	if f.typ&frameShared != 0 {
		if w.hshm == nil || !w.hshmPeer {
			return hostCall{}, fmt.Errorf("%w: HOST_CALL in a host-call region that does not exist", ErrBadFrame)
		}
		ref, err := parseRegionRef(f.payload)
		if err != nil {
			return hostCall{}, err
		}
		if payload, err = w.hshm.get(ref, w.cfg.MaxFrame); err != nil {
			return hostCall{}, err
		}
	}
	callID, name, args, in, err := decodeHostCall(payload)
	if err != nil {
		return hostCall{}, err
	}
	hc := hostCall{id: f.id, callID: callID, name: name, args: args, in: in}
	w.hosts.mu.Lock()
	if sc := w.hosts.scopes[callID]; sc != nil {
		if sc.ctx == nil {
			sc.ctx, sc.cancel = context.WithCancel(worker.WithCorrelationID(sc.parent, sc.cid))
		}
		hc.ctx, hc.scope = sc.ctx, sc
	}
	w.hosts.mu.Unlock()
	return hc, nil
}

// runHostCall runs one host function and sends its reply (or serves a
// HOST_GRANT).
func (w *Worker) runHostCall(hc hostCall) {
	if hc.isGrant {
		w.serveGrant(hc)
		return
	}
	var reply []byte
	var out [][]byte
	switch {
	case w.cfg.Host == nil:
		reply = host.Reply(nil, fmt.Errorf("%w %q: this worker has no host functions", host.ErrUnknownFunction, hc.name))
	case hc.ctx == nil:
		reply = host.Reply(nil, fmt.Errorf("subproc: host function %q called for request %d, which is not in flight (the call ended)", hc.name, hc.callID))
	default:
		reply, out = w.invokeHost(hc)
	}
	parts, size := hostReplyParts(reply, out)
	if size > w.cfg.MaxFrame {
		reply = host.Reply(nil, fmt.Errorf("subproc: result of host function %q: %d bytes exceed the frame limit of %d bytes", hc.name, size, w.cfg.MaxFrame))
		parts, size = [][]byte{reply}, len(reply)
	}
	held, reused := w.hold(hc, parts, size)
	switch {
	case reused:
		w.die(&ProtocolError{PID: w.pid, Err: fmt.Errorf("%w: host call id %d reused while its result waits for room", ErrBadFrame, hc.id&^hostCallIDBit), Stderr: w.stderr.String()})
		return
	case held:
		w.sendHost(frameHostSpace, hc.id, binary.LittleEndian.AppendUint64(nil, uint64(size)))
		return
	}
	w.sendHost(frameHostReply, hc.id, joinParts(parts, size))
}

// invokeHost runs hc's host function: its reply, and the out-of-band
// buffers the reply names when the worker has the host-call region (a
// host.BufferInvoker sets large []byte and array data of the result
// apart, and gets the arguments' buffers uncopied).
func (w *Worker) invokeHost(hc hostCall) ([]byte, [][]byte) {
	if b, ok := w.cfg.Host.(host.BufferInvoker); ok {
		outMin := 0
		if w.hshmPeer {
			outMin = w.hostThreshold
		}
		return b.AppendInvokeBuffers(nil, hc.ctx, hc.name, hc.args, hc.in, outMin, nil)
	}
	args := hc.args
	if hc.in != nil { // a Host that takes marshal bytes alone
		inline, err := pymarshal.AppendInline(nil, args, hc.in)
		if err != nil {
			return host.Reply(nil, fmt.Errorf("subproc: host function %q: arguments: %w", hc.name, err)), nil
		}
		args = inline
	}
	return w.cfg.Host.Invoke(hc.ctx, hc.name, args), nil
}

// joinParts concatenates parts (of size bytes in all).
func joinParts(parts [][]byte, size int) []byte {
	if len(parts) == 1 {
		return parts[0]
	}
	b := make([]byte, 0, size)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// hold keeps a large reply (parts, of size bytes) for the host-call region
// (see the protocol above); false when it goes through the socket: it is
// small, there is no region, its call ended, or the results held already
// fill the region — or the child reused the id of a result held already
// (a protocol violation: reused is set).
func (w *Worker) hold(hc hostCall, parts [][]byte, size int) (held, reused bool) {
	if !w.hshmPeer || size < w.hostThreshold || hc.scope == nil {
		return false, false
	}
	w.hosts.mu.Lock()
	defer w.hosts.mu.Unlock()
	if w.hosts.closed || w.hosts.scopes[hc.callID] != hc.scope || w.hosts.heldBytes+size > w.cfg.MaxSharedMemory {
		return false, false
	}
	if _, dup := w.hosts.held[hc.id]; dup {
		// The child reused the id of a host call still waiting for room:
		// the caller kills the worker.
		return false, true
	}
	if w.hosts.held == nil {
		w.hosts.held = make(map[uint64]heldReply)
	}
	w.hosts.held[hc.id] = heldReply{scope: hc.scope, name: hc.name, parts: parts, size: size}
	w.hosts.heldBytes += size
	return true, false
}

// serveGrant answers a HOST_GRANT: the held result goes into the span
// granted, or through the socket for an empty grant. A grant for no held
// result gets an error (its call ended); a span outside the region kills
// the worker.
func (w *Worker) serveGrant(hc hostCall) {
	w.hosts.mu.Lock()
	h, ok := w.hosts.held[hc.id]
	if ok {
		delete(w.hosts.held, hc.id)
		w.hosts.heldBytes -= h.size
	}
	w.hosts.mu.Unlock()
	switch {
	case !ok:
		w.sendHost(frameHostReply, hc.id, host.Reply(nil, fmt.Errorf("subproc: host call %d: no result waits for room (its call ended)", hc.id&^hostCallIDBit)))
	case hc.grant == nil:
		w.sendHost(frameHostReply, hc.id, joinParts(h.parts, h.size))
	default:
		if err := w.hshm.putAt(*hc.grant, h.parts, h.size); err != nil {
			perr := &ProtocolError{PID: w.pid, Err: fmt.Errorf("HOST_GRANT for %q: %w", h.name, err), Stderr: w.stderr.String()}
			w.die(perr)
			return
		}
		w.sendHost(frameHostReply|frameShared, hc.id, hc.grant.append(make([]byte, 0, regionRefSize)))
	}
}

// sendHost writes a frame of the host's part of a host call; a frame
// written in part kills the worker (it cannot be taken back).
func (w *Worker) sendHost(typ byte, id uint64, payload []byte) {
	n, err := w.write(w.stopCtx, typ, id, payload)
	if err != nil && n > 0 && n < headerSize+len(payload) {
		w.die(&worker.DeadError{WorkerID: w.id, Reason: "host reply write interrupted", Err: err})
	}
}

// closeHostCalls ends every scope and waits, until ctx ends, for the host
// functions still running to return. Call it once the connection is
// closed: no HOST_CALL is read any more.
func (w *Worker) closeHostCalls(ctx context.Context) {
	w.hosts.mu.Lock()
	w.hosts.closed = true
	w.hosts.held, w.hosts.heldBytes = nil, 0
	var cancels []context.CancelFunc
	for id, sc := range w.hosts.scopes {
		if sc.cancel != nil {
			cancels = append(cancels, sc.cancel)
		}
		delete(w.hosts.scopes, id)
	}
	w.hosts.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
	done := make(chan struct{})
	go func() { w.hosts.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.log.Warn("host functions still running after their calls ended (they ignore their context)", "worker", w.id)
	}
}
