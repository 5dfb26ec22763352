package pymarshal

import (
	"encoding"
	"encoding/binary"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Marshal encodes v in marshal format version 4 (see the package
// documentation for the Go types accepted). Map keys are written in sorted
// order, so equal values encode to equal bytes.
func Marshal(v any) ([]byte, error) {
	return AppendMarshal(nil, v)
}

// AppendMarshal is [Marshal] appending to buf, for callers that reuse buffers.
func AppendMarshal(buf []byte, v any) ([]byte, error) {
	e := encoder{buf: buf}
	if err := e.value(v); err != nil {
		return nil, err
	}
	return e.buf, nil
}

// AppendMarshalOOB is [AppendMarshal] with out-of-band bytes: each []byte
// in v of at least minOOB bytes (every one when minOOB <= 0) is not copied
// into dst but appended to oob — the slice itself, which keeps aliasing the
// caller's memory — and encoded as the marker tuple
//
//	("\x00snakepit", "buf", i)
//
// where i is its index in the returned oob. The receiver resolves markers
// against the buffers it got alongside the bytes (see [MarkerTag]), so the
// caller must keep those slices unchanged until the receiver is done with
// them. Byte arrays ([N]byte) and [RawValue] are always copied inline.
func AppendMarshalOOB(dst []byte, v any, minOOB int, oob [][]byte) ([]byte, [][]byte, error) {
	b, oob, _, err := AppendMarshalOOBChecked(dst, v, minOOB, oob)
	return b, oob, err
}

// AppendMarshalOOBChecked is [AppendMarshalOOB] that also reports whether
// every byte it appended was written by the encoder itself: checked is
// false when v holds a [RawValue], whose bytes are copied in unchecked.
// When checked, what was appended is exactly one marshal value, well
// formed, and a map with string keys or a struct became a dict with str
// keys: a caller that splices it into a larger message (as the pool does
// with keyword arguments) need not walk it again.
func AppendMarshalOOBChecked(dst []byte, v any, minOOB int, oob [][]byte) (b []byte, oobOut [][]byte, checked bool, err error) {
	e := encoder{buf: dst, oobOn: true, minOOB: minOOB, oob: oob}
	if err := e.value(v); err != nil {
		return nil, nil, false, err
	}
	return e.buf, e.oob, !e.verbatim, nil
}

type encoder struct {
	buf   []byte
	depth int

	// Out-of-band bytes (AppendMarshalOOB): when oobOn, []byte data of at
	// least minOOB bytes goes to oob instead of buf.
	oobOn  bool
	minOOB int
	oob    [][]byte

	// verbatim: a RawValue was copied in, unchecked. Every path that
	// copies a caller's bytes in as encoded data must set it:
	// AppendMarshalOOBChecked reports the output checked only without.
	verbatim bool
}

// oobIndex puts data out of band when the encoder does so for data of that
// size, returning its index in e.oob; ok is false when data is to be
// written inline. Array data uses it as well as bytes.
func (e *encoder) oobIndex(data []byte) (i int, ok bool) {
	if !e.oobOn || len(data) < e.minOOB {
		return 0, false
	}
	e.oob = append(e.oob, data)
	return len(e.oob) - 1, true
}

// oobOrInline writes data either as the index of an out-of-band buffer (an
// int) or inline (a bytes value): the data item of an array marker.
func (e *encoder) oobOrInline(data []byte) error {
	if i, ok := e.oobIndex(data); ok {
		e.int(int64(i))
		return nil
	}
	return e.bytes(data)
}

// marker starts a marker tuple of n items, the marker str and kind first.
func (e *encoder) marker(kind string, n int) {
	e.buf = append(e.buf, typeSmallTuple, byte(n), typeShortASCII, byte(len(MarkerTag)))
	e.buf = append(e.buf, MarkerTag...)
	e.buf = append(e.buf, typeShortASCII, byte(len(kind)))
	e.buf = append(e.buf, kind...)
}

func (e *encoder) unsupported(detail string) error {
	return &Error{Op: "marshal", Offset: -1, Err: ErrUnsupported, Detail: detail}
}

func (e *encoder) u32(n int) {
	e.buf = binary.LittleEndian.AppendUint32(e.buf, uint32(n))
}

func (e *encoder) enter() error {
	e.depth++
	if e.depth > MaxDepth {
		return tooDeep()
	}
	return nil
}

func tooDeep() error {
	return &Error{Op: "marshal", Offset: -1, Err: ErrTooDeep, Detail: "more than " + strconv.Itoa(MaxDepth) + " levels"}
}

func (e *encoder) int(v int64) {
	if v >= math.MinInt32 && v <= math.MaxInt32 {
		e.buf = append(e.buf, typeInt)
		e.u32(int(int32(v)))
		return
	}
	// TYPE_LONG: signed count of 15-bit digits, least significant first.
	mag := uint64(v)
	if v < 0 {
		mag = uint64(-v) // MinInt64 wraps to 1<<63, its magnitude
	}
	var digits [5]uint16
	n := 0
	for ; mag != 0; n++ {
		digits[n] = uint16(mag & 0x7fff)
		mag >>= 15
	}
	if v < 0 {
		e.u32Prefixed(typeLong, -n)
	} else {
		e.u32Prefixed(typeLong, n)
	}
	for _, d := range digits[:n] {
		e.buf = binary.LittleEndian.AppendUint16(e.buf, d)
	}
}

func (e *encoder) u32Prefixed(code byte, n int) {
	e.buf = append(e.buf, code)
	e.u32(n)
}

func (e *encoder) float(f float64) {
	e.buf = append(e.buf, typeBinaryFloat)
	e.buf = binary.LittleEndian.AppendUint64(e.buf, math.Float64bits(f))
}

func (e *encoder) str(s string) error {
	if len(s) > math.MaxInt32 {
		return &Error{Op: "marshal", Offset: -1, Err: ErrUnsupported, Detail: "string longer than 2 GiB"}
	}
	if isShortASCII(s) {
		e.buf = append(e.buf, typeShortASCII, byte(len(s)))
		e.buf = append(e.buf, s...)
		return nil
	}
	if !utf8.ValidString(s) {
		return &Error{Op: "marshal", Offset: -1, Err: ErrInvalidUTF8}
	}
	e.u32Prefixed(typeUnicode, len(s))
	e.buf = append(e.buf, s...)
	return nil
}

func isShortASCII(s string) bool {
	if len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func (e *encoder) bytes(b []byte) error {
	if len(b) > math.MaxInt32 {
		return &Error{Op: "marshal", Offset: -1, Err: ErrUnsupported, Detail: "bytes longer than 2 GiB"}
	}
	e.u32Prefixed(typeString, len(b))
	e.buf = append(e.buf, b...)
	return nil
}

// bytesValue writes a []byte value of the caller's: inline, or out of
// band as a "buf" marker.
func (e *encoder) bytesValue(b []byte) error {
	if i, ok := e.oobIndex(b); ok {
		e.marker("buf", 3)
		e.int(int64(i))
		return nil
	}
	return e.bytes(b)
}

func (e *encoder) seqHeader(tuple bool, n int) error {
	if n > math.MaxInt32 {
		return e.unsupported("sequence longer than 2^31-1")
	}
	switch {
	case tuple && n < 256:
		e.buf = append(e.buf, typeSmallTuple, byte(n))
	case tuple:
		e.u32Prefixed(typeTuple, n)
	default:
		e.u32Prefixed(typeList, n)
	}
	return nil
}

// value encodes v, taking the common interface shapes without reflection.
func (e *encoder) value(v any) error {
	switch x := v.(type) {
	case nil:
		e.buf = append(e.buf, typeNone)
	case bool:
		e.boolean(x)
	case int:
		e.int(int64(x))
	case int64:
		e.int(x)
	case int32:
		e.int(int64(x))
	case int16:
		e.int(int64(x))
	case int8:
		e.int(int64(x))
	case uint8:
		e.int(int64(x))
	case uint16:
		e.int(int64(x))
	case uint32:
		e.int(int64(x))
	case uint64:
		return e.uint(x)
	case uint:
		return e.uint(uint64(x))
	case float64:
		e.float(x)
	case float32:
		e.float(float64(x))
	case string:
		return e.str(x)
	case []byte:
		return e.bytesValue(x)
	case []string:
		return e.strings(x)
	case []float64:
		return e.floats(x)
	case []int:
		return e.ints(x)
	case []int64:
		return e.ints64(x)
	case map[string]string:
		return e.stringMap(x)
	case RawValue:
		if len(x) == 0 {
			return e.unsupported("empty RawValue")
		}
		e.verbatim = true
		e.buf = append(e.buf, x...)
	case Tuple:
		return e.anySlice(x, true)
	case []any:
		return e.anySlice(x, false)
	case map[string]any:
		return e.anyMap(x)
	case Array:
		return e.array(x)
	default:
		return e.reflect(reflect.ValueOf(v))
	}
	return nil
}

func (e *encoder) uint(u uint64) error {
	if u > math.MaxInt64 {
		return &Error{Op: "marshal", Offset: -1, Err: ErrIntRange, Detail: strconv.FormatUint(u, 10)}
	}
	e.int(int64(u))
	return nil
}

// Common slice and map types, encoded without reflection. A nil slice or
// map is None, as through reflection.

func (e *encoder) strings(s []string) error {
	if s == nil {
		e.buf = append(e.buf, typeNone)
		return nil
	}
	if err := e.seqHeader(false, len(s)); err != nil {
		return err
	}
	for i, x := range s {
		if err := e.str(x); err != nil {
			return prependPath(err, indexElem(i))
		}
	}
	return nil
}

func (e *encoder) floats(s []float64) error {
	if s == nil {
		e.buf = append(e.buf, typeNone)
		return nil
	}
	if err := e.seqHeader(false, len(s)); err != nil {
		return err
	}
	for _, x := range s {
		e.float(x)
	}
	return nil
}

func (e *encoder) ints(s []int) error {
	if s == nil {
		e.buf = append(e.buf, typeNone)
		return nil
	}
	if err := e.seqHeader(false, len(s)); err != nil {
		return err
	}
	for _, x := range s {
		e.int(int64(x))
	}
	return nil
}

func (e *encoder) ints64(s []int64) error {
	if s == nil {
		e.buf = append(e.buf, typeNone)
		return nil
	}
	if err := e.seqHeader(false, len(s)); err != nil {
		return err
	}
	for _, x := range s {
		e.int(x)
	}
	return nil
}

func (e *encoder) stringMap(m map[string]string) error {
	if m == nil {
		e.buf = append(e.buf, typeNone)
		return nil
	}
	if err := e.enter(); err != nil {
		return err
	}
	e.buf = append(e.buf, typeDict)
	var small [16]string
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := e.str(k); err != nil {
			return prependPath(err, keyElem(k))
		}
		if err := e.str(m[k]); err != nil {
			return prependPath(err, keyElem(k))
		}
	}
	e.buf = append(e.buf, typeNull)
	e.depth--
	return nil
}

func (e *encoder) boolean(b bool) {
	if b {
		e.buf = append(e.buf, typeTrue)
	} else {
		e.buf = append(e.buf, typeFalse)
	}
}

func (e *encoder) anySlice(s []any, tuple bool) error {
	if err := e.enter(); err != nil {
		return err
	}
	if err := e.seqHeader(tuple, len(s)); err != nil {
		return err
	}
	for i, el := range s {
		if err := e.value(el); err != nil {
			return prependPath(err, indexElem(i))
		}
	}
	e.depth--
	return nil
}

func (e *encoder) anyMap(m map[string]any) error {
	if err := e.enter(); err != nil {
		return err
	}
	e.buf = append(e.buf, typeDict)
	if len(m) == 1 {
		for k, v := range m {
			if err := e.str(k); err != nil {
				return prependPath(err, keyElem(k))
			}
			if err := e.value(v); err != nil {
				return prependPath(err, keyElem(k))
			}
		}
		e.buf = append(e.buf, typeNull)
		e.depth--
		return nil
	}
	// Entries collected with their values, sorted by key: no second
	// lookup per key. Small maps need no allocation.
	var small [8]anyEntry
	entries := small[:0]
	for k, v := range m {
		entries = append(entries, anyEntry{k, v})
	}
	if len(entries) <= len(small) {
		for i := 1; i < len(entries); i++ { // insertion sort: few entries
			for j := i; j > 0 && keyLess(entries[j].k, entries[j-1].k); j-- {
				entries[j], entries[j-1] = entries[j-1], entries[j]
			}
		}
	} else {
		slices.SortFunc(entries, func(a, b anyEntry) int { return strings.Compare(a.k, b.k) })
	}
	for _, en := range entries {
		if err := e.str(en.k); err != nil {
			return prependPath(err, keyElem(en.k))
		}
		if err := e.value(en.v); err != nil {
			return prependPath(err, keyElem(en.k))
		}
	}
	e.buf = append(e.buf, typeNull)
	e.depth--
	return nil
}

// keyLess is a < b, deciding on the first bytes where they differ, as
// keys mostly do, without a call.
func keyLess(a, b string) bool {
	if len(a) > 0 && len(b) > 0 && a[0] != b[0] {
		return a[0] < b[0]
	}
	return a < b
}

type anyEntry struct {
	k string
	v any
}

var (
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
	bytesType         = reflect.TypeFor[[]byte]()
)

func (e *encoder) reflect(rv reflect.Value) error {
	if !rv.IsValid() {
		e.buf = append(e.buf, typeNone)
		return nil
	}
	switch rv.Kind() {
	case reflect.Bool:
		e.boolean(rv.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.int(rv.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return e.uint(rv.Uint())
	case reflect.Float32, reflect.Float64:
		e.float(rv.Float())
	case reflect.String:
		return e.str(rv.String())
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			e.buf = append(e.buf, typeNone)
			return nil
		}
		if err := e.enter(); err != nil {
			return err
		}
		var err error
		if el := rv.Elem(); rv.Kind() == reflect.Pointer && el.Kind() == reflect.Struct && el.Type() != arrayType {
			err = e.reflectStruct(el) // Interface would copy the struct
		} else {
			err = e.value(el.Interface())
		}
		e.depth--
		return err
	case reflect.Slice:
		if rv.Type() == rawValueType {
			return e.value(RawValue(rv.Bytes())) // verbatim, wherever it sits
		}
		if rv.IsNil() && rv.Type() != bytesType {
			e.buf = append(e.buf, typeNone)
			return nil
		}
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			return e.bytesValue(rv.Bytes())
		}
		return e.reflectSeq(rv, rv.Type() == reflect.TypeFor[Tuple]())
	case reflect.Array:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			b := make([]byte, rv.Len())
			reflect.Copy(reflect.ValueOf(b), rv)
			return e.bytes(b)
		}
		return e.reflectSeq(rv, false)
	case reflect.Map:
		if rv.IsNil() {
			e.buf = append(e.buf, typeNone)
			return nil
		}
		return e.reflectMap(rv)
	case reflect.Struct:
		if rv.Type() == arrayType {
			return e.array(rv.Interface().(Array))
		}
		return e.reflectStruct(rv)
	default:
		return e.unsupported(rv.Type().String())
	}
	return nil
}

var rawValueType = reflect.TypeFor[RawValue]()

func (e *encoder) reflectSeq(rv reflect.Value, tuple bool) error {
	if err := e.enter(); err != nil {
		return err
	}
	n := rv.Len()
	if err := e.seqHeader(tuple, n); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := e.reflect(rv.Index(i)); err != nil {
			return prependPath(err, indexElem(i))
		}
	}
	e.depth--
	return nil
}

