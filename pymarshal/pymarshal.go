// Package pymarshal encodes and decodes the subset of Python's marshal format
// (version 4) that snakepit uses to move values between Go and Python.
//
// The format is CPython's own: the thread profile turns bytes into objects
// with PyMarshal_ReadObjectFromString in C and the process profile with
// marshal.loads, so one Go codec serves both, no Python-level codec runs, and
// nothing that can execute code on load is ever produced or accepted.
//
// # Values
//
// The subset and its Go shape when decoded into an interface value:
//
//	Python          Go (decoded into any)
//	None            nil
//	bool            bool
//	int             int64 (an int outside int64 is an error, never truncated)
//	float           float64 (NaN and ±Inf kept)
//	str             string (must be valid UTF-8: lone surrogates are an error)
//	bytes           []byte
//	list, tuple     []any (Go has no tuple; see [Tuple] for encoding one)
//	dict (str keys) map[string]any
//	array marker    [Array] (a numpy array, array.array or numeric
//	                memoryview returned by a handler; see [Array])
//
// Anything else in the input (sets, complex numbers, code objects, slices,
// non-string dict keys) is reported as [ErrUnsupported]; malformed or
// truncated input as [ErrMalformed] or [ErrTruncated]. Back-references
// (marshal's FLAG_REF) are resolved; a reference to a container that is still
// being decoded (a recursive value) is refused. Decoded containers that were
// shared in Python (one list referenced twice) are shared in Go as well.
// What decoding allocates is bounded by the input's size ([DecodeBudget]),
// and so are the copies [Unmarshal] makes into typed values of what
// back-references share; input that would need more is refused with
// [ErrTooLarge].
//
// # Go values
//
// [Marshal] accepts nil, bool, every integer kind (unsigned values above
// math.MaxInt64 are an error), float32/64, string, []byte, slices and arrays,
// maps with string keys (or keys implementing encoding.TextMarshaler),
// pointers and interfaces (nil is None), [Tuple], [RawValue], [Array]
// (n-dimensional numeric data, a numpy array in Python), and structs.
// Structs become dicts following encoding/json's conventions: the field name
// or its `json:"name"` tag, `json:"-"` skips a field, `omitempty` omits zero
// values, and embedded structs are flattened. [Unmarshal] fills the same
// shapes back, matching dict keys to struct fields exactly first and then
// case-insensitively, checking integer ranges for sized integer types. An
// [Array] is stored into *Array, or into nested slices or Go arrays of
// numbers with one level per dimension ([]float64 for a vector,
// [][]float32 for a matrix); a shape that does not nest that way is
// [ErrTypeMismatch].
//
// # Speed
//
// The common shapes — map[string]any, []any, scalars, []byte, string,
// []string, []float64, []int — are encoded without reflection, and
// structs by a plan made once per type (fields resolved, keys encoded).
// [AppendMarshal] appends to a caller's buffer, so a reused buffer makes
// encoding allocation-free. [Unmarshal] into typed values decodes straight
// into them by per-type plans, without the interface values of [Decode]:
// scalar fields and slices of scalars are written in place, and short
// strings are interned, so a record of scalars and a slice decodes with one
// allocation (the slice). Values it does not take that way (a
// back-reference to a container, a conversion such as a str into an
// encoding.TextUnmarshaler) go through the general path, with the same
// results and errors.
//
// # Out-of-band bytes
//
// [AppendMarshalOOB] leaves large []byte values out of the encoding: each
// becomes the tuple ("\x00snakepit", "buf", i) (see [MarkerTag]) and the
// slice itself, not a copy, is appended to the out-of-band buffers, at
// index i, for a receiver that takes them alongside the bytes.
// [DecodeOOB] and [UnmarshalOOB] are that receiver in Go: they resolve the
// markers to the buffers themselves, so a []byte (or an Array's Data)
// decoded from one aliases the buffer's memory rather than copying it.
// [AppendInline] puts the buffers back inline, for a receiver that takes
// marshal bytes alone.
package pymarshal

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; every error of this package wraps one of them.
var (
	// ErrUnsupported: a value outside the supported subset (a Python set,
	// complex, code object, non-string dict key; a Go channel, func, ...).
	ErrUnsupported = errors.New("unsupported type")
	// ErrIntRange: an integer that does not fit the Go destination (int64 when
	// decoding into any), or an unsigned Go value above math.MaxInt64.
	ErrIntRange = errors.New("integer out of range")
	// ErrInvalidUTF8: a string that is not valid UTF-8, in either direction.
	ErrInvalidUTF8 = errors.New("invalid UTF-8 in string")
	// ErrTooDeep: nesting beyond [MaxDepth].
	ErrTooDeep = errors.New("value nested too deeply")
	// ErrTruncated: the input ended inside a value.
	ErrTruncated = errors.New("truncated data")
	// ErrMalformed: bytes that are not a valid encoding of a supported value.
	ErrMalformed = errors.New("malformed data")
	// ErrTypeMismatch: Unmarshal found a value it cannot store in the Go
	// destination (a str into an int field, say).
	ErrTypeMismatch = errors.New("type mismatch")
	// ErrTooLarge: decoding the input would allocate more than its budget
	// (see [Decode] and [DecodeLimit]).
	ErrTooLarge = errors.New("decoded value exceeds the allocation budget")
)

