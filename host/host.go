// Package host lets Python handlers call Go. Functions registered with a
// pool (pool.Config.Host) or a bare worker (gil.Config.Host,
// subproc.Config.Host) are callable from a handler as
//
//	ctx.host.call("lookup", user_id=7)       # or ctx.host.lookup(user_id=7)
//	await ctx.host.acall("lookup", user_id=7) # in an async handler
//	ctx.host.names()                          # the registered names
//
// and only those. Arguments arrive as keyword arguments, decoded into the
// function's argument type by pymarshal (a struct by its json tags, a map,
// as for pool.Call); the result is encoded back the same way. bytes-like
// values (bytes, bytearray, memoryview) arrive as []byte, and array.array
// and numpy arrays as pymarshal.Array, as results of calls do; in the
// thread profile large ones are not copied (see [New]).
//
// The ctx a function receives is the Python call's: it carries its
// deadline, its cancellation (a handler interrupted for its deadline also
// cancels the Go work it waits for) and its correlation id
// ([worker.CorrelationID]). An error becomes snakepit.HostError in Python,
// with the Go error's text; one matching [context.DeadlineExceeded] is also
// a TimeoutError there, one matching [context.Canceled] a
// snakepit.Cancelled, and one marked with [WithPythonType] an instance of
// that type. A panic is recovered and becomes a HostError.
package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/snakepit-go/snakepit/pymarshal"
)

// Func is a Go function handlers may call; make one with [New] or [Raw].
type Func struct {
	name string
	// call appends the marshalled result to dst (and, with outMin > 0,
	// its out-of-band buffers to out); args may name the out-of-band
	// buffers in (see Set.AppendInvokeBuffers).
	call func(ctx context.Context, args []byte, in [][]byte, dst []byte, outMin int, out [][]byte) ([]byte, [][]byte, error)
	raw  bool // call may keep args: it gets its own copy
}

// Name returns the name handlers call f by.
func (f Func) Name() string { return f.name }

// New makes a host function from fn. The keyword arguments of a call are
// decoded into an A (pymarshal.Unmarshal of the kwargs dict: a struct, a
// map with string keys, or any), and the R fn returns is encoded for
// Python (pymarshal.Marshal).
//
// Large bytes-like arguments are not copied where the worker passes them
// out of band (the thread profile does, from 64 KiB on: bytes,
// bytearray, memoryview and other buffers; array.array and numpy arrays
// as pymarshal.Array; the process profile, top-level bytes, bytearray and
// array arguments, from its shared threshold on (from 64 KiB without the
// shared region)): a []byte in A, or an Array's
// Data, is then the Python object's own memory (the process profile: the
// host's one copy of it), valid only until fn returns
// (the object cannot be resized meanwhile, but Python threads of the
// handler may still write to a writable one). A function that keeps such
// a slice beyond its return must copy it:
//
//	host.New("store", func(ctx context.Context, a struct{ Blob []byte }) (int, error) {
//		saved = bytes.Clone(a.Blob) // a.Blob is Python's memory until we return
//		return len(a.Blob), nil
//	})
//
// A large []byte (or Array) in the result reaches Python with one copy,
// straight from the result's memory into the bytes object Python gets
// (thread profile), or with one copy into the shared region and one out
// of it (process profile). The process profile may read it after fn
// returned, when the child has made room for it: a result's memory must
// not change once fn returned it.
func New[A, R any](name string, fn func(ctx context.Context, args A) (R, error)) Func {
	if fn == nil {
		return Func{name: name} // refused by NewSet
	}
	// The argument and the result are decoded and encoded in place in a
	// box kept for the next call, so that neither escapes to a new
	// allocation of its own.
	type box struct {
		a A
		r R
	}
	boxes := sync.Pool{New: func() any { return new(box) }}
	// A result type that can hold no bytes is encoded as by AppendMarshal
	// (nothing could go out of band): the common small result pays nothing.
	resultBytes := mayHoldBytes(reflect.TypeFor[R](), nil)
	return Func{name: name, call: func(ctx context.Context, raw []byte, in [][]byte, dst []byte, outMin int, out [][]byte) ([]byte, [][]byte, error) {
		b := boxes.Get().(*box)
		defer func() {
			*b = box{} // keep nothing of this call
			boxes.Put(b)
		}()
		if len(raw) > 0 {
			var err error
			if in != nil {
				err = pymarshal.UnmarshalOOB(raw, &b.a, in)
			} else {
				err = pymarshal.Unmarshal(raw, &b.a)
			}
			if err != nil {
				return dst, out, &argumentsError{err: err}
			}
		}
		r, err := fn(ctx, b.a)
		if err != nil {
			return dst, out, err
		}
		b.r = r
		var res []byte
		if outMin > 0 && resultBytes {
			var more [][]byte
			res, more, err = pymarshal.AppendMarshalOOB(dst, &b.r, outMin, out)
			if err == nil {
				out = more
			}
		} else {
			res, err = pymarshal.AppendMarshal(dst, &b.r)
		}
		if err != nil {
			return dst, out, &resultError{err: err}
		}
		return res, out, nil
	}}
}