func (e *encoder) reflectMap(rv reflect.Value) error {
	kt := rv.Type().Key()
	if kt.Kind() != reflect.String && !kt.Implements(textMarshalerType) {
		return e.unsupported("map key type " + kt.String() + " (dict keys must be strings)")
	}
	if err := e.enter(); err != nil {
		return err
	}
	type kv struct {
		k string
		v reflect.Value
	}
	entries := make([]kv, 0, rv.Len())
	it := rv.MapRange()
	for it.Next() {
		k := it.Key()
		var ks string
		if kt.Kind() == reflect.String {
			ks = k.String()
		} else {
			txt, err := k.Interface().(encoding.TextMarshaler).MarshalText()
			if err != nil {
				return &Error{Op: "marshal", Offset: -1, Err: ErrUnsupported, Detail: "map key: " + err.Error()}
			}
			ks = string(txt)
		}
		entries = append(entries, kv{ks, it.Value()})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].k < entries[j].k })
	e.buf = append(e.buf, typeDict)
	for _, en := range entries {
		if err := e.str(en.k); err != nil {
			return prependPath(err, keyElem(en.k))
		}
		if err := e.reflect(en.v); err != nil {
			return prependPath(err, keyElem(en.k))
		}
	}
	e.buf = append(e.buf, typeNull)
	e.depth--
	return nil
}

