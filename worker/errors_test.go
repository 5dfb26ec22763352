package worker

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPythonErrorMatching(t *testing.T) {
	plain := &PythonError{Type: "ValueError", Message: "bad"}
	require.EqualError(t, plain, "python: ValueError: bad")
	require.ErrorIs(t, plain, ErrPython, "plain exception")
	require.NotErrorIs(t, plain, ErrNotSubinterpreterSafe, "plain exception")
	refusal := &PythonError{Type: "ImportError", Message: "module _x does not support loading in subinterpreters"}
	require.ErrorIs(t, refusal, ErrNotSubinterpreterSafe, "refusal")
	require.ErrorIs(t, refusal, ErrPython, "refusal")
	require.ErrorContains(t, refusal, "process profile", "the refusal's message names the fix")
	require.EqualError(t, &PythonError{Type: "KeyError"}, "python: KeyError", "empty message formatting")
}

func TestNotSerializable(t *testing.T) {
	cause := errors.New("codec says no")
	err := error(&NotSerializableError{What: "result", Detail: "set", Err: cause})
	require.ErrorIs(t, err, ErrNotSerializable)
	require.ErrorIs(t, err, cause)
	require.EqualError(t, err, "result not serialisable: set")
}