// mayHoldBytes reports whether a value of type t can hold a []byte or a
// pymarshal.Array (what AppendMarshalOOB may put out of band): through an
// interface, a pointer, a container or a struct field. seen holds the
// types being looked at (a recursive type holds what it holds elsewhere).
func mayHoldBytes(t reflect.Type, seen map[reflect.Type]bool) bool {
	if t == arrayType {
		return true
	}
	if seen[t] {
		return false
	}
	switch t.Kind() {
	case reflect.Interface:
		return true
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return true
		}
	case reflect.Array, reflect.Pointer, reflect.Map, reflect.Struct:
	default:
		return false
	}
	if seen == nil {
		seen = map[reflect.Type]bool{}
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Slice, reflect.Array, reflect.Pointer, reflect.Map:
		return mayHoldBytes(t.Elem(), seen)
	case reflect.Struct:
		for i := range t.NumField() {
			if mayHoldBytes(t.Field(i).Type, seen) {
				return true
			}
		}
	}
	return false
}

var arrayType = reflect.TypeFor[pymarshal.Array]()

// Raw makes a host function that takes the marshalled keyword arguments (a
// dict; empty for none) and returns its marshalled result. Its arguments
// are its own copy, with any out-of-band buffers inline
// (pymarshal.AppendInline).
func Raw(name string, fn func(ctx context.Context, args []byte) ([]byte, error)) Func {
	if fn == nil {
		return Func{name: name} // refused by NewSet
	}
	return Func{name: name, raw: true, call: func(ctx context.Context, args []byte, _ [][]byte, dst []byte, _ int, out [][]byte) ([]byte, [][]byte, error) {
		res, err := fn(ctx, args)
		if err != nil {
			return dst, out, err
		}
		return append(dst, res...), out, nil
	}}
}

// Set is an immutable set of host functions; workers call into it. Its
// methods are safe for concurrent use.
type Set struct {
	funcs map[string]Func
	names []string
}

// NewSet makes a set of funcs. Names must be Python identifiers that do
// not start with an underscore (so ctx.host.<name> can reach them) and be
// unique.
func NewSet(funcs ...Func) (*Set, error) {
	s := &Set{funcs: make(map[string]Func, len(funcs))}
	for _, f := range funcs {
		if !validName(f.name) {
			return nil, fmt.Errorf("host: function name %q is not a Python identifier without a leading underscore", f.name)
		}
		if f.call == nil {
			return nil, fmt.Errorf("host: function %q is nil", f.name)
		}
		if _, dup := s.funcs[f.name]; dup {
			return nil, fmt.Errorf("host: two functions named %q", f.name)
		}
		s.funcs[f.name] = f
		s.names = append(s.names, f.name)
	}
	slices.Sort(s.names)
	return s, nil
}

