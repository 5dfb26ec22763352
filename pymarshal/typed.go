package pymarshal

import (
	"encoding"
	"encoding/binary"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"
)

// Typed decoding is [Unmarshal]'s fast path: it reads the marshal bytes
// straight into the destination, following a plan made once per Go type
// (which function fills a value of that type; for a struct, its dict keys
// and their fields), without building the interface values of [Decode]
// first. Strings slice one copy of the input (see sharedStringMax).
//
// It takes the common conversions only. Anything else — a conversion it
// does not make itself, a back-reference to a container, malformed input —
// is either decoded by the general path for that one value (decode, then
// assign) or, for errors and references it cannot resolve, stops typed
// decoding altogether: Unmarshal then starts over on the general path,
// whose result and error are authoritative. So typed decoding never
// accepts what the general path refuses, and reports no errors of its own.

// typedDecoder is the state of one typed decoding.
type typedDecoder struct {
	d decoder
	a assigner // for values decoded by the general path

	// intern holds short strings decoded before, by a hash of their
	// bytes: the keys and values that recur from call to call are then
	// not allocated again. It lives as long as the pooled decoder.
	intern [internSlots]string

	// The destination type of the previous decoding and its plan.
	lastType reflect.Type
	lastDec  decFunc

	// alias: []byte values may share the input's memory (UnmarshalNoCopy).
	alias bool
}

// Strings of up to internMax bytes are interned in internSlots slots.
const (
	internMax   = 32
	internSlots = 256
)

// strAt returns data[from:to] as a string: interned when short, else
// sliced from the shared copy of the input (or copied alone).
func (u *typedDecoder) strAt(from, to int) string {
	if to-from > internMax {
		return u.d.str(from, to)
	}
	b := u.d.data[from:to]
	var h uint32
	if n := len(b); n > 0 {
		// Length and three bytes: a miss costs an allocation only.
		h = (uint32(n)*31+uint32(b[0]))*31 + uint32(b[n/2])*7 + uint32(b[n-1])*131
	}
	slot := &u.intern[h%internSlots]
	if *slot == string(b) {
		return *slot
	}
	s := string(b)
	*slot = s
	return s
}

// decFunc fills v, which is settable, from the value at the decoder's
// position.
type decFunc func(u *typedDecoder, v reflect.Value) error

var typedDecoders = sync.Pool{New: func() any { return new(typedDecoder) }}

// unmarshalTyped decodes data into dst. Any error means "use the general
// path"; dst may then have been partially filled.
func unmarshalTyped(data []byte, dst reflect.Value, alias bool, oob oobSet) error {
	if len(data) > math.MaxUint32 {
		return errNeedGeneral // beyond what a lazy reference slot records
	}
	u := typedDecoders.Get().(*typedDecoder)
	budget := DecodeBudget(len(data))
	// Field by field: a whole-struct assignment into the pooled decoder
	// costs a typedmemmove call per decoding.
	d := &u.d
	d.data, d.shared, d.text, d.pos, d.depth = data, len(data) <= sharedStringMax, "", 0, 0
	d.refs, d.budget, d.limit = d.refs[:0], budget, budget
	d.oobOn, d.oob, d.tuples = oob.on, oob.bufs, false
	u.a.budget, u.a.limit, u.a.oob = budget, budget, oob.bufs
	u.alias = alias
	if t := dst.Type(); t != u.lastType {
		u.lastType, u.lastDec = t, decoderFor(t)
	}
	err := u.lastDec(u, dst)
	if err == nil && u.d.pos != len(data) {
		err = errNeedGeneral
	}
	// Keep the reference table's storage for the next decoding, but
	// nothing it pointed to.
	if cap(u.d.refs) > 4096 {
		u.d.refs = nil
	} else {
		clear(u.d.refs)
	}
	u.d.data, u.d.text, u.d.oob, u.a.oob = nil, "", nil, nil
	typedDecoders.Put(u)
	return err
}

var decFuncs sync.Map // reflect.Type -> decFunc

