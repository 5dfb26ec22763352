package pymarshal

import (
	"bytes"
	"encoding/binary"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unsafe"
)

// MarkerTag is the first element of the tuples that stand for values
// marshal has no type for ([Array]) and for out-of-band data
// ([AppendMarshalOOB]). No real value starts with a NUL.
const MarkerTag = "\x00snakepit"

// markerNeedle is how MarkerTag appears in every marshal stream that holds
// it at least once: a short ASCII str of length 9 (with or without
// FLAG_REF), so the length byte and the text follow each other.
var markerNeedle = []byte("\x09" + MarkerTag)

// HasMarkers reports whether encoded marshal data may contain a marker
// tuple (an [Array]). It is a byte search, as fast as memchr: false means
// there is none; true may also come from bytes that only happen to contain
// the tag.
func HasMarkers(data []byte) bool {
	return len(data) >= minMarkerLen && bytes.Contains(data, markerNeedle)
}

// minMarkerLen is the size of the smallest marker tuple, ("\x00snakepit",
// "buf", i): shorter data holds none (small results skip the search).
const minMarkerLen = 2 + 2 + len(MarkerTag) + 2 + len("buf") + 5

// Array is n-dimensional numeric data: the Go side of a numpy.ndarray.
//
// DType is numpy's spelling of the element type, always little-endian:
// "<f8" float64, "<f4" float32, "|i1" int8, "<i2" int16, "<i4" int32,
// "<i8" int64, "|u1" uint8, "<u2" uint16, "<u4" uint32, "<u8" uint64,
// "|b1" bool (one byte, 0 or 1). Shape holds the dimensions (a nil or empty
// Shape is a 0-d array of one element) and Data the elements in C order
// (last index fastest), len(Data) = product(Shape) × the element size.
//
// On the wire an Array is the tuple ("\x00snakepit", "array", dtype,
// shape, data) with data as bytes. Python handlers receive it as a
// read-only numpy.ndarray over the bytes when numpy is importable, and as a
// read-only memoryview cast to the element format and shape otherwise
// (a memoryview cannot have a zero dimension: an empty array arrives as a
// one-dimensional empty view). numpy arrays, array.array objects and
// memoryviews with a numeric format returned by handlers come back as an
// Array, which [Decode] returns and [Unmarshal] stores into *Array or into
// (nested) slices and Go arrays of numbers. Plain Go slices keep encoding
// as lists: arrays are chosen by using this type.
//
// Use [NewArray] to make one over a Go slice without copying it and
// [ArrayData] to view its data as a Go slice.
type Array struct {
	DType string
	Shape []int
	Data  []byte
}

// Numeric is the element types an [Array] can hold.
type Numeric interface {
	~float32 | ~float64 | ~int8 | ~int16 | ~int32 | ~int64 |
		~uint8 | ~uint16 | ~uint32 | ~uint64 | ~bool
}

// MaxArrayDims bounds an Array's number of dimensions, numpy's own limit.
const MaxArrayDims = 64

// dtypeInfo describes one element type of the table in [Array].
type dtypeInfo struct {
	name string
	size int
	kind reflect.Kind
}

var dtypes = []dtypeInfo{
	{"<f8", 8, reflect.Float64}, {"<f4", 4, reflect.Float32},
	{"|i1", 1, reflect.Int8}, {"<i2", 2, reflect.Int16}, {"<i4", 4, reflect.Int32}, {"<i8", 8, reflect.Int64},
	{"|u1", 1, reflect.Uint8}, {"<u2", 2, reflect.Uint16}, {"<u4", 4, reflect.Uint32}, {"<u8", 8, reflect.Uint64},
	{"|b1", 1, reflect.Bool},
}

func lookupDType(name string) (dtypeInfo, bool) {
	for _, d := range dtypes {
		if d.name == name {
			return d, true
		}
	}
	return dtypeInfo{}, false
}

func dtypeOfKind(k reflect.Kind) (dtypeInfo, bool) {
	for _, d := range dtypes {
		if d.kind == k {
			return d, true
		}
	}
	return dtypeInfo{}, false
}

// hostLittleEndian: Array data is little-endian; the zero-copy views of
// NewArray and ArrayData are only valid on such hosts.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

func arrayErr(op string, sentinel error, detail string) error {
	return &Error{Op: op, Offset: -1, Err: sentinel, Detail: detail}
}

