package pymarshal

import (
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"unicode/utf8"
)

// Type codes of the marshal format (CPython Python/marshal.c).
const (
	typeNull             = '0'
	typeNone             = 'N'
	typeFalse            = 'F'
	typeTrue             = 'T'
	typeStopIter         = 'S'
	typeEllipsis         = '.'
	typeInt              = 'i'
	typeInt64            = 'I' // written by no current CPython; read for completeness
	typeFloat            = 'f'
	typeBinaryFloat      = 'g'
	typeComplex          = 'x'
	typeBinaryComplex    = 'y'
	typeLong             = 'l'
	typeString           = 's' // bytes
	typeInterned         = 't'
	typeRef              = 'r'
	typeTuple            = '('
	typeList             = '['
	typeDict             = '{'
	typeCode             = 'c'
	typeUnicode          = 'u'
	typeUnknown          = '?'
	typeSet              = '<'
	typeFrozenSet        = '>'
	typeSlice            = ':'
	typeASCII            = 'a'
	typeASCIIInterned    = 'A'
	typeSmallTuple       = ')'
	typeShortASCII       = 'z'
	typeShortASCIIIntern = 'Z'

	flagRef = 0x80
)

// unsupportedNames names the marshal types outside the subset, for errors.
var unsupportedNames = map[byte]string{
	typeStopIter:      "StopIteration",
	typeEllipsis:      "ellipsis",
	typeComplex:       "complex",
	typeBinaryComplex: "complex",
	typeCode:          "code",
	typeUnknown:       "unknown",
	typeSet:           "set",
	typeFrozenSet:     "frozenset",
	typeSlice:         "slice",
}

// Decode decodes one marshal value that must span all of data, returning it
// in the Go shapes listed in the package documentation.
//
// What decoding may allocate is bounded by the input's size: at most
// [DecodeBudget](len(data)) bytes of Go values (an estimate that counts
// slots, boxed values, maps and back-reference tables), which is above what
// ordinary data needs and below what input built to expand needs (one-byte
// values each with a back-reference entry, empty containers: 40 to 80 bytes
// per input byte). Such input is refused with [ErrTooLarge] before the
// allocation that would cross the bound. Use [DecodeLimit] for another
// bound — a tighter one where the input's shape is known.
func Decode(data []byte) (any, error) {
	return DecodeLimit(data, DecodeBudget(len(data)))
}

// Budget of [Decode]: BudgetPerByte bytes of decoded Go values per input
// byte, plus BudgetBase. Values Python writes for ordinary data cost less
// per byte: numbers and strings a few bytes, lists of None or bools 16,
// records (small dicts whose keys marshal shares by back-reference) 20–25
// — a Go map costs hundreds of bytes where Python writes a dozen.
const (
	BudgetPerByte = 32
	BudgetBase    = 64 << 20
)

// DecodeBudget returns the allocation bound [Decode] applies to an input of
// n bytes: BudgetPerByte*n + BudgetBase.
func DecodeBudget(n int) int64 {
	return BudgetPerByte*int64(n) + BudgetBase
}

// DecodeLimit is [Decode] with an explicit bound, in bytes, on the Go
// values the decoding may allocate (the same estimate Decode uses). It
// fails with an error wrapping [ErrTooLarge] when the value would need more.
func DecodeLimit(data []byte, limit int64) (any, error) {
	return decodeAll(decoder{data: data, budget: limit, limit: limit, shared: len(data) <= sharedStringMax})
}

// DecodeOOB is [Decode] of data written with out-of-band buffers (see
// [AppendMarshalOOB]): each marker ("\x00snakepit", "buf", i) decodes to
// oob[i] and an array marker whose data is an int i gets oob[i] as its
// Data. Both alias oob's memory: nothing is copied, and the values are
// valid as long as that memory is. A reference outside oob (or a marker of
// the wrong shape) is an error wrapping [ErrMalformed].
func DecodeOOB(data []byte, oob [][]byte) (any, error) {
	limit := DecodeBudget(len(data))
	return decodeAll(decoder{data: data, budget: limit, limit: limit, shared: len(data) <= sharedStringMax,
		oobOn: true, oob: oob})
}