// decoderFor returns the plan for t, making it on first use. A recursive
// type reaches itself through a stand-in that waits for the plan.
func decoderFor(t reflect.Type) decFunc {
	if f, ok := decFuncs.Load(t); ok {
		return f.(decFunc)
	}
	var (
		wg sync.WaitGroup
		f  decFunc
	)
	wg.Add(1)
	fi, loaded := decFuncs.LoadOrStore(t, decFunc(func(u *typedDecoder, v reflect.Value) error {
		wg.Wait()
		return f(u, v)
	}))
	if loaded {
		return fi.(decFunc)
	}
	f = newDecFunc(t)
	wg.Done()
	decFuncs.Store(t, f)
	return f
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

// kindFunc decodes the value whose type code (flag removed) is code and
// which starts at off; the decoder's position is still at off. None and
// back-references are handled before it is called.
type kindFunc func(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error

func newDecFunc(t reflect.Type) decFunc {
	if reflect.PointerTo(t).Implements(textUnmarshalerType) && t.Kind() != reflect.Pointer {
		return general
	}
	if t == arrayType {
		return general // from a marker tuple (see decoder.value)
	}
	var k kindFunc
	nullable := false
	switch t.Kind() {
	case reflect.Bool:
		k = decBool
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		k = decInt
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		k = decUint
	case reflect.Float32, reflect.Float64:
		k = decFloat
	case reflect.String:
		k = decString
	case reflect.Slice:
		nullable = true
		k = sliceDecoder(t)
	case reflect.Map:
		nullable = true
		if t.Key().Kind() != reflect.String {
			return general
		}
		k = mapDecoder(t)
	case reflect.Struct:
		k = structDecoder(t)
	case reflect.Pointer:
		nullable = true
		k = pointerDecoder(t)
	case reflect.Interface:
		if t.NumMethod() != 0 {
			return general
		}
		nullable = true
		k = decInterface
	default:
		return general
	}
	return func(u *typedDecoder, v reflect.Value) error {
		off := u.d.pos
		if off >= len(u.d.data) {
			return errNeedGeneral
		}
		c := u.d.data[off]
		code, flag := c&^flagRef, c&flagRef != 0
		switch code {
		case typeRef:
			return general(u, v)
		case typeNone:
			if flag {
				if err := u.d.charge(off, costRef); err != nil {
					return err
				}
				u.d.addRef(refSlot{})
			}
			u.d.pos++
			if nullable {
				v.SetZero()
			}
			return nil
		}
		return k(u, v, off, code, flag)
	}
}

// general decodes one value by the general path: into interface values,
// then assigned to v.
func general(u *typedDecoder, v reflect.Value) error {
	x, err := u.d.value()
	if err != nil {
		return err
	}
	return u.a.assign(v, x)
}

// scalarRef registers the reference slot of a flagged number or string.
func (u *typedDecoder) scalarRef(off int, flag bool) error {
	if !flag {
		return nil
	}
	return u.addScalarRef(off)
}

func (u *typedDecoder) addScalarRef(off int) error {
	if err := u.d.charge(off, costRef); err != nil {
		return err
	}
	u.d.addRef(refSlot{lazy: lazyScalar, off: uint32(off)})
	return nil
}

// containerRef registers the reference slot of a flagged container, marked
// as being built; done clears that mark. It returns the slot, or -1.
func (u *typedDecoder) containerRef(off int, flag bool) (int, error) {
	if !flag {
		return -1, nil
	}
	if err := u.d.charge(off, costRef); err != nil {
		return -1, err
	}
	u.d.addRef(refSlot{lazy: lazyContainer, off: uint32(off), building: true})
	return len(u.d.refs) - 1, nil
}

func (u *typedDecoder) done(slot int) {
	if slot >= 0 {
		u.d.refs[slot].building = false
	}
}

// int32At reads a TYPE_INT's value at off (its code byte included).
func (u *typedDecoder) int32At(off int) (int64, bool) {
	if len(u.d.data)-off < 5 {
		return 0, false
	}
	b := u.d.data[off+1:]
	return int64(int32(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)), true
}

func decBool(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
	if code != typeTrue && code != typeFalse {
		return general(u, v)
	}
	if err := u.scalarRef(off, flag); err != nil {
		return err
	}
	u.d.pos++
	v.SetBool(code == typeTrue)
	return nil
}

func decInt(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
	if code != typeInt {
		return general(u, v)
	}
	n, ok := u.int32At(off)
	if !ok || v.OverflowInt(n) {
		return errNeedGeneral
	}
	if err := u.scalarRef(off, flag); err != nil {
		return err
	}
	u.d.pos += 5
	v.SetInt(n)
	return nil
}

func decUint(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
	if code != typeInt {
		return general(u, v)
	}
	n, ok := u.int32At(off)
	if !ok || n < 0 || v.OverflowUint(uint64(n)) {
		return errNeedGeneral
	}
	if err := u.scalarRef(off, flag); err != nil {
		return err
	}
	u.d.pos += 5
	v.SetUint(uint64(n))
	return nil
}

func decFloat(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
	var f float64
	switch code {
	case typeBinaryFloat:
		if len(u.d.data)-off < 9 {
			return errNeedGeneral
		}
		b := u.d.data[off+1:]
		f = math.Float64frombits(uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56)
		if v.Kind() == reflect.Float32 && !math.IsInf(f, 0) && !math.IsNaN(f) && math.Abs(f) > math.MaxFloat32 {
			return errNeedGeneral
		}
		u.d.pos += 9
	case typeInt:
		n, ok := u.int32At(off)
		if !ok {
			return errNeedGeneral
		}
		f = float64(n)
		u.d.pos += 5
	default:
		return general(u, v)
	}
	if err := u.scalarRef(off, flag); err != nil {
		return err
	}
	v.SetFloat(f)
	return nil
}

func decString(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
	s, ok, err := u.str(off, code, flag)
	if err != nil {
		return err
	}
	if !ok {
		return general(u, v)
	}
	v.SetString(s)
	return nil
}

// str reads a str value of type code at off, reporting false (and reading
// nothing) when code is not a str's.
func (u *typedDecoder) str(off int, code byte, flag bool) (string, bool, error) {
	start, end, ok, err := u.strSpan(off, code, flag)
	if !ok || err != nil {
		return "", ok, err
	}
	return u.strAt(start, end), true, nil
}

// strSpan reads a str value of type code at off like str, returning where
// its bytes are in the input.
func (u *typedDecoder) strSpan(off int, code byte, flag bool) (start, end int, ok bool, err error) {
	d := &u.d
	var n int
	switch code {
	case typeShortASCII, typeShortASCIIIntern:
		if len(d.data)-off < 2 {
			return 0, 0, false, errNeedGeneral
		}
		n, start = int(d.data[off+1]), off+2
	case typeUnicode, typeInterned, typeASCII, typeASCIIInterned:
		if len(d.data)-off < 5 {
			return 0, 0, false, errNeedGeneral
		}
		m, _ := u.int32At(off)
		n, start = int(m), off+5
		if m < 0 {
			return 0, 0, false, errNeedGeneral
		}
	default:
		return 0, 0, false, nil
	}
	if len(d.data)-start < n {
		return 0, 0, false, errNeedGeneral
	}
	b := d.data[start : start+n]
	if code == typeUnicode || code == typeInterned {
		if !utf8.Valid(b) {
			return 0, 0, false, errNeedGeneral
		}
	} else if !isASCII(b) {
		return 0, 0, false, errNeedGeneral
	}
	if err := d.charge(off, d.strCost(n)); err != nil {
		return 0, 0, false, err
	}
	if err := u.scalarRef(off, flag); err != nil {
		return 0, 0, false, err
	}
	d.pos = start + n
	return start, start + n, true, nil
}

// keyBytes reads a dict key that is a str written in place, returning its
// bytes; ok is false (nothing read) for a key of another form, such as a
// back-reference.
func (u *typedDecoder) keyBytes() (b []byte, ok bool, err error) {
	off := u.d.pos
	if off >= len(u.d.data) {
		return nil, false, errNeedGeneral
	}
	c := u.d.data[off]
	start, end, ok, err := u.strSpan(off, c&^flagRef, c&flagRef != 0)
	if !ok || err != nil {
		return nil, false, err
	}
	return u.d.data[start:end], true, nil
}

// key reads a dict key, which must be a str.
func (u *typedDecoder) key() (string, error) {
	off := u.d.pos
	if off >= len(u.d.data) {
		return "", errNeedGeneral
	}
	c := u.d.data[off]
	s, ok, err := u.str(off, c&^flagRef, c&flagRef != 0)
	if err != nil || ok {
		return s, err
	}
	x, err := u.d.value() // a back-reference, most often
	if err != nil {
		return "", err
	}
	s, ok = x.(string)
	if !ok {
		return "", errNeedGeneral
	}
	return s, nil
}

func decInterface(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
	x, err := u.d.value()
	if err != nil {
		return err
	}
	if x == nil {
		v.SetZero()
		return nil
	}
	v.Set(reflect.ValueOf(x))
	return nil
}

// seqLen reads the header of a list or tuple at off: its length and where
// its items start.
func (u *typedDecoder) seqLen(off int, code byte) (n, start int, ok bool) {
	d := &u.d
	switch code {
	case typeSmallTuple:
		if len(d.data)-off < 2 {
			return 0, 0, false
		}
		n, start = int(d.data[off+1]), off+2
	case typeTuple, typeList:
		m, ok := u.int32At(off)
		if !ok || m < 0 {
			return 0, 0, false
		}
		n, start = int(m), off+5
	default:
		return 0, 0, false
	}
	if n > len(d.data)-start { // each item takes a byte at least
		return 0, 0, false
	}
	return n, start, true
}

func sliceDecoder(t reflect.Type) kindFunc {
	et := t.Elem()
	elemSize := int64(et.Size())
	byteSlice := et.Kind() == reflect.Uint8
	direct := directFor(et)
	var elem decFunc // made on first use: t may be recursive
	var once sync.Once
	return func(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
		if byteSlice && code == typeString {
			m, ok := u.int32At(off)
			if !ok || m < 0 || int(m) > len(u.d.data)-off-5 {
				return errNeedGeneral
			}
			n := int(m)
			if err := u.d.charge(off, costSlice+int64(n)); err != nil {
				return err
			}
			if err := u.scalarRef(off, flag); err != nil {
				return err
			}
			var b []byte
			if u.alias && n >= aliasMin {
				b = u.d.data[off+5 : off+5+n : off+5+n]
			} else {
				b = make([]byte, n)
				copy(b, u.d.data[off+5:])
			}
			u.d.pos = off + 5 + n
			v.SetBytes(b)
			return nil
		}
		n, start, ok := u.seqLen(off, code)
		if !ok {
			if code == typeTuple || code == typeSmallTuple || code == typeList {
				return errNeedGeneral
			}
			return general(u, v)
		}
		if code != typeList && n > 0 && maybeStr(u.d.data[start]) {
			if u.d.oobOn {
				// Perhaps a marker naming an out-of-band buffer, which
				// the general path resolves (and assign takes uncopied).
				return general(u, v)
			}
			return errNeedGeneral // perhaps a marker (an Array): see decoder.value
		}
		once.Do(func() { elem = decoderFor(et) })
		slot, err := u.containerRef(off, flag)
		if err != nil {
			return err
		}
		if err := u.d.enter(off); err != nil {
			return err
		}
		if err := u.d.charge(off, 24+int64(n)*elemSize); err != nil {
			return err
		}
		u.d.pos = start
		// A new array, filled in place (Grow on a nil slice allocates the
		// array alone, where MakeSlice would box a slice header as well).
		switch {
		case n == 0:
			v.Set(reflect.MakeSlice(t, 0, 0)) // empty, not nil, as the general path
		case direct != directNone && v.CanAddr():
			// The common element types: a new array set in place
			// (same layout, whatever the names of the types).
			// UnsafeAddr, not Addr: Addr looks the pointer type up.
			p := unsafe.Pointer(v.UnsafeAddr())
			switch direct {
			case directString:
				*(*[]string)(p) = make([]string, n)
			case directInt:
				*(*[]int64)(p) = make([]int64, n)
			case directFloat64:
				*(*[]float64)(p) = make([]float64, n)
			case directBool:
				*(*[]bool)(p) = make([]bool, n)
			}
		default:
			v.SetZero()
			v.Grow(n)
			v.SetLen(n)
		}
		var base unsafe.Pointer
		if direct != directNone && n > 0 {
			base = v.UnsafePointer()
		}
		for i := range n {
			if base != nil {
				ok, err := u.setDirect(direct, unsafe.Add(base, uintptr(i)*uintptr(elemSize)))
				if err != nil {
					return err
				}
				if ok {
					continue
				}
			}
			if err := elem(u, v.Index(i)); err != nil {
				return err
			}
		}
		u.d.depth--
		u.done(slot)
		return nil
	}
}

var mapAnyType = reflect.TypeFor[map[string]any]()

func mapDecoder(t reflect.Type) kindFunc {
	kt, et := t.Key(), t.Elem()
	entry := int64(kt.Size()+et.Size()) + 8
	var elem decFunc
	var once sync.Once
	return func(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
		if code != typeDict {
			return general(u, v)
		}
		if t == mapAnyType && v.IsNil() {
			// What the general path builds is the value itself.
			x, err := u.d.value()
			if err != nil {
				return err
			}
			v.Set(reflect.ValueOf(x))
			return nil
		}
		once.Do(func() { elem = decoderFor(et) })
		slot, err := u.containerRef(off, flag)
		if err != nil {
			return err
		}
		if err := u.d.enter(off); err != nil {
			return err
		}
		if err := u.d.charge(off, costMap); err != nil {
			return err
		}
		u.d.pos = off + 1
		if v.IsNil() {
			v.Set(reflect.MakeMap(t))
		}
		kv, ev := reflect.New(kt).Elem(), reflect.New(et).Elem()
		for {
			if u.d.pos >= len(u.d.data) {
				return errNeedGeneral
			}
			if u.d.data[u.d.pos] == typeNull {
				u.d.pos++
				break
			}
			if err := u.d.charge(u.d.pos, entry); err != nil {
				return err
			}
			k, err := u.key()
			if err != nil {
				return err
			}
			ev.SetZero()
			if err := elem(u, ev); err != nil {
				return err
			}
			kv.SetString(k)
			v.SetMapIndex(kv, ev)
		}
		u.d.depth--
		u.done(slot)
		return nil
	}
}

// structPlan is how a struct type is filled from a dict.
type structPlan struct {
	fields []planField
	byName map[string]int // exact names; then fields are matched ignoring case

	// order[j] is 1 + the field that the key at position j of the latest
	// dict decoded with this plan matched (0: none yet). Dicts of one
	// type usually come with their keys in one order, call after call,
	// so the field is found with one comparison. Only a guess, checked
	// every time: plans are shared by concurrent decodings.
	order [orderMax]atomic.Int32
}

// orderMax is how many key positions a plan remembers.
const orderMax = 16

type planField struct {
	name string
	// short is the name as a short ASCII str's length byte and text
	// (what follows the type code), nil when the name is not one.
	short []byte
	index []int
	dec   decFunc
	// A field of the struct itself (not promoted) of one of the common
	// scalar kinds is written in place, at offset, when the value is of
	// the expected type; dec takes it otherwise.
	direct directKind
	offset uintptr
	// A field of the struct itself that is a slice of one of those kinds
	// (elemSize bytes each) is filled in place from a list whose items
	// are all of the expected type; dec takes other values.
	list     directKind
	elemSize uintptr
	elemDec  decFunc // for items of another type
}

type directKind uint8

const (
	directNone directKind = iota
	directString
	directInt // int and int64
	directFloat64
	directBool
)

// directFor returns how values of type t are written in place, if they are.
func directFor(t reflect.Type) directKind {
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return directNone
	}
	switch t.Kind() {
	case reflect.String:
		return directString
	case reflect.Int, reflect.Int64:
		if t.Size() == 8 {
			return directInt
		}
	case reflect.Float64:
		return directFloat64
	case reflect.Bool:
		return directBool
	}
	return directNone
}

// setDirect writes the value at the decoder's position to the field of kind
// k at p when it is of the type the field expects, reporting whether it did.
func (u *typedDecoder) setDirect(k directKind, p unsafe.Pointer) (bool, error) {
	off := u.d.pos
	if off >= len(u.d.data) {
		return false, errNeedGeneral
	}
	c := u.d.data[off]
	code, flag := c&^flagRef, c&flagRef != 0
	size := 5 // of the value read: code byte and payload
	switch k {
	case directString:
		if code == typeShortASCII || code == typeShortASCIIIntern {
			// The common case of str, with its checks, charge and slot.
			if len(u.d.data)-off >= 2 {
				start := off + 2
				end := start + int(u.d.data[off+1])
				if end <= len(u.d.data) && isASCII(u.d.data[start:end]) {
					cost := u.d.strCost(end - start)
					if flag {
						cost += costRef
					}
					if cost <= u.d.budget {
						u.d.budget -= cost
						if flag {
							u.d.addRef(refSlot{lazy: lazyScalar, off: uint32(off)})
						}
						u.d.pos = end
						*(*string)(p) = u.strAt(start, end)
						return true, nil
					}
				}
			}
		}
		s, ok, err := u.str(off, code, flag)
		if ok {
			*(*string)(p) = s
		}
		return ok, err
	case directInt:
		if code != typeInt {
			return false, nil
		}
		n, ok := u.int32At(off)
		if !ok {
			return false, errNeedGeneral
		}
		*(*int64)(p) = n
	case directFloat64:
		switch code {
		case typeBinaryFloat:
			if len(u.d.data)-off < 9 {
				return false, errNeedGeneral
			}
			*(*float64)(p) = math.Float64frombits(binary.LittleEndian.Uint64(u.d.data[off+1:]))
			size = 9
		case typeInt:
			n, ok := u.int32At(off)
			if !ok {
				return false, errNeedGeneral
			}
			*(*float64)(p) = float64(n)
		default:
			return false, nil
		}
	case directBool:
		if code != typeTrue && code != typeFalse {
			return false, nil
		}
		*(*bool)(p) = code == typeTrue
		size = 1
	default:
		return false, nil
	}
	u.d.pos += size
	return true, u.scalarRef(off, flag)
}

// guess reads the key at the decoder's position, the j-th of its dict,
// when it is the name of the field the j-th key matched last time written
// as a short ASCII str (as CPython writes short keys), returning that
// field; otherwise it returns -1 and reads nothing. The comparison of
// the length byte and text covers what strSpan checks of such a key.
func (p *structPlan) guess(u *typedDecoder, j int) int {
	if j >= orderMax {
		return -1
	}
	g := int(p.order[j].Load()) - 1
	if g < 0 {
		return -1
	}
	k := p.fields[g].short
	d := &u.d
	off := d.pos
	if k == nil || len(d.data)-off-1 < len(k) {
		return -1
	}
	c := d.data[off]
	if code := c &^ flagRef; code != typeShortASCII && code != typeShortASCIIIntern || string(d.data[off+1:off+1+len(k)]) != string(k) {
		return -1
	}
	if d.charge(off, d.strCost(len(k)-1)) != nil || u.scalarRef(off, c&flagRef != 0) != nil {
		return -1 // keyBytes reports it
	}
	d.pos = off + 1 + len(k)
	return g
}

// listDirect stores a new slice in field f of struct v, whose slice header
// is at p, when the value at the decoder's position is a non-empty list,
// as sliceDecoder would, reporting whether it did; for anything else it
// reads nothing. Items not of the element's type go to f.elemDec.
func (u *typedDecoder) listDirect(v reflect.Value, f *planField, p unsafe.Pointer) (bool, error) {
	k, size := f.list, f.elemSize
	off := u.d.pos
	if off >= len(u.d.data) {
		return false, nil
	}
	c := u.d.data[off]
	if c&^flagRef != typeList {
		return false, nil
	}
	n, start, ok := u.seqLen(off, typeList)
	if !ok || n == 0 {
		return false, nil
	}
	slot, err := u.containerRef(off, c&flagRef != 0)
	if err != nil {
		return false, err
	}
	if err := u.d.enter(off); err != nil {
		return false, err
	}
	if err := u.d.charge(off, 24+int64(n)*int64(size)); err != nil {
		return false, err
	}
	u.d.pos = start
	var base unsafe.Pointer
	switch k {
	case directString:
		s := make([]string, n)
		*(*[]string)(p), base = s, unsafe.Pointer(unsafe.SliceData(s))
	case directInt:
		s := make([]int64, n)
		*(*[]int64)(p), base = s, unsafe.Pointer(unsafe.SliceData(s))
	case directFloat64:
		s := make([]float64, n)
		*(*[]float64)(p), base = s, unsafe.Pointer(unsafe.SliceData(s))
	case directBool:
		s := make([]bool, n)
		*(*[]bool)(p), base = s, unsafe.Pointer(unsafe.SliceData(s))
	default:
		return false, errNeedGeneral // not planned
	}
	for i := range n {
		ok, err := u.setDirect(k, unsafe.Add(base, uintptr(i)*size))
		if err != nil {
			return false, err
		}
		if !ok {
			if err := f.elemDec(u, fieldFor(v, f.index).Index(i)); err != nil {
				return false, err
			}
		}
	}
	u.d.depth--
	u.done(slot)
	return true, nil
}

// lookupAt is lookupBytes for the key at position j of the dict: the field
// that key matched the last time is tried first.
func (p *structPlan) lookupAt(j int, k []byte) int {
	if j >= orderMax {
		return p.lookupBytes(k)
	}
	if g := int(p.order[j].Load()) - 1; g >= 0 && p.fields[g].name == string(k) {
		return g
	}
	i := p.lookupBytes(k)
	if i >= 0 && p.order[j].Load() != int32(i+1) { // a key matched ignoring case: no store each time
		p.order[j].Store(int32(i + 1))
	}
	return i
}

// lookupBytes is lookup for a key still in the input.
func (p *structPlan) lookupBytes(k []byte) int {
	for i := range p.fields {
		if p.fields[i].name == string(k) {
			return i
		}
	}
	return p.lookup(string(k)) // a case-insensitive match, or none
}

// lookup returns the index of the field for dict key k, or -1.
func (p *structPlan) lookup(k string) int {
	if len(p.fields) <= 8 {
		for i := range p.fields {
			if p.fields[i].name == k {
				return i
			}
		}
	} else if i, ok := p.byName[k]; ok {
		return i
	}
	for i := range p.fields {
		if strings.EqualFold(p.fields[i].name, k) {
			return i
		}
	}
	return -1
}

func structDecoder(t reflect.Type) kindFunc {
	var plan *structPlan
	var once sync.Once
	makePlan := func() {
		fs := cachedFields(t)
		p := &structPlan{fields: make([]planField, len(fs)), byName: make(map[string]int, len(fs))}
		for i, f := range fs {
			sf := t.FieldByIndex(f.index)
			p.fields[i] = planField{name: f.name, index: f.index, dec: decoderFor(sf.Type)}
			if len(f.key) > 0 && f.key[0] == typeShortASCII {
				p.fields[i].short = f.key[1:]
			}
			if len(f.index) == 1 {
				p.fields[i].direct, p.fields[i].offset = directFor(sf.Type), sf.Offset
				if t := sf.Type; t.Kind() == reflect.Slice && !reflect.PointerTo(t).Implements(textUnmarshalerType) {
					p.fields[i].list, p.fields[i].elemSize = directFor(t.Elem()), t.Elem().Size()
					if p.fields[i].list != directNone {
						p.fields[i].elemDec = decoderFor(t.Elem())
					}
				}
			}
			p.byName[f.name] = i
		}
		plan = p
	}
	return func(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
		if code != typeDict {
			return general(u, v)
		}
		once.Do(makePlan)
		if len(plan.fields) > 128 {
			return general(u, v)
		}
		var seen [2]uint64 // fields set so far: a key seen twice goes the general way
		var base unsafe.Pointer
		if v.CanAddr() {
			base = unsafe.Pointer(v.UnsafeAddr())
		}
		slot, err := u.containerRef(off, flag)
		if err != nil {
			return err
		}
		if err := u.d.enter(off); err != nil {
			return err
		}
		u.d.pos = off + 1
		for j := 0; ; j++ {
			if u.d.pos >= len(u.d.data) {
				return errNeedGeneral
			}
			if u.d.data[u.d.pos] == typeNull {
				u.d.pos++
				break
			}
			var i int
			if g := plan.guess(u, j); g >= 0 {
				i = g
			} else if kb, ok, err := u.keyBytes(); err != nil {
				return err
			} else if ok {
				i = plan.lookupAt(j, kb)
			} else {
				k, err := u.key()
				if err != nil {
					return err
				}
				i = plan.lookup(k)
			}
			var fv reflect.Value
			if i >= 0 {
				if seen[i/64]&(1<<(i%64)) != 0 {
					return errNeedGeneral
				}
				seen[i/64] |= 1 << (i % 64)
				if f := &plan.fields[i]; f.direct != directNone && base != nil {
					ok, err := u.setDirect(f.direct, unsafe.Add(base, f.offset))
					if err != nil {
						return err
					}
					if ok {
						continue
					}
				}
				if f := &plan.fields[i]; f.list != directNone && base != nil {
					ok, err := u.listDirect(v, f, unsafe.Add(base, f.offset))
					if err != nil {
						return err
					}
					if ok {
						continue
					}
				}
				fv = fieldFor(v, plan.fields[i].index)
			}
			if !fv.IsValid() || !fv.CanSet() {
				// Unknown keys are ignored, as encoding/json does; their
				// values are still checked.
				if _, err := u.d.value(); err != nil {
					return err
				}
				continue
			}
			if err := plan.fields[i].dec(u, fv); err != nil {
				return err
			}
		}
		u.d.depth--
		u.done(slot)
		return nil
	}
}

// fieldFor follows a field's index from struct v, allocating nil embedded
// pointers on the way; it returns the zero Value where one cannot be set.
func fieldFor(v reflect.Value, index []int) reflect.Value {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				if !v.CanSet() {
					return reflect.Value{}
				}
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v
}

func pointerDecoder(t reflect.Type) kindFunc {
	et := t.Elem()
	var elem decFunc
	var once sync.Once
	return func(u *typedDecoder, v reflect.Value, off int, code byte, flag bool) error {
		once.Do(func() { elem = decoderFor(et) })
		if v.IsNil() {
			if err := u.d.charge(off, int64(et.Size())); err != nil {
				return err
			}
			v.Set(reflect.New(et))
		}
		return elem(u, v.Elem())
	}
}

// maybeStr reports whether the item whose type byte is c may be a str (or
// a reference to one), as the first item of a marker tuple is.
func maybeStr(c byte) bool {
	switch c &^ flagRef {
	case typeShortASCII, typeShortASCIIIntern, typeASCII, typeASCIIInterned, typeUnicode, typeInterned, typeRef:
		return true
	}
	return false
}

// aliasMin is the size from which UnmarshalNoCopy shares a bytes value's
// memory rather than copying it (smaller ones are copied: sharing would
// keep the whole input alive for a few bytes).
const aliasMin = 4 << 10
