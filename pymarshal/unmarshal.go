package pymarshal

import (
	"encoding"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unsafe"
)

// Unmarshal decodes data (one marshal value) and stores it in the value
// pointed to by v, which must be a non-nil pointer. Into an interface it
// stores the shapes of [Decode]; into typed Go values it converts as the
// package documentation describes. None sets pointers, slices, maps and
// interfaces to nil and leaves other values unchanged. On error, v may have
// been partially filled.
func Unmarshal(data []byte, v any) error { return unmarshal(data, v, false, oobSet{}) }

// UnmarshalNoCopy is [Unmarshal] for input the caller hands over: []byte
// values of 4 KiB or more in v share data's memory instead of being copied
// (data must not be modified afterwards). The pool decodes results with it,
// as each result's buffer belongs to its call.
func UnmarshalNoCopy(data []byte, v any) error { return unmarshal(data, v, true, oobSet{}) }

// UnmarshalOOB is [Unmarshal] of data written with out-of-band buffers
// (see [AppendMarshalOOB] and [DecodeOOB]): a marker naming buffer i
// stores oob[i] itself into a []byte (or an interface), and an array
// marker with out-of-band data gets oob[i] as its Data. Those values alias
// oob's memory — no copy is made — so they are valid only while that
// memory is: a caller that keeps one beyond it must copy it
// (bytes.Clone). Everything else is decoded as by Unmarshal. A reference
// outside oob is an error wrapping [ErrMalformed].
func UnmarshalOOB(data []byte, v any, oob [][]byte) error {
	return unmarshal(data, v, false, oobSet{on: true, bufs: oob})
}

// oobSet is the out-of-band buffers of a decoding (on: markers resolve).
type oobSet struct {
	on   bool
	bufs [][]byte
}

// decode decodes data into interface values, resolving markers against
// the buffers when on.
func (oob oobSet) decode(data []byte) (any, error) {
	if oob.on {
		return DecodeOOB(data, oob.bufs)
	}
	return Decode(data)
}

func unmarshal(data []byte, v any, alias bool, oob oobSet) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return &Error{Op: "unmarshal", Offset: -1, Err: ErrTypeMismatch, Detail: "destination must be a non-nil pointer, got " + reflectTypeName(rv)}
	}
	if p, ok := v.(*any); ok {
		src, err := oob.decode(data)
		if err != nil {
			return err
		}
		*p = src
		return nil
	}
	if unmarshalTyped(data, rv.Elem(), alias, oob) == nil {
		return nil
	}
	// Typed decoding stopped (bad input, a conversion it does not take, a
	// reference to a shared container): the general path decides, and its
	// error is the one reported.
	return unmarshalGeneral(data, rv.Elem(), oob)
}

// unmarshalGeneral is Unmarshal by the general path: decode into interface
// values, then assign them to dst.
func unmarshalGeneral(data []byte, dst reflect.Value, oob oobSet) error {
	src, err := oob.decode(data)
	if err != nil {
		return err
	}
	// Storing into typed values copies what back-references share (a list
	// referenced a thousand times becomes a thousand slices): the copies
	// are bounded by the input's size too.
	a := assigner{budget: DecodeBudget(len(data)), oob: oob.bufs}
	a.limit = a.budget
	return a.assign(dst, src)
}

// assigner stores decoded values into typed Go values, charging what it
// allocates to a budget.
type assigner struct { // unmarshalTyped resets it field by field
	budget, limit int64
	// oob: the out-of-band buffers of the decoding (UnmarshalOOB), which
	// []byte destinations take without a copy.
	oob [][]byte
}

// isOOB reports whether s is one of a's out-of-band buffers (as decoding
// resolved it: the buffer's own memory and length).
func (a *assigner) isOOB(s []byte) bool {
	for _, b := range a.oob {
		if len(b) == len(s) && unsafe.SliceData(b) == unsafe.SliceData(s) {
			return true
		}
	}
	return false
}

// charge takes n bytes from the budget, or fails.
func (a *assigner) charge(n int64) error {
	if n > a.budget {
		a.budget = -1
		return &Error{Op: "unmarshal", Offset: -1, Err: ErrTooLarge,
			Detail: "storing the value needs more than " + strconv.FormatInt(a.limit, 10) + " bytes"}
	}
	a.budget -= n
	return nil
}