// elemCount returns the product of shape, checking each dimension and that
// count × size stays below max.
func elemCount(shape []int, size int, max int64) (int, string) {
	if len(shape) > MaxArrayDims {
		return 0, "array of " + strconv.Itoa(len(shape)) + " dimensions (at most " + strconv.Itoa(MaxArrayDims) + ")"
	}
	n := int64(1)
	zero := false
	for _, d := range shape {
		if d < 0 {
			return 0, "negative array dimension " + strconv.Itoa(d)
		}
		if d == 0 {
			zero = true
			continue
		}
		if int64(d) > max/int64(size)/n {
			return 0, "array shape " + fmtShape(shape) + " exceeds " + strconv.FormatInt(max, 10) + " bytes"
		}
		n *= int64(d)
	}
	if zero {
		return 0, ""
	}
	return int(n), ""
}

func fmtShape(shape []int) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, d := range shape {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(d))
	}
	if len(shape) == 1 {
		b.WriteByte(',')
	}
	b.WriteByte(')')
	return b.String()
}

// check validates a: known dtype, sane shape, data of the right length.
func (a *Array) check(op string, sentinel error) (dtypeInfo, int, error) {
	dt, ok := lookupDType(a.DType)
	if !ok {
		return dt, 0, arrayErr(op, sentinel, "unknown array dtype "+strconv.Quote(a.DType))
	}
	n, msg := elemCount(a.Shape, dt.size, math.MaxInt32)
	if msg != "" {
		return dt, 0, arrayErr(op, sentinel, msg)
	}
	if want := n * dt.size; len(a.Data) != want {
		return dt, 0, arrayErr(op, sentinel, "array "+a.DType+" "+fmtShape(a.Shape)+" needs "+
			strconv.Itoa(want)+" bytes of data, has "+strconv.Itoa(len(a.Data)))
	}
	return dt, n, nil
}

// Len returns the number of elements, the product of the shape.
func (a Array) Len() int {
	n := 1
	for _, d := range a.Shape {
		n *= d
	}
	return n
}

// NewArray returns an Array over data, which it does not copy: Data
// aliases data's memory, so data must not change while the Array is in
// use. shape defaults to one dimension of len(data); otherwise its product
// must equal len(data). The dtype follows from T (see [Array]).
func NewArray[T Numeric](data []T, shape ...int) (Array, error) {
	dt, ok := dtypeOfKind(reflect.TypeFor[T]().Kind())
	if !ok {
		return Array{}, arrayErr("marshal", ErrUnsupported, "array element type "+reflect.TypeFor[T]().String())
	}
	if !hostLittleEndian {
		return Array{}, arrayErr("marshal", ErrUnsupported, "arrays on a big-endian host")
	}
	if len(shape) == 0 {
		shape = []int{len(data)}
	} else {
		shape = append([]int(nil), shape...)
	}
	n, msg := elemCount(shape, dt.size, math.MaxInt32)
	if msg != "" {
		return Array{}, arrayErr("marshal", ErrTypeMismatch, msg)
	}
	if n != len(data) {
		return Array{}, arrayErr("marshal", ErrTypeMismatch, "shape "+fmtShape(shape)+" holds "+strconv.Itoa(n)+
			" elements, data has "+strconv.Itoa(len(data)))
	}
	var b []byte
	if len(data) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(data))), len(data)*dt.size)
	} else {
		b = []byte{}
	}
	return Array{DType: dt.name, Shape: shape, Data: b}, nil
}

// ArrayData returns a's elements as a []T in C order. T's dtype must be
// a's. The slice aliases a.Data when its memory is aligned for T (as the
// arrays Decode returns are) and is a copy otherwise.
func ArrayData[T Numeric](a Array) ([]T, error) {
	dt, n, err := a.check("unmarshal", ErrMalformed)
	if err != nil {
		return nil, err
	}
	if want := reflect.TypeFor[T]().Kind(); dt.kind != want {
		return nil, arrayErr("unmarshal", ErrTypeMismatch, "array of "+a.DType+" as []"+reflect.TypeFor[T]().String())
	}
	if !hostLittleEndian {
		return nil, arrayErr("unmarshal", ErrUnsupported, "arrays on a big-endian host")
	}
	if dt.kind == reflect.Bool {
		if err := checkBools(a.Data); err != nil {
			return nil, err
		}
	}
	if n == 0 {
		return []T{}, nil
	}
	p := unsafe.Pointer(unsafe.SliceData(a.Data))
	if uintptr(p)%uintptr(dt.size) == 0 {
		return unsafe.Slice((*T)(p), n), nil
	}
	out := make([]T, n)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(out))), len(a.Data)), a.Data)
	return out, nil
}

