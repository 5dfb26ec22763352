package pymarshal

import (
	"errors"
	"testing"
)

func TestCheckDict(t *testing.T) {
	good, err := Marshal(map[string]any{"a": []any{int64(1), "x", nil, []byte("y"), 2.5, true}, "b": map[string]any{"c": Tuple{int64(1) << 40}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckDict(good); err != nil {
		t.Fatalf("a marshalled dict: got %v, want nil", err)
	}
	str, _ := Marshal("cid")
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"a list", []byte{'[', 0, 0, 0, 0}, ErrMalformed},
		// A dict followed by more values: spliced into a call they would
		// become its correlation and session ids.
		{"trailing values", append(append([]byte{'{', '0'}, str...), str...), ErrMalformed},
		{"truncated", good[:len(good)-1], ErrTruncated},
		{"unknown reference", []byte{'{', 'z', 1, 'a', 'r', 0, 0, 0, 0, '0'}, ErrMalformed},
		{"a set inside", []byte{'{', 'z', 1, 'a', '<', 0, 0, 0, 0, '0'}, ErrUnsupported},
		{"forged length", []byte{'{', 'z', 1, 'a', '[', 0xff, 0xff, 0xff, 0x7f, '0'}, ErrTruncated},
	} {
		if err := CheckDict(tc.data); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzCheckDict: CheckDict never refuses what Decode accepts as a dict,
// and never accepts a dict with bytes after it.
func FuzzCheckDict(f *testing.F) {
	good, _ := Marshal(map[string]any{"k": []any{int64(1), "v", nil}})
	f.Add(good)
	f.Add([]byte{'{', 0xda, 1, 'k', 'r', 0, 0, 0, 0, '0'})
	f.Add([]byte{'{', '0', 'N'})
	f.Fuzz(func(t *testing.T, data []byte) {
		cerr := CheckDict(data)
		v, derr := Decode(data)
		if _, isDict := v.(map[string]any); derr == nil && isDict && cerr != nil {
			t.Fatalf("Decode accepts %q as a dict, CheckDict refuses it: %v", data, cerr)
		}
		if cerr == nil && derr == nil {
			if _, isDict := v.(map[string]any); !isDict {
				t.Fatalf("CheckDict accepts %q, which decodes to %T", data, v)
			}
		}
	})
}

func BenchmarkCheckDict(b *testing.B) {
	data, err := Marshal(map[string]any{"a": int64(1), "b": "two", "c": 3.5, "d": []any{true, nil}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckDict(data); err != nil {
			b.Fatal(err)
		}
	}
}