// decodeAll decodes the one value that must span d's data.
func decodeAll(d decoder) (any, error) {
	v, err := d.value()
	if err != nil {
		return nil, err
	}
	if d.pos != len(d.data) {
		return nil, d.errAt(d.pos, ErrMalformed, strconv.Itoa(len(d.data)-d.pos)+" trailing bytes")
	}
	return v, nil
}

type refSlot struct {
	v        any
	building bool // a container whose elements are still being decoded
	// lazy is set by typed decoding (see [Unmarshal]), which stores values
	// straight into Go fields and so has no interface value to keep: the
	// slot then records where the value starts instead.
	lazy lazyKind
	off  uint32 // typed decoding takes inputs below 4 GiB only
}

// lazyKind says what a lazy reference slot stands for.
type lazyKind uint8

const (
	notLazy       lazyKind = iota
	lazyScalar             // a number or string at off: decoded again when referenced
	lazyContainer          // a container at off: a reference to it needs the general path
)

// errNeedGeneral stops typed decoding where only the general path (decode
// to interface values, then assign) can go on; it never leaves the package.
var errNeedGeneral = errors.New("pymarshal: typed decoding cannot continue")

// sharedStringMax: inputs up to this size are copied once into a string
// that every decoded str slices, instead of one allocation per str. Larger
// inputs are not, so a small string kept by the caller cannot pin them.
const sharedStringMax = 64 << 10

// decoder is the state of one decoding. unmarshalTyped resets a pooled one
// field by field: a new field must be reset there too.
type decoder struct {
	data   []byte
	shared bool   // len(data) <= sharedStringMax: strs slice text
	text   string // data as a string, made by the first str when shared
	pos    int
	depth  int
	refs   []refSlot
	budget int64 // bytes of Go values still allowed
	limit  int64 // the initial budget, for messages

	// Out-of-band buffers (DecodeOOB, UnmarshalOOB): when oobOn, markers
	// that name a buffer resolve to it.
	oobOn bool
	oob   [][]byte
	// tuples: tuples decode as Tuple, not []any (AppendInline).
	tuples bool
}

// Estimated Go cost of decoded values, in bytes (64-bit platforms, measured
// with runtime.MemStats).
const (
	costSlot     = 16  // an interface value: a []any element or a boxed string header
	costBoxed    = 16  // a boxed int64 or float64 (its allocation size class)
	costSlice    = 48  // a boxed slice header ([]any, []byte) and its overhead
	costRef      = 64  // a back-reference table entry, with append's growth
	costMap      = 80  // a map header
	costMapGroup = 264 // the first group of eight slots of a map[string]any
	costMapEntry = 48  // each entry past the first eight, with growth slack
)

// charge takes n bytes from the budget, or fails without taking them.
func (d *decoder) charge(off int, n int64) error {
	if n > d.budget {
		return d.overBudget(off)
	}
	d.budget -= n
	return nil
}

func (d *decoder) overBudget(off int) error {
	d.budget = -1
	return d.errAt(off, ErrTooLarge, "the decoded value needs more than "+
		strconv.FormatInt(d.limit, 10)+" bytes for "+strconv.Itoa(len(d.data))+" bytes of input")
}

// strCost is the cost of a decoded str of n bytes: its boxed header, and
// its bytes unless it slices the shared copy of the input.
func (d *decoder) strCost(n int) int64 {
	if d.shared {
		return costSlot
	}
	return costSlot + int64(n)
}

// str returns data[from:to] as a string.
func (d *decoder) str(from, to int) string {
	if d.shared {
		if d.text == "" {
			d.text = string(d.data)
		}
		return d.text[from:to]
	}
	return string(d.data[from:to])
}

func (d *decoder) addRef(s refSlot) {
	if d.refs == nil {
		d.refs = make([]refSlot, 0, 16) // most objects CPython writes carry FLAG_REF
	}
	d.refs = append(d.refs, s)
}

func (d *decoder) errAt(off int, sentinel error, detail string) error {
	return &Error{Op: "unmarshal", Offset: off, Err: sentinel, Detail: detail}
}

func (d *decoder) need(n int) error {
	if n < 0 || len(d.data)-d.pos < n {
		return d.errAt(d.pos, ErrTruncated, "")
	}
	return nil
}