func checkBools(b []byte) error {
	for i, c := range b {
		if c > 1 {
			return arrayErr("unmarshal", ErrMalformed, "bool array element "+strconv.Itoa(i)+" is "+strconv.Itoa(int(c)))
		}
	}
	return nil
}

var arrayType = reflect.TypeFor[Array]()

// array encodes a as its marker tuple.
func (e *encoder) array(a Array) error {
	if _, _, err := a.check("marshal", ErrMalformed); err != nil {
		return err
	}
	e.marker("array", 5)
	e.buf = append(e.buf, typeShortASCII, byte(len(a.DType)))
	e.buf = append(e.buf, a.DType...)
	_ = e.seqHeader(true, len(a.Shape)) // at most MaxArrayDims
	for _, d := range a.Shape {
		e.int(int64(d))
	}
	return e.oobOrInline(a.Data) // out of band when large (AppendMarshalOOB)
}

// marker converts a decoded tuple that starts with MarkerTag. Kinds other
// than "array" are left as the tuple.
func (d *decoder) marker(off int, t []any) (any, error) {
	if d.oobOn && len(t) >= 2 && t[1] == "buf" {
		if len(t) != 3 {
			return nil, d.errAt(off, ErrMalformed, "buffer marker of "+strconv.Itoa(len(t))+" fields, want 3")
		}
		return d.oobBuffer(off, t[2])
	}
	if len(t) < 2 || t[1] != "array" {
		return t, nil
	}
	bad := func(detail string) error { return d.errAt(off, ErrMalformed, "array marker: "+detail) }
	if len(t) != 5 {
		return nil, bad(strconv.Itoa(len(t)) + " fields, want 5")
	}
	dtype, ok := t[2].(string)
	if !ok {
		return nil, bad("dtype is " + pyTypeName(t[2]) + ", want str")
	}
	dims, ok := t[3].([]any)
	if tt, isTuple := t[3].(Tuple); isTuple { // decoded keeping tuples (AppendInline)
		dims, ok = tt, true
	}
	if !ok {
		return nil, bad("shape is " + pyTypeName(t[3]) + ", want a tuple of ints")
	}
	if len(dims) > MaxArrayDims {
		return nil, bad(strconv.Itoa(len(dims)) + " dimensions (at most " + strconv.Itoa(MaxArrayDims) + ")")
	}
	if err := d.charge(off, costSlice+8*int64(len(dims))); err != nil {
		return nil, err
	}
	shape := make([]int, len(dims))
	for i, x := range dims {
		n, ok := x.(int64)
		if !ok {
			return nil, bad("shape item " + strconv.Itoa(i) + " is " + pyTypeName(x) + ", want int")
		}
		if n < 0 || n > math.MaxInt32 {
			return nil, bad("dimension " + strconv.FormatInt(n, 10) + " out of range")
		}
		shape[i] = int(n)
	}
	var data []byte
	switch x := t[4].(type) {
	case []byte:
		data = x
	case int64:
		if !d.oobOn {
			return nil, bad("out-of-band data (buffer " + strconv.FormatInt(x, 10) + ") where no buffers are given")
		}
		b, err := d.oobBuffer(off, x)
		if err != nil {
			return nil, err
		}
		data = b
	default:
		return nil, bad("data is " + pyTypeName(t[4]) + ", want bytes")
	}
	a := Array{DType: dtype, Shape: shape, Data: data}
	dt, _, err := a.check("unmarshal", ErrMalformed)
	if err != nil {
		return nil, d.errAt(off, ErrMalformed, err.(*Error).Detail)
	}
	if dt.kind == reflect.Bool {
		if err := checkBools(data); err != nil {
			return nil, d.errAt(off, ErrMalformed, err.(*Error).Detail)
		}
	}
	return a, nil
}

