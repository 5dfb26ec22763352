package pymarshal

import (
	"errors"
	"strings"
	"testing"
)

// TestErrorPathCapped checks that the path of an error deep inside a value
// is bounded: its outermost and innermost elements are kept, the middle is
// elided.
func TestErrorPathCapped(t *testing.T) {
	var v any = map[string]any{"bad": make(chan int)}
	for range MaxDepth - 2 {
		v = []any{v}
	}
	v = map[string]any{"top": v}
	_, err := Marshal(v)
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a *Error", err)
	}
	msg := err.Error()
	if len(msg) > 400 {
		t.Fatalf("got a message of %d bytes, want at most 400: %.200s", len(msg), msg)
	}
	if !strings.HasPrefix(pe.Path, `["top"][0][0]`) || !strings.HasSuffix(pe.Path, `[0][0]["bad"]`) || !strings.Contains(pe.Path, "…") {
		t.Fatalf("got path %q, want the outer and inner elements with an elision", pe.Path)
	}

	// Decoding: a set at the bottom of nested lists.
	data := strings.Repeat("[\x01\x00\x00\x00", MaxDepth-1) + "<\x00\x00\x00\x00"
	_, err = Decode([]byte(data))
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a *Error", err)
	}
	if msg := err.Error(); len(msg) > 400 {
		t.Fatalf("got a message of %d bytes, want at most 400: %.200s", len(msg), msg)
	}

	// Short paths are untouched.
	_, err = Marshal([]any{[]any{make(chan int)}})
	if !errors.As(err, &pe) || pe.Path != "[0][0]" {
		t.Fatalf("got %v, want path [0][0]", err)
	}
}
