package pymarshal

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// Values written by CPython 3.11's marshal.dumps(v, 4), with the
// back-references it makes.
const (
	// [{"id": i, "name": "snake", "score": 1.5, "tags": ["a", "b"]} for i in range(3)]
	pyRecords = "db030000007bda026964e900000000da046e616d65da05736e616b65da0573636f7265e7000000000000f83fda04746167735b02000000da0161da0162307b7201000000e901000000720300000072040000007205000000720600000072070000005b0200000072080000007209000000307b7201000000e902000000720300000072040000007205000000720600000072070000005b020000007208000000720900000030"
	// l = [1, 2]; {"tags": l, "more": l}
	pySharedList = "7bda0474616773db02000000e901000000e902000000da046d6f7265720100000030"
	// d = {"id": 42, ...}; {"a": d, "b": d}
	pySharedDict = "7bda0161fbda026964e92a000000da046e616d65da05736e616b65da0573636f7265e7000000000000f83fda04746167735b020000007200000000da0162307209000000720100000030"
	// {"id": 42, "name": "snake", "score": 1.5, "tags": ["a", "b"]}
	pyRecord = "fbda026964e92a000000da046e616d65da05736e616b65da0573636f7265e7000000000000f83fda04746167735b02000000da0161da016230"
)

type typedRec struct {
	ID    int      `json:"id"`
	Name  string   `json:"name"`
	Score float64  `json:"score"`
	Tags  []string `json:"tags"`
}

type typedEmbedded struct {
	E  int
	EP *int
}

type typedText struct{ s string }

func (t *typedText) UnmarshalText(b []byte) error {
	if string(b) == "bad" {
		return errors.New("bad text")
	}
	t.s = "text:" + string(b)
	return nil
}

// typedAll covers every kind typed decoding plans for, and a few it leaves
// to the general path.
type typedAll struct {
	ID    int      `json:"id"`
	Name  string   `json:"name"`
	Score float64  `json:"score"`
	Tags  []string `json:"tags"`
	I8    int8
	U16   uint16
	F32   float32
	Flag  bool
	Any   any
	M     map[string]int
	MA    map[string]any
	Recs  []typedRec
	P     *typedRec
	PP    **int
	Raw   []byte
	Arr   [2]int
	Text  typedText
	L     []any
	Inner struct{ X, Y int }
	*typedEmbedded
	Skip int `json:"-"`
}

// typedTextList is a slice type that decodes itself from a str.
type typedTextList []string

func (l *typedTextList) UnmarshalText(b []byte) error {
	*l = strings.Split(string(b), ",")
	return nil
}

// typedLists has a slice field of each element kind filled in place.
type typedLists struct {
	S    []string  `json:"s"`
	I    []int     `json:"i"`
	I64  []int64   `json:"i64"`
	F    []float64 `json:"f"`
	B    []bool    `json:"b"`
	T    typedTextList
	I32s []int32 `json:"i32s"`
	Tags []int64 `json:"tags"` // a list CPython shares by reference in pySharedList
	More []int64 `json:"more"`
}

// typedDestinations are the destination types the differential checks use.
var typedDestinations = []func() any{
	func() any { return new(typedAll) },
	func() any { return new(typedLists) },
	func() any { return new(typedRec) },
	func() any { return new([]typedRec) },
	func() any { return new(map[string]typedRec) },
	func() any { return new(map[string]any) },
	func() any { return new([]any) },
	func() any { return new([][]int) },
	func() any { return new(*string) },
	func() any { return new(float32) },
	func() any { return new(uint8) },
}

// checkTypedMatchesGeneral decodes data into a fresh value of each
// destination by Unmarshal and by the general path alone: both must agree
// on success, and on the value (compared by its encoding).
func checkTypedMatchesGeneral(t *testing.T, data []byte) {
	t.Helper()
	for _, mk := range typedDestinations {
		typed, gen := mk(), mk()
		errTyped := unmarshalTyped(data, reflect.ValueOf(typed).Elem(), false, oobSet{})
		errGen := unmarshalGeneral(data, reflect.ValueOf(gen).Elem(), oobSet{})
		if errTyped != nil {
			// Unmarshal then takes the general path: nothing to compare.
			if !errors.Is(errTyped, errNeedGeneral) && !errors.As(errTyped, new(*Error)) {
				t.Fatalf("%T: typed decoding failed with %v, want errNeedGeneral or a *Error", typed, errTyped)
			}
			continue
		}
		if errGen != nil {
			t.Fatalf("%T from %x: typed decoding accepted what the general path refuses (%v)", typed, data, errGen)
		}
		a, errA := Marshal(typed)
		b, errB := Marshal(gen)
		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			t.Fatalf("%T from %x: got %+v, want %+v (the general path's)", typed, data, reflect.ValueOf(typed).Elem(), reflect.ValueOf(gen).Elem())
		}
	}
}

func typedSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	for _, h := range []string{pyRecords, pySharedList, pySharedDict, pyRecord} {
		b, _ := hex.DecodeString(h)
		seeds = append(seeds, b)
	}
	for _, tc := range pyGolden {
		b, _ := hex.DecodeString(tc.hex)
		seeds = append(seeds, b)
	}
	n := 7
	for _, v := range []any{
		map[string]any{
			"id": 1, "name": "x", "score": 2, "tags": []any{"a"}, "I8": 127, "U16": 65535, "F32": 1.5,
			"Flag": true, "Any": []any{1, "s"}, "M": map[string]any{"a": 1}, "MA": map[string]any{"k": nil},
			"Recs": []any{map[string]any{"id": 3}}, "P": map[string]any{"name": "p"}, "PP": 5,
			"Raw": []byte("raw"), "Arr": []any{1, 2}, "Text": "t", "L": []any{nil, 1.5},
			"Inner": map[string]any{"x": 1, "Y": 2}, "E": 9, "EP": 10, "Skip": 4, "unknown": []any{1},
		},
		map[string]any{"id": 1 << 40, "I8": 128, "U16": -1, "F32": 1e300, "Text": "bad"},
		map[string]any{"ID": 1, "id": 2, "Name": "a", "NAME": "b"},
		map[string]any{"P": nil, "Tags": nil, "M": nil, "Any": nil, "PP": nil},
		[]any{map[string]any{"id": 1}, nil, map[string]any{"tags": []any{"x", "y"}}},
		[]any{[]any{1, 2}, []any{}},
		map[string]any{"a": map[string]any{"id": 1}, "b": nil},
		Tuple{"x", 1}, "s", 2.5, 200, &n,
		typedListsOK[0], typedListsOK[1],
		map[string]any{"s": []any{"a", 1}, "i64": []any{7, true}, "b": []any{true, 0}, "T": []any{"z"}},
	} {
		b, err := Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// TestUnmarshalTypedMatchesGeneral: typed decoding stores what the general
// path stores, including CPython's back-references to strings, small ints
// and shared containers.
func TestUnmarshalTypedMatchesGeneral(t *testing.T) {
	for _, data := range typedSeeds(t) {
		checkTypedMatchesGeneral(t, data)
		for i := range data { // and every truncation
			checkTypedMatchesGeneral(t, data[:i])
		}
	}
}

// FuzzUnmarshalTyped: on any input, typed decoding either gives way to the
// general path or stores exactly what the general path stores.
func FuzzUnmarshalTyped(f *testing.F) {
	for _, s := range typedSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkTypedMatchesGeneral(t, data)
		var v typedAll
		if err := Unmarshal(data, &v); err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *pymarshal.Error", err)
			}
		}
	})
}

// TestUnmarshalBackReferences: values CPython writes with back-references
// decode into structs, whether the reference is to a str, a small int, or
// a container shared between two places.
func TestUnmarshalBackReferences(t *testing.T) {
	data, _ := hex.DecodeString(pyRecords)
	var recs []typedRec
	if err := Unmarshal(data, &recs); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([]typedRec{{0, "snake", 1.5, []string{"a", "b"}}, {1, "snake", 1.5, []string{"a", "b"}}, {2, "snake", 1.5, []string{"a", "b"}}})
	if got := fmt.Sprint(recs); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	data, _ = hex.DecodeString(pySharedDict)
	var pair map[string]typedRec
	if err := Unmarshal(data, &pair); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(pair); got != "map[a:{42 snake 1.5 [a b]} b:{42 snake 1.5 [a b]}]" {
		t.Fatalf("got %s, want the record under both keys", got)
	}
	data, _ = hex.DecodeString(pySharedList)
	var lists struct{ Tags, More []int64 }
	if err := Unmarshal(data, &lists); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(lists) != "{[1 2] [1 2]}" {
		t.Fatalf("got %v, want {[1 2] [1 2]}", lists)
	}
}