func (e *encoder) reflectStruct(rv reflect.Value) error {
	if err := e.enter(); err != nil {
		return err
	}
	e.buf = append(e.buf, typeDict)
	for _, f := range cachedFields(rv.Type()) {
		fv, ok := fieldByIndex(rv, f.index)
		if !ok || (f.omitEmpty && fv.IsZero()) {
			continue
		}
		if f.key != nil {
			e.buf = append(e.buf, f.key...)
		} else if err := e.str(f.name); err != nil {
			return prependPath(err, "."+f.name)
		}
		if err := e.reflect(fv); err != nil {
			return prependPath(err, "."+f.name)
		}
	}
	e.buf = append(e.buf, typeNull)
	e.depth--
	return nil
}

// fieldByIndex follows an embedded-field path, reporting false where it
// passes through a nil embedded pointer (the field is then absent).
func fieldByIndex(v reflect.Value, index []int) (reflect.Value, bool) {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v, true
}

// Appenders for callers that build a known shape without boxing values in
// interfaces (the workers' call envelope).

// AppendNone appends None.
func AppendNone(b []byte) []byte { return append(b, typeNone) }

// AppendString appends a str; invalid UTF-8 is an error.
func AppendString(b []byte, s string) ([]byte, error) {
	e := encoder{buf: b}
	if err := e.str(s); err != nil {
		return nil, err
	}
	return e.buf, nil
}

// AppendBytes appends a bytes value.
func AppendBytes(b []byte, p []byte) []byte {
	e := encoder{buf: b}
	_ = e.bytes(p) // only fails beyond 2 GiB, which a []byte this call gets cannot reach in practice
	return e.buf
}

// AppendFloat appends a float.
func AppendFloat(b []byte, f float64) []byte {
	e := encoder{buf: b}
	e.float(f)
	return e.buf
}

// AppendTupleHeader starts a tuple of n items; the items follow.
func AppendTupleHeader(b []byte, n int) []byte {
	e := encoder{buf: b}
	_ = e.seqHeader(true, n)
	return e.buf
}

// AppendListHeader starts a list of n items; the items follow.
func AppendListHeader(b []byte, n int) []byte {
	e := encoder{buf: b}
	_ = e.seqHeader(false, n)
	return e.buf
}