// oobBuffer returns the out-of-band buffer index i names (see DecodeOOB):
// the buffer itself, its capacity cut to its length, so that appending to
// it never writes past it.
func (d *decoder) oobBuffer(off int, i any) ([]byte, error) {
	n, ok := i.(int64)
	if !ok {
		return nil, d.errAt(off, ErrMalformed, "out-of-band reference is "+pyTypeName(i)+", want int")
	}
	if n < 0 || n >= int64(len(d.oob)) {
		return nil, d.errAt(off, ErrMalformed, "out-of-band reference "+strconv.FormatInt(n, 10)+
			" outside the "+strconv.Itoa(len(d.oob))+" buffers given")
	}
	if err := d.charge(off, costSlice); err != nil {
		return nil, err
	}
	b := d.oob[n]
	return b[:len(b):len(b)], nil
}

// assignArray stores an Array into dst: an Array, an interface (done by
// assign), or nested slices / Go arrays with one level per dimension whose
// innermost element is a number or bool (converted with range checks when
// it is not the dtype's own type) or any (Python-like values: float64,
// int64, bool).
func (a *assigner) assignArray(dst reflect.Value, arr Array, mismatch func() error) error {
	if dst.Type() == arrayType {
		dst.Set(reflect.ValueOf(arr))
		return nil
	}
	dt, _, err := arr.check("unmarshal", ErrMalformed)
	if err != nil {
		return err
	}
	// The destination must nest exactly len(Shape) levels.
	t := dst.Type()
	for range arr.Shape {
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return arrayErr("unmarshal", ErrTypeMismatch, "array "+arr.DType+" of shape "+fmtShape(arr.Shape)+
				" into Go "+dst.Type().String()+" (one slice level per dimension)")
		}
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
	case reflect.Interface:
		if t.NumMethod() != 0 {
			return mismatch()
		}
	default:
		return arrayErr("unmarshal", ErrTypeMismatch, "array "+arr.DType+" of shape "+fmtShape(arr.Shape)+
			" into Go "+dst.Type().String()+" (one slice level per dimension)")
	}
	return a.fillArray(dst, arr, dt, 0, 0)
}

// fillArray fills dst with dimension dim of arr starting at element off.
func (a *assigner) fillArray(dst reflect.Value, arr Array, dt dtypeInfo, dim, off int) error {
	if dim == len(arr.Shape) {
		return setArrayElem(dst, dt, arr.Data[off*dt.size:(off+1)*dt.size])
	}
	n := arr.Shape[dim]
	stride := 1
	for _, d := range arr.Shape[dim+1:] {
		stride *= d
	}
	switch dst.Kind() {
	case reflect.Slice:
		if err := a.charge(24 + int64(n)*int64(dst.Type().Elem().Size())); err != nil {
			return err
		}
		dst.Set(reflect.MakeSlice(dst.Type(), n, n))
	case reflect.Array:
		if dst.Len() != n {
			return arrayErr("unmarshal", ErrTypeMismatch, "array dimension of "+strconv.Itoa(n)+" into Go "+dst.Type().String())
		}
	}
	et := dst.Type().Elem()
	if dim == len(arr.Shape)-2 && dst.Kind() == reflect.Slice && et.Kind() == reflect.Slice && n > 0 &&
		et.Elem().Kind() == dt.kind && et.Elem().Size() == uintptr(dt.size) && hostLittleEndian {
		// Rows of the dtype's own type ([][]float64 for "<f8"): one
		// backing array for all of them, each row capped to its length.
		cols := arr.Shape[dim+1]
		if err := a.charge(int64(n) * int64(cols) * int64(dt.size)); err != nil {
			return err
		}
		backing := reflect.MakeSlice(reflect.SliceOf(et.Elem()), n*cols, n*cols)
		base := backing.UnsafePointer()
		if cols > 0 {
			copy(unsafe.Slice((*byte)(base), n*cols*dt.size), arr.Data[off*dt.size:(off+n*cols)*dt.size])
		}
		rows := unsafe.Slice((*sliceHeader)(dst.UnsafePointer()), n)
		for i := range rows {
			rows[i] = sliceHeader{data: unsafe.Add(base, i*cols*dt.size), len: cols, cap: cols}
		}
		return nil
	}
	if dim == len(arr.Shape)-1 && et.Kind() == dt.kind && et.Size() == uintptr(dt.size) && n > 0 && hostLittleEndian {
		// The element type is the dtype's own: one copy of the bytes.
		p := dst.Index(0).Addr().UnsafePointer()
		copy(unsafe.Slice((*byte)(p), n*dt.size), arr.Data[off*dt.size:(off+n)*dt.size])
		return nil
	}
	for i := 0; i < n; i++ {
		if err := a.fillArray(dst.Index(i), arr, dt, dim+1, off+i*stride); err != nil {
			return prependPath(err, indexElem(i))
		}
	}
	return nil
}