// reserved are the names ctx.host's own methods take.
var reserved = map[string]bool{"call": true, "acall": true, "names": true}

func validName(n string) bool {
	if n == "" || n[0] == '_' || reserved[n] {
		return false
	}
	for i, c := range n {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Names returns the registered names, sorted. A nil set has none.
func (s *Set) Names() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.names)
}

// ErrUnknownFunction: no host function has that name.
var ErrUnknownFunction = errors.New("host: unknown function")

// PanicError is a panic recovered from a host function.
type PanicError struct {
	Name  string
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("host: function %q panicked: %v", e.Name, e.Value)
}

// Call runs the function name with marshalled keyword arguments and
// returns its marshalled result. A panic becomes a *PanicError; an unknown
// name an error matching ErrUnknownFunction. args need only stay valid
// until Call returns (a Raw function gets a copy).
func (s *Set) Call(ctx context.Context, name string, args []byte) ([]byte, error) {
	out, _, err := s.appendCall(nil, ctx, name, args, nil, 0, nil)
	return out, err
}

// appendCall is Call appending the result to dst, and its out-of-band
// buffers to out (see AppendInvokeBuffers); on error it returns dst and
// out as they were.
func (s *Set) appendCall(dst []byte, ctx context.Context, name string, args []byte, in [][]byte, outMin int, out [][]byte) (res []byte, outBufs [][]byte, err error) {
	var f Func
	ok := false
	if s != nil {
		f, ok = s.funcs[name]
	}
	if !ok {
		return dst, out, fmt.Errorf("%w %q (registered: %v)", ErrUnknownFunction, name, s.Names())
	}
	defer func() {
		if v := recover(); v != nil {
			res, outBufs, err = dst, out, &PanicError{Name: name, Value: v, Stack: debug.Stack()}
		}
	}()
	if f.raw {
		if in != nil {
			inline, err := pymarshal.AppendInline(nil, args, in)
			if err != nil {
				return dst, out, &argumentsError{err: err}
			}
			args, in = inline, nil
		} else {
			args = bytes.Clone(args)
		}
	}
	n := len(out)
	res, outBufs, err = f.call(ctx, args, in, dst, outMin, out)
	if err != nil {
		return dst, outBufs[:n], err
	}
	return res, outBufs, nil
}

// Invoke is Call with its outcome encoded as the reply a worker passes to
// Python (see [Reply]): it never fails.
func (s *Set) Invoke(ctx context.Context, name string, args []byte) []byte {
	return s.AppendInvoke(nil, ctx, name, args)
}

// AppendInvoke is Invoke appending the reply to dst (whose contents stay
// as they are), so that a caller with a buffer of its own saves a copy.
func (s *Set) AppendInvoke(dst []byte, ctx context.Context, name string, args []byte) []byte {
	start := len(dst)
	out, _, err := s.appendCall(dst, ctx, name, args, nil, 0, nil)
	return appendReply(out, start, err)
}

// BufferInvoker is a worker.Host that takes and returns out-of-band
// buffers (*Set does; see Set.AppendInvokeBuffers): workers that can pass
// large bytes beside the marshalled values use it, so that those bytes
// cross without the copies marshalling them would make.
type BufferInvoker interface {
	AppendInvokeBuffers(dst []byte, ctx context.Context, name string, args []byte, in [][]byte, outMin int, out [][]byte) ([]byte, [][]byte)
}

var _ BufferInvoker = (*Set)(nil)