func reflectTypeName(rv reflect.Value) string {
	if !rv.IsValid() {
		return "nil"
	}
	return rv.Type().String()
}

// Assign stores a decoded value (one of the shapes [Decode] returns) in dst,
// converting as [Unmarshal] does. dst must be settable. Unlike Unmarshal, it
// does not bound what the copies into dst allocate.
func Assign(dst reflect.Value, src any) error {
	a := assigner{budget: math.MaxInt64, limit: math.MaxInt64}
	return a.assign(dst, src)
}

func (a *assigner) assign(dst reflect.Value, src any) error {
	mismatch := func() error {
		return &Error{Op: "unmarshal", Offset: -1, Err: ErrTypeMismatch,
			Detail: "cannot store Python " + pyTypeName(src) + " in Go " + dst.Type().String()}
	}
	if src == nil {
		switch dst.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
			dst.SetZero()
		}
		return nil
	}
	if dst.Kind() == reflect.Pointer {
		if dst.IsNil() {
			if err := a.charge(int64(dst.Type().Elem().Size())); err != nil {
				return err
			}
			dst.Set(reflect.New(dst.Type().Elem()))
		}
		return a.assign(dst.Elem(), src)
	}
	if dst.CanAddr() {
		if tu, ok := dst.Addr().Interface().(encoding.TextUnmarshaler); ok {
			if s, ok := src.(string); ok {
				if err := tu.UnmarshalText([]byte(s)); err != nil {
					return &Error{Op: "unmarshal", Offset: -1, Err: ErrTypeMismatch, Detail: err.Error()}
				}
				return nil
			}
		}
	}
	if dst.Kind() == reflect.Interface {
		if dst.NumMethod() != 0 {
			return mismatch()
		}
		dst.Set(reflect.ValueOf(src))
		return nil
	}

	switch s := src.(type) {
	case bool:
		if dst.Kind() != reflect.Bool {
			return mismatch()
		}
		dst.SetBool(s)
	case int64:
		switch dst.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			if dst.OverflowInt(s) {
				return &Error{Op: "unmarshal", Offset: -1, Err: ErrIntRange, Detail: strconv.FormatInt(s, 10) + " does not fit " + dst.Type().String()}
			}
			dst.SetInt(s)
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
			if s < 0 || dst.OverflowUint(uint64(s)) {
				return &Error{Op: "unmarshal", Offset: -1, Err: ErrIntRange, Detail: strconv.FormatInt(s, 10) + " does not fit " + dst.Type().String()}
			}
			dst.SetUint(uint64(s))
		case reflect.Float32, reflect.Float64:
			dst.SetFloat(float64(s))
		default:
			return mismatch()
		}
	case float64:
		switch dst.Kind() {
		case reflect.Float64:
			dst.SetFloat(s)
		case reflect.Float32:
			if !math.IsInf(s, 0) && !math.IsNaN(s) && math.Abs(s) > math.MaxFloat32 {
				return &Error{Op: "unmarshal", Offset: -1, Err: ErrIntRange, Detail: "float " + strconv.FormatFloat(s, 'g', -1, 64) + " overflows float32"}
			}
			dst.SetFloat(s)
		default:
			return mismatch()
		}
	case string:
		if dst.Kind() != reflect.String {
			return mismatch()
		}
		dst.SetString(s)
	case []byte:
		switch {
		case dst.Kind() == reflect.Slice && dst.Type().Elem().Kind() == reflect.Uint8:
			if len(s) > 0 && a.isOOB(s) {
				dst.SetBytes(s) // aliased, as UnmarshalOOB documents
				return nil
			}
			if err := a.charge(int64(len(s))); err != nil {
				return err
			}
			dst.SetBytes(append([]byte(nil), s...))
		case dst.Kind() == reflect.Array && dst.Type().Elem().Kind() == reflect.Uint8:
			if dst.Len() != len(s) {
				return &Error{Op: "unmarshal", Offset: -1, Err: ErrTypeMismatch, Detail: strconv.Itoa(len(s)) + " bytes into " + dst.Type().String()}
			}
			reflect.Copy(dst, reflect.ValueOf(s))
		default:
			return mismatch()
		}
	case []any:
		return a.assignSeq(dst, s, mismatch)
	case map[string]any:
		return a.assignMap(dst, s, mismatch)
	case Array:
		return a.assignArray(dst, s, mismatch)
	default:
		return mismatch()
	}
	return nil
}

