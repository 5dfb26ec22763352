package worker

import (
	"errors"
	"strings"
	"testing"
)

func TestPythonErrorMatching(t *testing.T) {
	plain := &PythonError{Type: "ValueError", Message: "bad"}
	if plain.Error() != "python: ValueError: bad" {
		t.Fatalf("got %q", plain.Error())
	}
	if !errors.Is(plain, ErrPython) || errors.Is(plain, ErrNotSubinterpreterSafe) {
		t.Fatalf("plain exception: wrong sentinels")
	}
	refusal := &PythonError{Type: "ImportError", Message: "module _x does not support loading in subinterpreters"}
	if !errors.Is(refusal, ErrNotSubinterpreterSafe) || !errors.Is(refusal, ErrPython) {
		t.Fatalf("refusal: wrong sentinels")
	}
	if !strings.Contains(refusal.Error(), "process profile") {
		t.Fatalf("refusal message %q does not name the fix", refusal.Error())
	}
	if (&PythonError{Type: "KeyError"}).Error() != "python: KeyError" {
		t.Fatal("empty message formatting")
	}
}

func TestNotSerializable(t *testing.T) {
	cause := errors.New("codec says no")
	err := error(&NotSerializableError{What: "result", Detail: "set", Err: cause})
	if !errors.Is(err, ErrNotSerializable) || !errors.Is(err, cause) {
		t.Fatal("wrong unwrapping")
	}
	if err.Error() != "result not serialisable: set" {
		t.Fatalf("got %q", err)
	}
}
