package python

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// The dispatcher's reply codes and error kinds (python/snakepit/_dispatch.py).
const (
	replyOK    = 0
	replyError = 1
	replyEnd   = 2
)

// ErrCancelled is what the dispatcher reports for a handler interrupted by
// cancellation; workers turn it into the context's error with
// [CancelledError].
var ErrCancelled = errors.New("python: call interrupted")

// deadlineSlack is how far ahead of the host's clock a deadline may be and
// still count as passed when Python reports it so. The deadline crosses as
// a float of Unix seconds (rounded to a fraction of a microsecond) and
// Python reads the wall clock while Go's timer runs on the monotonic one
// and fires a little late: Python may see the deadline a moment before the
// context ends.
const deadlineSlack = time.Millisecond

// CancelledError returns the error for a call bounded by ctx that the
// dispatcher reported interrupted (err matches [ErrCancelled]): the
// context's cause when ctx has ended; one matching both
// [context.DeadlineExceeded] and [ErrCancelled] when ctx's deadline has
// passed (or is within a millisecond) by the host's clock but its timer has
// not fired yet — Python checks the deadline itself before the handler
// starts; otherwise err unchanged (the handler raised Cancelled on its own).
// command and correlationID label the error.
func CancelledError(ctx context.Context, err error, command, correlationID string) error {
	if ctx.Err() != nil {
		return &worker.CallError{Command: command, CorrelationID: correlationID, Err: context.Cause(ctx)}
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= deadlineSlack {
		return &worker.CallError{Command: command, CorrelationID: correlationID,
			Err: fmt.Errorf("%w (%w)", context.DeadlineExceeded, ErrCancelled)}
	}
	return err
}

// checkArgs reports whether args is empty or exactly one marshalled dict
// with string keys. Args is spliced into the call tuple as it is, so a
// prefix that looks like a dict followed by more values would shift the
// tuple's later fields (correlation id, session id) under the caller's
// control.
func checkArgs(args []byte) error {
	if len(args) == 0 {
		return nil
	}
	if err := pymarshal.CheckDict(args); err != nil {
		return &worker.NotSerializableError{What: "argument", Detail: "Args must be exactly one marshalled dict of keyword arguments: " + err.Error(), Err: err}
	}
	return nil
}

// EncodeCall appends to dst the dispatcher's call arguments for req: the
// marshalled tuple (command, kwargs, correlation_id, session_id, deadline,
// attachments[, buffers]), the positional arguments of Dispatcher.call and
// Dispatcher.stream_open; buffers (req.Buffers, as a list of bytes) only
// when there are any. When req.TraceParent is set the tuple has a ninth
// element, the traceparent (the seventh and eighth, buffers and call_id,
// are then None where absent). req.Args is copied in without decoding, after a check
// that it is one dict (skipped when req.ArgsChecked vouches for it); when it may
// contain markers ([pymarshal.HasMarkers]) it is wrapped as
// (pymarshal.MarkerTag, "call", kwargs), which the dispatcher resolves
// (snakepit._wire.resolve).
func EncodeCall(dst []byte, req *worker.Request, deadline time.Time) ([]byte, error) {
	return encodeCall(dst, req, deadline, bufsInline, 0)
}

// EncodeCallID is EncodeCall naming the call: the tuple gets an eighth
// element, callID (the dispatcher's call_id, which a worker running several
// calls at once passes; the seventh is then None when req has no Buffers).
// callID must not be 0.
func EncodeCallID(dst []byte, req *worker.Request, deadline time.Time, callID uint64) ([]byte, error) {
	return encodeCall(dst, req, deadline, bufsInline, callID)
}

// EncodeCallOutOfBandID is EncodeCallOutOfBand naming the call, as
// EncodeCallID does.
func EncodeCallOutOfBandID(dst []byte, req *worker.Request, deadline time.Time, callID uint64) ([]byte, error) {
	return encodeCall(dst, req, deadline, bufsNone, callID)
}

// bufsMode says how encodeCall writes req.Buffers: inline (a list of bytes),
// as None (bufsNone), or as the region spans it holds (a flat tuple of
// offsets and lengths).
type bufsMode []int

var (
	bufsInline = bufsMode(nil)
	bufsNone   = bufsMode([]int{})
)

func bufsRegion(spans []int) bufsMode { return bufsMode(spans) }

// EncodeCallOutOfBand is EncodeCall for a caller that hands req.Buffers
// over beside the tuple: where they would be, the tuple holds None, for
// the caller to replace (see embed.Interpreter.CallOnThreadBuffers).
func EncodeCallOutOfBand(dst []byte, req *worker.Request, deadline time.Time) ([]byte, error) {
	return encodeCall(dst, req, deadline, bufsNone, 0)
}

// RegionAlign is the alignment of each buffer EncodeCallInRegion lays out
// (a cache line: what numpy and SIMD code want of array data).
const RegionAlign = 64

// ErrRegionTooSmall: the memory handed to EncodeCallInRegion cannot hold
// the call.
var ErrRegionTooSmall = errors.New("python: call does not fit the shared region")

// RegionCallSize returns the most bytes EncodeCallInRegion writes for req.
func RegionCallSize(req *worker.Request) int {
	n := 64 + len(req.Command) + len(req.Args) + len(req.CorrelationID) + len(req.SessionID) + len(req.TraceParent) + 32 // markers' wrapper
	for _, a := range req.Attachments {
		n += 5 + len(a)
	}
	for _, b := range req.Buffers {
		n += RegionAlign + alignUp(len(b)) + 2*regionIntMax
	}
	return n + 5
}

// regionIntMax is the most bytes an offset or length takes in marshal.
const regionIntMax = 16

func alignUp(n int) int { return (n + RegionAlign - 1) &^ (RegionAlign - 1) }

// EncodeCallInRegion writes the call for req into mem, memory a child
// process maps too (its shared region, which starts at mem[0]): req.Buffers
// first, each at a multiple of RegionAlign with at least RegionAlign bytes
// free before it (where the child writes a reply's headers when it
// returns the buffer itself), then EncodeCall's tuple, whose buffers
// element is a tuple of (offset, length) pairs, flattened, instead of a
// list of bytes: the child hands the handler views of the region rather
// than copies. It returns where the tuple lies, mem[start:end]. mem must
// hold RegionCallSize(req) bytes, or the call fails with
// ErrRegionTooSmall.
func EncodeCallInRegion(mem []byte, req *worker.Request, deadline time.Time) (start, end int, err error) {
	if len(mem) < RegionCallSize(req) {
		return 0, 0, ErrRegionTooSmall
	}
	spans := make([]int, 0, 2*len(req.Buffers))
	off := 0
	for _, b := range req.Buffers {
		off += RegionAlign // free for the headers of a reply in place
		copy(mem[off:], b)
		spans = append(spans, off, len(b))
		off = alignUp(off + len(b))
	}
	start = off
	b, err := encodeCall(mem[start:start], req, deadline, bufsRegion(spans), 0)
	if err != nil {
		return 0, 0, err
	}
	if len(b) > 0 && &b[0] != &mem[start] {
		return 0, 0, ErrRegionTooSmall // outgrew mem: RegionCallSize is wrong
	}
	return start, start + len(b), nil
}

func encodeCall(dst []byte, req *worker.Request, deadline time.Time, mode bufsMode, callID uint64) ([]byte, error) {
	inline := mode == nil
	if !req.ArgsChecked {
		if err := checkArgs(req.Args); err != nil {
			return nil, err
		}
	}
	size := 48 + len(req.Command) + len(req.Args) + len(req.CorrelationID) + len(req.SessionID) + len(req.TraceParent)
	for _, a := range req.Attachments {
		size += 5 + len(a)
	}
	if inline {
		for _, a := range req.Buffers {
			size += 5 + len(a)
		}
	}
	if dst == nil {
		dst = make([]byte, 0, size)
	}
	fields := 6
	if len(req.Buffers) > 0 {
		fields = 7
	}
	if callID != 0 {
		fields = 8
		if callID > math.MaxInt64 {
			return nil, fmt.Errorf("python: call id %d out of range", callID)
		}
	}
	if req.TraceParent != "" {
		fields = 9
	}
	b := pymarshal.AppendTupleHeader(dst, fields)
	b, err := pymarshal.AppendString(b, req.Command)
	if err != nil {
		return nil, &worker.NotSerializableError{What: "argument", Detail: "command: " + err.Error(), Err: err}
	}
	if len(req.Args) > 0 {
		if pymarshal.HasMarkers(req.Args) {
			// Arguments that may hold markers (arrays) travel as
			// (MarkerTag, "call", kwargs): the dispatcher resolves
			// markers only in calls that have them.
			b = pymarshal.AppendTupleHeader(b, 3)
			b, _ = pymarshal.AppendString(b, pymarshal.MarkerTag)
			b, _ = pymarshal.AppendString(b, "call")
		}
		b = append(b, req.Args...)
	} else {
		b = append(b, '{', '0') // an empty dict
	}
	if b, err = pymarshal.AppendString(b, req.CorrelationID); err != nil {
		return nil, &worker.NotSerializableError{What: "argument", Detail: "correlation id: " + err.Error(), Err: err}
	}
	if req.SessionID == "" {
		b = pymarshal.AppendNone(b)
	} else if b, err = pymarshal.AppendString(b, req.SessionID); err != nil {
		return nil, &worker.NotSerializableError{What: "argument", Detail: "session id: " + err.Error(), Err: err}
	}
	if deadline.IsZero() {
		b = pymarshal.AppendNone(b)
	} else {
		b = pymarshal.AppendFloat(b, float64(deadline.UnixNano())/1e9)
	}
	if len(req.Attachments) == 0 {
		b = pymarshal.AppendNone(b)
	} else {
		b = pymarshal.AppendListHeader(b, len(req.Attachments))
		for _, a := range req.Attachments {
			b = pymarshal.AppendBytes(b, a)
		}
	}
	switch {
	case len(req.Buffers) == 0:
	case inline:
		b = pymarshal.AppendListHeader(b, len(req.Buffers))
		for _, a := range req.Buffers {
			b = pymarshal.AppendBytes(b, a)
		}
	case len(mode) == 0:
		b = pymarshal.AppendNone(b)
	default:
		b = pymarshal.AppendTupleHeader(b, len(mode))
		for _, n := range mode {
			b, _ = pymarshal.AppendMarshal(b, n)
		}
	}
	if fields > 7 && len(req.Buffers) == 0 {
		b = pymarshal.AppendNone(b)
	}
	if callID != 0 {
		b, _ = pymarshal.AppendMarshal(b, int64(callID))
	} else if fields > 8 {
		b = pymarshal.AppendNone(b)
	}
	if fields > 8 {
		if b, err = pymarshal.AppendString(b, req.TraceParent); err != nil {
			return nil, &worker.NotSerializableError{What: "argument", Detail: "traceparent: " + err.Error(), Err: err}
		}
	}
	return b, nil
}

// LogRecord is one record of the adapter's logging (or a printed line).
type LogRecord struct {
	Level         int // Python's levelno
	Logger        string
	Message       string
	Command       string
	CorrelationID string
	Exception     string // formatted traceback, if the record had exc_info
}

// SlogLevel maps a Python level number to slog's.
func SlogLevel(levelno int) slog.Level {
	switch {
	case levelno >= 40:
		return slog.LevelError
	case levelno >= 30:
		return slog.LevelWarn
	case levelno >= 20:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

// PythonLevel returns the most verbose Python level logger wants, so Python
// does not build records Go would drop.
func PythonLevel(logger *slog.Logger) int {
	ctx := context.Background()
	switch {
	case logger.Enabled(ctx, slog.LevelDebug):
		return 10
	case logger.Enabled(ctx, slog.LevelInfo):
		return 20
	case logger.Enabled(ctx, slog.LevelWarn):
		return 30
	case logger.Enabled(ctx, slog.LevelError):
		return 40
	}
	return 50
}

// Emit writes the record to logger, tagged with the worker id and, when
// ctx (the call's) carries a span, its trace_id and span_id.
func (r LogRecord) Emit(ctx context.Context, logger *slog.Logger, workerID string) {
	level := SlogLevel(r.Level)
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("worker", workerID), slog.String("logger", r.Logger)}
	if r.Command != "" {
		attrs = append(attrs, slog.String("command", r.Command))
	}
	if r.CorrelationID != "" {
		attrs = append(attrs, slog.String("correlation_id", r.CorrelationID))
	}
	if r.Exception != "" {
		attrs = append(attrs, slog.String("exception", r.Exception))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	logger.LogAttrs(ctx, level, r.Message, attrs...)
}

// Reply is a decoded dispatcher reply.
type Reply struct {
	// Payload is the marshalled result or chunk (nil at the end of a stream
	// and on error).
	Payload []byte
	// End reports the end of a stream.
	End bool
	// Err is the call's error, typed with the worker package's errors.
	Err error
	// Logs are the records emitted since the previous reply.
	Logs []LogRecord
}

// DecodeReply decodes a marshalled dispatcher reply. command and
// correlationID label the errors it returns.
func DecodeReply(b []byte, command, correlationID string) (Reply, error) {
	// The common case, a result with no log records, is a plain bytes object
	// whose content is the marshalled result: no decoding needed.
	if len(b) >= 5 && b[0]&^0x80 == 's' {
		n := int(binary.LittleEndian.Uint32(b[1:5]))
		if n == len(b)-5 {
			return Reply{Payload: b[5:]}, nil
		}
	}
	v, err := pymarshal.DecodeLimit(b, envelopeBudget(len(b)))
	if err != nil {
		return Reply{}, fmt.Errorf("python: malformed dispatcher reply: %w", err)
	}
	t, ok := v.([]any)
	if !ok || len(t) != 3 {
		return Reply{}, fmt.Errorf("python: malformed dispatcher reply %T", v)
	}
	code, _ := t[0].(int64)
	var r Reply
	r.Logs = decodeLogs(t[2])
	switch code {
	case replyOK:
		p, ok := t[1].([]byte)
		if !ok {
			return Reply{}, errors.New("python: malformed dispatcher reply: payload is not bytes")
		}
		r.Payload = p
	case replyEnd:
		r.End = true
	case replyError:
		r.Err = decodeError(t[1], command, correlationID)
	default:
		return Reply{}, fmt.Errorf("python: malformed dispatcher reply code %d", code)
	}
	return r, nil
}

// DecodeLogs decodes a marshalled list of log records (the reply of the
// dispatcher's drain_logs; None decodes to no records).
func DecodeLogs(b []byte) ([]LogRecord, error) {
	v, err := pymarshal.DecodeLimit(b, envelopeBudget(len(b)))
	if err != nil {
		return nil, fmt.Errorf("python: malformed log records: %w", err)
	}
	return decodeLogs(v), nil
}

// envelopeBudget bounds what decoding a dispatcher reply's envelope (its
// code, the result as one bytes object, log records) may allocate. The
// envelope's shape is the dispatcher's, not the handler's: records of
// strings and ints cost a few bytes per input byte, so a tight bound
// refuses a reply built to expand in the host.
func envelopeBudget(n int) int64 { return 8*int64(n) + 1<<20 }

func decodeLogs(v any) []LogRecord {
	list, _ := v.([]any)
	if len(list) == 0 {
		return nil
	}
	out := make([]LogRecord, 0, len(list))
	for _, item := range list {
		f, ok := item.([]any)
		if !ok || len(f) < 6 {
			continue
		}
		var r LogRecord
		lv, _ := f[0].(int64)
		r.Level = int(lv)
		r.Logger, _ = f[1].(string)
		r.Message, _ = f[2].(string)
		r.Command, _ = f[3].(string)
		r.CorrelationID, _ = f[4].(string)
		r.Exception, _ = f[5].(string)
		out = append(out, r)
	}
	return out
}

func decodeError(v any, command, correlationID string) error {
	f, ok := v.([]any)
	if !ok || len(f) != 5 {
		return fmt.Errorf("python: malformed error reply %v", v)
	}
	kind, _ := f[0].(string)
	typ, _ := f[1].(string)
	msg, _ := f[2].(string)
	tb, _ := f[3].(string)
	var err error
	switch kind {
	case "python":
		err = &worker.PythonError{Type: typ, Message: msg, Traceback: tb}
	case "not_found":
		var avail []string
		list, _ := f[4].([]any)
		for _, a := range list {
			if s, ok := a.(string); ok {
				avail = append(avail, s)
			}
		}
		err = &worker.CommandNotFoundError{Command: command, Available: avail}
	case "bad_args":
		err = &worker.BadArgumentsError{Command: command, Reason: msg}
	case "not_serializable":
		err = &worker.NotSerializableError{What: "result", Detail: msg}
	case "cancelled":
		err = ErrCancelled
	case "streaming", "not_streaming":
		err = fmt.Errorf("%w: %s", worker.ErrStreamMismatch, msg)
	default:
		err = fmt.Errorf("python: dispatcher: %s", msg)
	}
	return &worker.CallError{Command: command, CorrelationID: correlationID, Err: err}
}