// MaxDepth bounds the nesting of containers in both directions. It matches
// CPython's own marshal limit, so anything Python can write, Go can read.
const MaxDepth = 2000

// Version is the marshal format version written by [Marshal] and the one
// Python must be asked to write (marshal.dumps(v, 4)).
const Version = 4

// Error describes a failure at a place inside a value.
type Error struct {
	Op     string // "marshal" or "unmarshal"
	Path   string // where in the value: "", "[3]", "[3].name"
	Offset int    // byte offset in the input, for unmarshal; -1 when unknown
	Detail string // what was found, e.g. "set" or "chan int"
	Err    error  // one of the sentinels of this package

	tailLen int // length of Path's innermost part kept when Path was cut
}

func (e *Error) Error() string {
	msg := "pymarshal: " + e.Op
	if e.Path != "" {
		msg += " " + e.Path
	}
	msg += ": " + e.Err.Error()
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Offset >= 0 {
		msg += fmt.Sprintf(" (at byte %d)", e.Offset)
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Tuple encodes as a Python tuple rather than a list. Decoding always yields
// []any: Go has no tuple type.
type Tuple []any

// RawValue is an already encoded marshal value. Marshal copies it into its
// output verbatim, so a caller can pass through bytes it received without
// decoding them. The bytes are not checked: a RawValue must come from this
// package or from Python's marshal.dumps(v, 4).
type RawValue []byte

// prependPath adds one path element in front of an error's path as the error
// unwinds out of a container; errors from elsewhere are returned unchanged.
func prependPath(err error, elem string) error {
	var pe *Error
	if errors.As(err, &pe) {
		if pe.Path == "" || pe.Path[0] == '[' || pe.Path[0] == '.' {
			pe.Path = elem + pe.Path
		} else {
			pe.Path = elem + "." + pe.Path
		}
		pe.capPath()
	}
	return err
}

// Bounds of an error's path: a value nested thousands of levels deep would
// otherwise make a message of many kilobytes. A longer path keeps its
// outermost elements (up to pathHeadMax bytes) and its innermost ones (up to
// pathTailMax bytes), with pathElision between them.
const (
	pathHeadMax = 96
	pathTailMax = 96
	pathElision = "…"
)

// capPath shortens e.Path, built by prepending elements, to the bounds
// above. The innermost part is fixed the first time the path is cut (its
// length kept in e.tailLen); later elements are prepended to the head, whose
// innermost elements are dropped.
func (e *Error) capPath() {
	if len(e.Path) <= pathHeadMax+pathTailMax+len(pathElision) {
		return
	}
	var head, tail string
	if e.tailLen > 0 {
		n := len(e.Path) - e.tailLen - len(pathElision)
		head, tail = e.Path[:n], e.Path[len(e.Path)-e.tailLen:]
	} else {
		head, tail = e.Path[:len(e.Path)-pathTailMax], e.Path[len(e.Path)-pathTailMax:]
		if i := strings.IndexAny(tail, "[."); i > 0 {
			head, tail = e.Path[:len(head)+i], tail[i:]
		}
	}
	if len(head) > pathHeadMax {
		i := strings.LastIndexAny(head[:pathHeadMax+1], "[.")
		if i <= 0 {
			i = pathHeadMax
		}
		head = head[:i]
	}
	e.Path, e.tailLen = head+pathElision+tail, len(tail)
}

func indexElem(i int) string { return fmt.Sprintf("[%d]", i) }

func keyElem(k string) string {
	if len(k) > 40 {
		k = k[:40] + "…"
	}
	return fmt.Sprintf("[%q]", k)
}