// AppendInvokeBuffers is AppendInvoke with out-of-band buffers both ways,
// for workers that pass large bytes beside the marshalled values (see
// pymarshal.AppendMarshalOOB and pymarshal.UnmarshalOOB):
//
//   - args may hold markers naming the buffers in, which a [New] function
//     gets uncopied (a []byte or pymarshal.Array aliasing them, valid
//     until the function returns) and a [Raw] function inline;
//   - with outMin > 0, each []byte (or Array data) of at least outMin
//     bytes in a [New] function's result is appended to out instead of
//     the reply, which names it by its index in out. An error reply adds
//     none.
//
// in == nil means no buffers: args are decoded as by AppendInvoke.
func (s *Set) AppendInvokeBuffers(dst []byte, ctx context.Context, name string, args []byte, in [][]byte, outMin int, out [][]byte) ([]byte, [][]byte) {
	start := len(dst)
	res, outBufs, err := s.appendCall(dst, ctx, name, args, in, outMin, out)
	return appendReply(res, start, err), outBufs
}

// TypedError is an error marked to be raised in Python as an instance of
// a Python exception type as well as snakepit.HostError.
type TypedError struct {
	Err  error
	Type string // a builtin exception's name ("KeyError") or "module.Name"
}

func (e *TypedError) Error() string { return e.Err.Error() }
func (e *TypedError) Unwrap() error { return e.Err }

// WithPythonType marks err to be raised in Python as an instance of the
// exception type pyType as well as snakepit.HostError: a builtin
// exception's name ("KeyError", "PermissionError") or "module.Name" of a
// class the handler's interpreter can import. A type that cannot be found
// (or is not an exception class) leaves a plain HostError.
func WithPythonType(err error, pyType string) error {
	if err == nil {
		return nil
	}
	return &TypedError{Err: err, Type: pyType}
}

type argumentsError struct{ err error }

func (e *argumentsError) Error() string { return "host: arguments: " + e.err.Error() }
func (e *argumentsError) Unwrap() error { return e.err }

type resultError struct{ err error }

func (e *resultError) Error() string { return "host: result: " + e.err.Error() }
func (e *resultError) Unwrap() error { return e.err }

// ReplyError is the first byte of an error reply (see Reply): no marshal
// type code.
const ReplyError = 0x01

// The kinds of error replies, as snakepit reads them.
const (
	kindError     = "error"
	kindDeadline  = "deadline"
	kindCancelled = "cancelled"
	kindUnknown   = "unknown"
	kindArguments = "arguments"
	kindPanic     = "panic"
)

// Reply encodes the outcome of a host call for Python: the marshalled
// result itself (empty: None), or ReplyError followed by the marshalled
// list [kind, message, python_type], kind one of "error", "deadline",
// "cancelled", "unknown", "arguments", "panic" and python_type "" or a
// type's name. No marshalled value starts with ReplyError: a result that
// does is refused as not marshal data.
func Reply(result []byte, err error) []byte {
	return appendReply(result, 0, err)
}

// appendReply turns b[start:], a marshalled result, or err into the reply
// Reply describes, in place.
func appendReply(b []byte, start int, err error) []byte {
	if err == nil {
		switch {
		case len(b) == start:
			return append(b, 'N')
		case b[start] != ReplyError:
			return b
		}
		err = &resultError{err: errors.New("not marshal data")}
	}
	b = b[:start]
	kind := kindError
	var pe *PanicError
	var ae *argumentsError
	switch {
	case errors.As(err, &pe):
		kind = kindPanic
	case errors.Is(err, ErrUnknownFunction):
		kind = kindUnknown
	case errors.As(err, &ae):
		kind = kindArguments
	case errors.Is(err, context.DeadlineExceeded):
		kind = kindDeadline
	case errors.Is(err, context.Canceled):
		kind = kindCancelled
	}
	pyType := ""
	var te *TypedError
	if errors.As(err, &te) {
		pyType = te.Type
	}
	out, merr := pymarshal.AppendMarshal(append(b, ReplyError), []any{kind, err.Error(), pyType})
	if merr != nil { // the message is not valid text: send it escaped
		out, _ = pymarshal.AppendMarshal(append(b, ReplyError), []any{kind, fmt.Sprintf("%q", err.Error()), pyType})
	}
	return out
}