func (d *decoder) byte1() (byte, error) {
	if err := d.need(1); err != nil {
		return 0, err
	}
	b := d.data[d.pos]
	d.pos++
	return b, nil
}

func (d *decoder) int32() (int32, error) {
	if err := d.need(4); err != nil {
		return 0, err
	}
	v := int32(binary.LittleEndian.Uint32(d.data[d.pos:]))
	d.pos += 4
	return v, nil
}

// size reads a non-negative 32-bit length and checks that at least
// n*minBytes bytes remain, so a forged length cannot make us allocate.
func (d *decoder) size(minBytes int) (int, error) {
	off := d.pos
	n, err := d.int32()
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, d.errAt(off, ErrMalformed, "negative length")
	}
	if int64(n)*int64(minBytes) > int64(len(d.data)-d.pos) {
		return 0, d.errAt(off, ErrTruncated, "length "+strconv.Itoa(int(n))+" exceeds input")
	}
	return int(n), nil
}

func (d *decoder) bytesN(n int) ([]byte, error) {
	if err := d.need(n); err != nil {
		return nil, err
	}
	b := d.data[d.pos : d.pos+n]
	d.pos += n
	return b, nil
}

// reserve registers a FLAG_REF slot before the value is decoded, as CPython
// numbers references in the order their flags appear.
func (d *decoder) reserve(flag bool) int {
	if !flag {
		return -1
	}
	d.addRef(refSlot{building: true})
	return len(d.refs) - 1
}

// reserveCharged is reserve, charging the table entry first.
func (d *decoder) reserveCharged(off int, flag bool) (int, error) {
	if flag {
		if err := d.charge(off, costRef); err != nil {
			return -1, err
		}
	}
	return d.reserve(flag), nil
}

func (d *decoder) fill(idx int, v any) {
	if idx >= 0 {
		d.refs[idx] = refSlot{v: v}
	}
}