// sliceHeader is the layout of a Go slice, for filling rows without a
// reflect.Value per row.
type sliceHeader struct {
	data     unsafe.Pointer
	len, cap int
}

// setArrayElem stores one little-endian element b of type dt in dst.
func setArrayElem(dst reflect.Value, dt dtypeInfo, b []byte) error {
	var (
		i     int64
		u     uint64
		f     float64
		isU   bool
		isF   bool
		isB   bool
		boolV bool
	)
	switch dt.kind {
	case reflect.Float64:
		f, isF = math.Float64frombits(binary.LittleEndian.Uint64(b)), true
	case reflect.Float32:
		f, isF = float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), true
	case reflect.Int8:
		i = int64(int8(b[0]))
	case reflect.Int16:
		i = int64(int16(binary.LittleEndian.Uint16(b)))
	case reflect.Int32:
		i = int64(int32(binary.LittleEndian.Uint32(b)))
	case reflect.Int64:
		i = int64(binary.LittleEndian.Uint64(b))
	case reflect.Uint8:
		u, isU = uint64(b[0]), true
	case reflect.Uint16:
		u, isU = uint64(binary.LittleEndian.Uint16(b)), true
	case reflect.Uint32:
		u, isU = uint64(binary.LittleEndian.Uint32(b)), true
	case reflect.Uint64:
		u, isU = binary.LittleEndian.Uint64(b), true
	case reflect.Bool:
		boolV, isB = b[0] != 0, true
	}
	rangeErr := func(s string) error {
		return arrayErr("unmarshal", ErrIntRange, s+" does not fit "+dst.Type().String())
	}
	mismatch := func() error {
		return arrayErr("unmarshal", ErrTypeMismatch, "cannot store array element of "+dt.name+" in Go "+dst.Type().String())
	}
	switch dst.Kind() {
	case reflect.Interface:
		switch {
		case isB:
			dst.Set(reflect.ValueOf(boolV))
		case isF:
			dst.Set(reflect.ValueOf(f))
		case isU && u > math.MaxInt64:
			return rangeErr(strconv.FormatUint(u, 10))
		case isU:
			dst.Set(reflect.ValueOf(int64(u)))
		default:
			dst.Set(reflect.ValueOf(i))
		}
	case reflect.Bool:
		if !isB {
			return mismatch()
		}
		dst.SetBool(boolV)
	case reflect.Float32, reflect.Float64:
		switch {
		case isB:
			return mismatch()
		case isF:
			if dst.Kind() == reflect.Float32 && !math.IsInf(f, 0) && !math.IsNaN(f) && math.Abs(f) > math.MaxFloat32 {
				return rangeErr(strconv.FormatFloat(f, 'g', -1, 64))
			}
			dst.SetFloat(f)
		case isU:
			dst.SetFloat(float64(u))
		default:
			dst.SetFloat(float64(i))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		switch {
		case isB || isF:
			return mismatch()
		case isU:
			if u > math.MaxInt64 || dst.OverflowInt(int64(u)) {
				return rangeErr(strconv.FormatUint(u, 10))
			}
			dst.SetInt(int64(u))
		default:
			if dst.OverflowInt(i) {
				return rangeErr(strconv.FormatInt(i, 10))
			}
			dst.SetInt(i)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		switch {
		case isB || isF:
			return mismatch()
		case isU:
			if dst.OverflowUint(u) {
				return rangeErr(strconv.FormatUint(u, 10))
			}
			dst.SetUint(u)
		default:
			if i < 0 || dst.OverflowUint(uint64(i)) {
				return rangeErr(strconv.FormatInt(i, 10))
			}
			dst.SetUint(uint64(i))
		}
	default:
		return mismatch()
	}
	return nil
}