func (a *assigner) assignSeq(dst reflect.Value, s []any, mismatch func() error) error {
	switch dst.Kind() {
	case reflect.Slice:
		if err := a.charge(24 + int64(len(s))*int64(dst.Type().Elem().Size())); err != nil {
			return err
		}
		out := reflect.MakeSlice(dst.Type(), len(s), len(s))
		for i, el := range s {
			if err := a.assign(out.Index(i), el); err != nil {
				return prependPath(err, indexElem(i))
			}
		}
		dst.Set(out)
	case reflect.Array:
		if dst.Len() != len(s) {
			return &Error{Op: "unmarshal", Offset: -1, Err: ErrTypeMismatch, Detail: strconv.Itoa(len(s)) + " items into " + dst.Type().String()}
		}
		for i, el := range s {
			if err := a.assign(dst.Index(i), el); err != nil {
				return prependPath(err, indexElem(i))
			}
		}
	default:
		return mismatch()
	}
	return nil
}

func (a *assigner) assignMap(dst reflect.Value, m map[string]any, mismatch func() error) error {
	switch dst.Kind() {
	case reflect.Map:
		kt := dst.Type().Key()
		textKey := reflect.PointerTo(kt).Implements(reflect.TypeFor[encoding.TextUnmarshaler]())
		if kt.Kind() != reflect.String && !textKey {
			return mismatch()
		}
		et := dst.Type().Elem()
		entry := int64(kt.Size()+et.Size()) + 8 // slot and control byte
		if err := a.charge(costMap + int64(len(m))*entry); err != nil {
			return err
		}
		if dst.IsNil() {
			dst.Set(reflect.MakeMapWithSize(dst.Type(), len(m)))
		}
		for k, v := range m {
			ev := reflect.New(et).Elem()
			if err := a.assign(ev, v); err != nil {
				return prependPath(err, keyElem(k))
			}
			kv := reflect.New(kt).Elem()
			if kt.Kind() == reflect.String {
				kv.SetString(k)
			} else if err := kv.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(k)); err != nil {
				return &Error{Op: "unmarshal", Path: keyElem(k), Offset: -1, Err: ErrTypeMismatch, Detail: err.Error()}
			}
			dst.SetMapIndex(kv, ev)
		}
	case reflect.Struct:
		fields := cachedFields(dst.Type())
		for k, v := range m {
			f := lookupField(fields, k)
			if f == nil {
				continue // unknown keys are ignored, as encoding/json does
			}
			fv := dst
			for i, x := range f.index {
				if i > 0 && fv.Kind() == reflect.Pointer {
					if fv.IsNil() {
						if !fv.CanSet() {
							break
						}
						fv.Set(reflect.New(fv.Type().Elem()))
					}
					fv = fv.Elem()
				}
				fv = fv.Field(x)
			}
			if !fv.CanSet() {
				continue
			}
			if err := a.assign(fv, v); err != nil {
				return prependPath(err, "."+f.name)
			}
		}
	default:
		return mismatch()
	}
	return nil
}

func lookupField(fields []field, key string) *field {
	for i := range fields {
		if fields[i].name == key {
			return &fields[i]
		}
	}
	for i := range fields {
		if strings.EqualFold(fields[i].name, key) {
			return &fields[i]
		}
	}
	return nil
}

// AppendInline appends to dst data, written with out-of-band buffers (see
// [AppendMarshalOOB]), encoded again with those buffers inline: for a
// receiver that takes marshal bytes alone. The value is decoded
// ([DecodeOOB]) and encoded again ([AppendMarshal]): tuples stay tuples,
// and dict keys come out sorted.
func AppendInline(dst, data []byte, oob [][]byte) ([]byte, error) {
	limit := DecodeBudget(len(data))
	v, err := decodeAll(decoder{data: data, budget: limit, limit: limit, shared: len(data) <= sharedStringMax,
		oobOn: true, oob: oob, tuples: true})
	if err != nil {
		return dst, err
	}
	out, err := AppendMarshal(dst, v)
	if err != nil {
		return dst, err
	}
	return out, nil
}