func (d *decoder) value() (any, error) {
	off := d.pos
	code, err := d.byte1()
	if err != nil {
		return nil, err
	}
	flag := code&flagRef != 0
	code &^= flagRef
	if flag {
		if err := d.charge(off, costRef); err != nil {
			return nil, err
		}
	}

	switch code {
	case typeNone, typeTrue, typeFalse:
		// Singletons never carry FLAG_REF in CPython's writer; tolerate it.
		var v any
		if code != typeNone {
			v = code == typeTrue
		}
		d.fill(d.reserve(flag), v)
		return v, nil

	case typeInt:
		if err := d.charge(off, costBoxed); err != nil {
			return nil, err
		}
		idx := d.reserve(flag)
		n, err := d.int32()
		if err != nil {
			return nil, err
		}
		v := int64(n)
		d.fill(idx, v)
		return v, nil

	case typeInt64:
		if err := d.charge(off, costBoxed); err != nil {
			return nil, err
		}
		idx := d.reserve(flag)
		b, err := d.bytesN(8)
		if err != nil {
			return nil, err
		}
		v := int64(binary.LittleEndian.Uint64(b))
		d.fill(idx, v)
		return v, nil

	case typeLong:
		if err := d.charge(off, costBoxed); err != nil {
			return nil, err
		}
		idx := d.reserve(flag)
		v, err := d.long(off)
		if err != nil {
			return nil, err
		}
		d.fill(idx, v)
		return v, nil

	case typeBinaryFloat:
		if err := d.charge(off, costBoxed); err != nil {
			return nil, err
		}
		idx := d.reserve(flag)
		b, err := d.bytesN(8)
		if err != nil {
			return nil, err
		}
		v := math.Float64frombits(binary.LittleEndian.Uint64(b))
		d.fill(idx, v)
		return v, nil

	case typeFloat:
		// The text float of marshal versions 0 and 1, which version 4 never
		// writes; its syntax is CPython's, not Go's, so it is not accepted.
		return nil, d.errAt(off, ErrMalformed, "text float (marshal version < 2)")

	case typeString:
		idx := d.reserve(flag)
		n, err := d.size(1)
		if err != nil {
			return nil, err
		}
		if err := d.charge(off, costSlice+int64(n)); err != nil {
			return nil, err
		}
		b, _ := d.bytesN(n)
		v := make([]byte, n) // never nil: b"" decodes to an empty, non-nil slice
		copy(v, b)
		d.fill(idx, v)
		return v, nil

	case typeUnicode, typeInterned, typeASCII, typeASCIIInterned, typeShortASCII, typeShortASCIIIntern:
		idx := d.reserve(flag)
		var n int
		if code == typeShortASCII || code == typeShortASCIIIntern {
			b, err := d.byte1()
			if err != nil {
				return nil, err
			}
			n = int(b)
		} else {
			n, err = d.size(1)
			if err != nil {
				return nil, err
			}
		}
		start := d.pos
		b, err := d.bytesN(n)
		if err != nil {
			return nil, err
		}
		if err := d.charge(off, d.strCost(n)); err != nil {
			return nil, err
		}
		if code == typeUnicode || code == typeInterned {
			if !utf8.Valid(b) {
				return nil, d.errAt(off, ErrInvalidUTF8, "")
			}
		} else if !isASCII(b) {
			// CPython reads the ASCII types as Latin-1 and never writes a
			// byte above 0x7f in them: such input is not ours to reinterpret.
			return nil, d.errAt(off, ErrMalformed, "non-ASCII byte in an ASCII string")
		}
		v := d.str(start, start+n)
		d.fill(idx, v)
		return v, nil

	case typeRef:
		n, err := d.int32()
		if err != nil {
			return nil, err
		}
		if n < 0 || int(n) >= len(d.refs) {
			return nil, d.errAt(off, ErrMalformed, "reference to unknown object "+strconv.Itoa(int(n)))
		}
		slot := d.refs[n]
		if slot.building {
			return nil, d.errAt(off, ErrUnsupported, "recursive value")
		}
		if slot.lazy != notLazy {
			return d.resolveLazy(int(n))
		}
		return slot.v, nil

	case typeTuple, typeSmallTuple, typeList:
		idx := d.reserve(flag)
		var n int
		if code == typeSmallTuple {
			b, err := d.byte1()
			if err != nil {
				return nil, err
			}
			n = int(b)
		} else {
			n, err = d.size(1)
			if err != nil {
				return nil, err
			}
		}
		if err := d.enter(off); err != nil {
			return nil, err
		}
		if err := d.charge(off, costSlice+costSlot*int64(n)); err != nil {
			return nil, err
		}
		list := make([]any, n)
		for i := range list {
			if list[i], err = d.value(); err != nil {
				return nil, prependPath(err, indexElem(i))
			}
		}
		d.depth--
		if code != typeList && n > 0 && list[0] == MarkerTag {
			v, err := d.marker(off, list)
			if err != nil {
				return nil, err
			}
			d.fill(idx, v)
			return v, nil
		}
		if d.tuples && code != typeList {
			d.fill(idx, Tuple(list))
			return Tuple(list), nil
		}
		d.fill(idx, list)
		return list, nil

	case typeDict:
		idx := d.reserve(flag)
		if err := d.enter(off); err != nil {
			return nil, err
		}
		if err := d.charge(off, costSlot+costMap); err != nil {
			return nil, err
		}
		m := make(map[string]any)
		for entries := 0; ; entries++ {
			if err := d.need(1); err != nil {
				return nil, err
			}
			if d.data[d.pos] == typeNull {
				d.pos++
				break
			}
			cost := int64(costMapEntry)
			if entries == 0 {
				cost = costMapGroup
			} else if entries < 8 {
				cost = 0
			}
			if err := d.charge(d.pos, cost); err != nil {
				return nil, err
			}
			ks, err := d.key()
			if err != nil {
				return nil, err
			}
			v, err := d.value()
			if err != nil {
				return nil, prependPath(err, keyElem(ks))
			}
			m[ks] = v
		}
		d.depth--
		d.fill(idx, m)
		return m, nil
	}

	if name, ok := unsupportedNames[code]; ok {
		return nil, d.errAt(off, ErrUnsupported, name)
	}
	return nil, d.errAt(off, ErrMalformed, "unknown type code "+strconv.QuoteRune(rune(code)))
}