// TestUnmarshalTypedErrors: errors keep their paths and sentinels.
func TestUnmarshalTypedErrors(t *testing.T) {
	cases := []struct {
		v        any
		sentinel error
		path     string
	}{
		{map[string]any{"I8": 300}, ErrIntRange, ".I8"},
		{map[string]any{"Recs": []any{map[string]any{}, map[string]any{"name": 1}}}, ErrTypeMismatch, ".Recs[1].name"},
		{map[string]any{"Text": "bad"}, ErrTypeMismatch, ".Text"},
	}
	for _, tc := range cases {
		data, err := Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		var out typedAll
		err = Unmarshal(data, &out)
		var pe *Error
		if !errors.Is(err, tc.sentinel) || !errors.As(err, &pe) || pe.Path != tc.path {
			t.Fatalf("Unmarshal(%v): got %v, want %v at %s", tc.v, err, tc.sentinel, tc.path)
		}
	}
	var out typedRec
	if err := Unmarshal([]byte("{z\x02id"), &out); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated dict: got %v, want ErrTruncated", err)
	}
	if err := Unmarshal(append(mustMarshal(t, map[string]any{"id": 1}), 'N'), &out); err == nil || !strings.Contains(err.Error(), "trailing") {
		t.Fatalf("trailing bytes: got %v, want an error about them", err)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCallAllocs: a call's Go-side work — its keyword arguments (a map
// holding a 4-key record) encoded into a reused buffer, and a reply of
// that record decoded into a struct — allocates at most 3 times: the one
// copy of the reply that its strings share, the struct's slice, and no
// more. Reply bytes are CPython's, back-references included.
func TestCallAllocs(t *testing.T) {
	args := map[string]any{"d": map[string]any{"id": 42, "name": "snake", "score": 1.5, "tags": []any{"a", "b"}}}
	reply, _ := hex.DecodeString(pyRecord)
	buf := make([]byte, 0, 256)
	var res typedRec
	allocs := testing.AllocsPerRun(1000, func() {
		var err error
		if buf, err = AppendMarshal(buf[:0], args); err != nil {
			t.Fatal(err)
		}
		if err := Unmarshal(reply, &res); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 3 {
		t.Fatalf("got %v allocations per call, want at most 3", allocs)
	}
	if res.ID != 42 || res.Name != "snake" || res.Score != 1.5 || len(res.Tags) != 2 || res.Tags[1] != "b" {
		t.Fatalf("got %+v, want the record", res)
	}
}

// TestUnmarshalNoCopy: large bytes values share the input's memory, small
// ones and Unmarshal's are copies.
func TestUnmarshalNoCopy(t *testing.T) {
	big := bytes.Repeat([]byte{7}, aliasMin)
	data, err := Marshal(map[string]any{"big": big, "small": []byte("abc")})
	if err != nil {
		t.Fatal(err)
	}
	var got struct{ Big, Small []byte }
	if err := UnmarshalNoCopy(data, &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Big, big) || string(got.Small) != "abc" {
		t.Fatalf("got %d bytes and %q, want %d and abc", len(got.Big), got.Small, len(big))
	}
	inData := func(b []byte) bool {
		p := uintptr(unsafe.Pointer(&b[0]))
		lo := uintptr(unsafe.Pointer(&data[0]))
		return p >= lo && p < lo+uintptr(len(data))
	}
	if !inData(got.Big) || inData(got.Small) {
		t.Fatalf("big shares the input: %v, want true; small: %v, want false", inData(got.Big), inData(got.Small))
	}
	if cap(got.Big) != len(got.Big) {
		t.Fatalf("cap %d, want %d (appending must not write into the input)", cap(got.Big), len(got.Big))
	}
	var copied struct{ Big []byte }
	if err := Unmarshal(data, &copied); err != nil {
		t.Fatal(err)
	}
	if inData(copied.Big) {
		t.Fatal("Unmarshal shared the input's memory")
	}
}

// dictInOrder marshals a dict whose keys come in the order given (Marshal
// sorts them), each with vals[key] as its value.
func dictInOrder(t *testing.T, keys []string, vals map[string]any) []byte {
	t.Helper()
	b := []byte{typeDict}
	for _, k := range keys {
		var err error
		if b, err = AppendString(b, k); err != nil {
			t.Fatal(err)
		}
		b = append(b, mustMarshal(t, vals[k])...)
	}
	return append(b, typeNull)
}

// TestUnmarshalStructKeyOrder: a struct type's fields are found whatever
// order its keys come in, from one dict to the next and from goroutines
// decoding at the same time: the position a key had last time is only a
// first guess. Keys differing in case only, unknown keys and dicts with
// more keys than positions are remembered take the same way.
func TestUnmarshalStructKeyOrder(t *testing.T) {
	vals := map[string]any{
		"id": 1, "name": "x", "score": 2.5, "tags": []any{"a", "b"}, "I8": 7, "U16": 9, "F32": 1.5,
		"Flag": true, "Any": "any", "M": map[string]any{"a": 1}, "Recs": []any{map[string]any{"id": 3}},
		"P": map[string]any{"name": "p"}, "Raw": []byte("raw"), "L": []any{nil, 1.5},
		"Inner": map[string]any{"X": 1, "Y": 2}, "E": 9, "EP": 10, "unknown": 11,
		"NAME": "folded", "Id": 5,
	}
	all := []string{"id", "name", "score", "tags", "I8", "U16", "F32", "Flag", "Any", "M", "Recs", "P", "Raw", "L", "Inner", "E", "EP", "unknown"}
	orders := [][]string{
		{"id", "name", "score", "tags"},
		{"tags", "score", "name", "id"},
		{"name", "id"},
		{"unknown", "tags", "id"},
		{"NAME", "score", "Id"},
		{"score", "NAME", "tags", "unknown", "Id"},
		all,
		append(slices.Clone(all[4:]), all[:4]...),
	}
	var inputs [][]byte
	for _, keys := range orders {
		inputs = append(inputs, dictInOrder(t, keys, vals))
	}
	check := func(t *testing.T, data []byte) error {
		var typed, gen typedAll
		if err := unmarshalTyped(data, reflect.ValueOf(&typed).Elem(), false, oobSet{}); err != nil {
			return fmt.Errorf("typed decoding of %x failed: %v", data, err)
		}
		if err := unmarshalGeneral(data, reflect.ValueOf(&gen).Elem(), oobSet{}); err != nil {
			return fmt.Errorf("general path on %x failed: %v", data, err)
		}
		a, b := mustMarshal(t, &typed), mustMarshal(t, &gen)
		if !bytes.Equal(a, b) {
			return fmt.Errorf("from %x: got %+v, want %+v (the general path's)", data, typed, gen)
		}
		return nil
	}
	for range 3 {
		for _, data := range inputs {
			if err := check(t, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Concurrent decodings, each in its own order, share one plan.
	errs := make(chan error, len(inputs))
	var wg sync.WaitGroup
	for _, data := range inputs {
		wg.Go(func() {
			for range 200 {
				if err := check(t, data); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// typedListsOK decode into typedLists on both paths.
var typedListsOK = []map[string]any{
	{
		"s": []any{"a", "é"}, "i": []any{1, int64(1) << 40, -2}, "i64": []any{int64(-1) << 50, 7},
		"f": []any{1.5, 2, int64(1) << 40}, "b": []any{true, false}, "T": "x,y", "i32s": []any{1, 2},
	},
	{"s": []any{"a", "b"}, "i": []any{1}, "i64": []any{}, "f": nil, "b": Tuple{true}, "T": "z", "tags": []any{5}},
}

// TestUnmarshalListsInPlace: slice fields filled in place take the items
// of their element type directly and the others (big ints, ints for
// floats) by conversion, as the general path does.
func TestUnmarshalListsInPlace(t *testing.T) {
	for _, v := range typedListsOK {
		data := mustMarshal(t, v)
		var typed, gen typedLists
		if err := unmarshalTyped(data, reflect.ValueOf(&typed).Elem(), false, oobSet{}); err != nil {
			t.Fatalf("typed decoding of %v: %v", v, err)
		}
		if err := unmarshalGeneral(data, reflect.ValueOf(&gen).Elem(), oobSet{}); err != nil {
			t.Fatalf("general path on %v: %v", v, err)
		}
		if !reflect.DeepEqual(typed, gen) {
			t.Fatalf("got %+v, want %+v (the general path's)", typed, gen)
		}
	}
	var got typedLists
	if err := Unmarshal(mustMarshal(t, typedListsOK[0]), &got); err != nil {
		t.Fatal(err)
	}
	if got.I[1] != 1<<40 || got.F[2] != 1<<40 || got.S[1] != "é" || len(got.B) != 2 || len(got.T) != 2 {
		t.Fatalf("got %+v, want the lists of typedListsOK[0]", got)
	}
}
