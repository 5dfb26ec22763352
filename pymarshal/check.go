package pymarshal

import (
	"encoding/binary"
	"strconv"
)

// CheckDict reports whether data is exactly one marshalled dict (with str
// keys, as every dict in it), without
// decoding it: the structure is walked (lengths, nesting, back-reference
// numbers, nothing after the value) but nothing is allocated. It returns
// nil, or an *Error matching ErrMalformed, ErrTruncated or ErrUnsupported.
// A value CheckDict accepts may still be refused by Decode (a string that
// is not UTF-8, an int beyond int64, a recursive reference), never the
// other way round.
//
// Callers that splice caller-supplied keyword arguments into a larger
// message use it: marshal readers stop at the end of the first value, so
// bytes after it would be read as the message's next fields.
func CheckDict(data []byte) error {
	if len(data) == 0 || data[0]&^flagRef != typeDict {
		return &Error{Op: "check", Offset: 0, Err: ErrMalformed, Detail: "not a dict"}
	}
	s := spanner{data: data}
	if err := s.value(0); err != nil {
		return err
	}
	if s.pos != len(data) {
		return &Error{Op: "check", Offset: s.pos, Err: ErrMalformed, Detail: strconv.Itoa(len(data)-s.pos) + " trailing bytes"}
	}
	return nil
}

// spanner walks one marshalled value, counting FLAG_REF slots.
type spanner struct {
	data []byte
	pos  int
	refs int
}

func (s *spanner) fail(sentinel error, detail string) error {
	return &Error{Op: "check", Offset: s.pos, Err: sentinel, Detail: detail}
}

func (s *spanner) skip(n int64) error {
	if n < 0 || int64(len(s.data)-s.pos) < n {
		return s.fail(ErrTruncated, "")
	}
	s.pos += int(n)
	return nil
}

func (s *spanner) int32() (int64, error) {
	if len(s.data)-s.pos < 4 {
		return 0, s.fail(ErrTruncated, "")
	}
	v := int32(binary.LittleEndian.Uint32(s.data[s.pos:]))
	s.pos += 4
	return int64(v), nil
}

func (s *spanner) value(depth int) error {
	if depth > MaxDepth {
		return s.fail(ErrUnsupported, "nesting deeper than "+strconv.Itoa(MaxDepth))
	}
	if s.pos >= len(s.data) {
		return s.fail(ErrTruncated, "")
	}
	code := s.data[s.pos]
	s.pos++
	if code&flagRef != 0 {
		s.refs++
		code &^= flagRef
	}
	switch code {
	case typeNone, typeTrue, typeFalse:
		return nil
	case typeInt:
		return s.skip(4)
	case typeInt64, typeBinaryFloat:
		return s.skip(8)
	case typeLong:
		n, err := s.int32()
		if err != nil {
			return err
		}
		if n < 0 {
			n = -n
		}
		return s.skip(2 * n)
	case typeString, typeUnicode, typeInterned, typeASCII, typeASCIIInterned:
		n, err := s.int32()
		if err != nil {
			return err
		}
		if n < 0 {
			return s.fail(ErrMalformed, "negative length")
		}
		return s.skip(n)
	case typeShortASCII, typeShortASCIIIntern:
		if s.pos >= len(s.data) {
			return s.fail(ErrTruncated, "")
		}
		n := int64(s.data[s.pos])
		s.pos++
		return s.skip(n)
	case typeRef:
		n, err := s.int32()
		if err != nil {
			return err
		}
		if n < 0 || n >= int64(s.refs) {
			return s.fail(ErrMalformed, "reference to unknown object "+strconv.FormatInt(n, 10))
		}
		return nil
	case typeTuple, typeList, typeSmallTuple:
		var n int64
		if code == typeSmallTuple {
			if s.pos >= len(s.data) {
				return s.fail(ErrTruncated, "")
			}
			n = int64(s.data[s.pos])
			s.pos++
		} else {
			var err error
			if n, err = s.int32(); err != nil {
				return err
			}
			if n < 0 {
				return s.fail(ErrMalformed, "negative length")
			}
		}
		if n > int64(len(s.data)-s.pos) { // each item takes a byte at least
			return s.fail(ErrTruncated, "length "+strconv.FormatInt(n, 10)+" exceeds input")
		}
		for range n {
			if err := s.value(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case typeDict:
		for {
			if s.pos >= len(s.data) {
				return s.fail(ErrTruncated, "")
			}
			if s.data[s.pos] == typeNull {
				s.pos++
				return nil
			}
			switch s.data[s.pos] &^ flagRef { // keys are strings, as Decode requires
			case typeUnicode, typeInterned, typeASCII, typeASCIIInterned, typeShortASCII, typeShortASCIIIntern, typeRef:
			default:
				return s.fail(ErrUnsupported, "a dict key that is not a str")
			}
			if err := s.value(depth + 1); err != nil {
				return err
			}
			if err := s.value(depth + 1); err != nil {
				return err
			}
		}
	}
	return s.fail(ErrUnsupported, "type code "+strconv.QuoteRune(rune(code)))
}