// resolveLazy returns the value of lazy reference slot n, decoding a
// scalar again from where it starts.
func (d *decoder) resolveLazy(n int) (any, error) {
	slot := d.refs[n]
	if slot.lazy != lazyScalar {
		return nil, errNeedGeneral
	}
	// A scalar holds no references of its own: a copy of the decoder reads
	// it without touching the reference table.
	t := decoder{data: d.data, shared: d.shared, text: d.text, pos: int(slot.off), budget: d.budget, limit: d.limit}
	t.refs = []refSlot{} // never read: a scalar's own flag lands here
	v, err := t.value()
	d.text, d.budget = t.text, t.budget
	if err != nil {
		return nil, err
	}
	d.refs[n] = refSlot{v: v}
	return v, nil
}

// key decodes a dict key, which must be a str. Short ASCII keys, by far the
// most common, are read without boxing them in an interface first.
func (d *decoder) key() (string, error) {
	off := d.pos
	if err := d.need(2); err != nil {
		return "", err
	}
	if code := d.data[d.pos]; code&^flagRef == typeShortASCII || code&^flagRef == typeShortASCIIIntern {
		n := int(d.data[d.pos+1])
		if len(d.data)-d.pos-2 < n {
			return "", d.errAt(off, ErrTruncated, "")
		}
		if !isASCII(d.data[d.pos+2 : d.pos+2+n]) {
			return "", d.errAt(off, ErrMalformed, "non-ASCII byte in an ASCII string")
		}
		cost := d.strCost(n) - costSlot // stored in the map's slot, not boxed
		if code&flagRef != 0 {
			cost += costRef
		}
		if err := d.charge(off, cost); err != nil {
			return "", err
		}
		s := d.str(d.pos+2, d.pos+2+n)
		d.pos += 2 + n
		if code&flagRef != 0 {
			d.addRef(refSlot{v: s})
		}
		return s, nil
	}
	k, err := d.value()
	if err != nil {
		return "", err
	}
	ks, ok := k.(string)
	if !ok {
		return "", d.errAt(off, ErrUnsupported, "dict key of type "+pyTypeName(k))
	}
	return ks, nil
}

func (d *decoder) enter(off int) error {
	d.depth++
	if d.depth > MaxDepth {
		return d.tooDeep(off)
	}
	return nil
}

func (d *decoder) tooDeep(off int) error {
	return d.errAt(off, ErrTooDeep, "more than "+strconv.Itoa(MaxDepth)+" levels")
}

// long decodes TYPE_LONG: a signed digit count, then |count| 15-bit digits,
// least significant first.
func (d *decoder) long(off int) (int64, error) {
	n, err := d.int32()
	if err != nil {
		return 0, err
	}
	neg := n < 0
	cnt := int64(n)
	if neg {
		cnt = -cnt
	}
	if cnt*2 > int64(len(d.data)-d.pos) {
		return 0, d.errAt(off, ErrTruncated, "")
	}
	digits := make([]uint16, cnt)
	for i := range digits {
		b, _ := d.bytesN(2)
		digits[i] = binary.LittleEndian.Uint16(b)
		if digits[i] > 0x7fff {
			return 0, d.errAt(off, ErrMalformed, "bad long digit")
		}
	}
	if cnt > 0 && digits[cnt-1] == 0 {
		return 0, d.errAt(off, ErrMalformed, "unnormalised long")
	}
	// int64 needs at most five 15-bit digits (75 bits); more is out of range.
	if cnt > 5 {
		return 0, d.errAt(off, ErrIntRange, ">64-bit int ("+strconv.Itoa(int(cnt)*15)+" bits)")
	}
	var mag uint64
	for i := len(digits) - 1; i >= 0; i-- {
		if mag > math.MaxUint64>>15 {
			return 0, d.errAt(off, ErrIntRange, ">64-bit int")
		}
		mag = mag<<15 | uint64(digits[i])
	}
	switch {
	case !neg && mag <= math.MaxInt64:
		return int64(mag), nil
	case neg && mag <= 1<<63:
		return -int64(mag), nil // -(1<<63) wraps to MinInt64, as intended
	}
	return 0, d.errAt(off, ErrIntRange, ">64-bit int")
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// pyTypeName names a decoded value by its Python type, for messages.
func pyTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case []any:
		return "list"
	case Tuple:
		return "tuple"
	case map[string]any:
		return "dict"
	case Array:
		return "array"
	}
	return "unknown"
}
