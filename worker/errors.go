// Package worker is the contract shared by every kind of snakepit worker: the
// errors a caller branches on, whichever profile (thread or process) ran the
// Python code. It is a leaf package: it imports nothing from this module.
package worker

import (
	"errors"
	"strings"
)

// Sentinel errors. Callers test for them with [errors.Is]; the typed errors of
// this package unwrap to the sentinel they belong to.
var (
	// ErrPython matches every *PythonError: the Python code raised.
	ErrPython = errors.New("worker: python exception")

	// ErrNotSubinterpreterSafe means a module refused to load in a
	// sub-interpreter (numpy and most Cython or pybind11 extensions do). Such
	// code must run in the process profile.
	ErrNotSubinterpreterSafe = errors.New("worker: module cannot be loaded in a sub-interpreter: use the process profile")

	// ErrNotSerializable means a value cannot cross between Go and Python:
	// outside the supported types (None, bool, int, float, str, bytes,
	// list/tuple, dict with str keys), an int beyond int64, a string that is
	// not valid UTF-8, or nesting that is too deep.
	ErrNotSerializable = errors.New("worker: value not serialisable")
)

// NotSerializableError says which value could not cross, and where in it.
type NotSerializableError struct {
	// What is "argument" (Go to Python) or "result" (Python to Go).
	What string
	// Detail names the offending part: "['when']: datetime.datetime".
	Detail string
	// Err is the codec's error, when the Go side found the problem.
	Err error
}

func (e *NotSerializableError) Error() string {
	return e.What + " not serialisable: " + e.Detail
}

// Unwrap returns [ErrNotSerializable] and the codec's error, if any.
func (e *NotSerializableError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrNotSerializable, e.Err}
	}
	return []error{ErrNotSerializable}
}

// PythonError is a Python exception that crossed into Go.
//
// Type is the exception's qualified type name ("ValueError",
// "json.decoder.JSONDecodeError"), Message its str(), and Traceback the
// formatted traceback as Python prints it (empty when there is none).
type PythonError struct {
	Type      string
	Message   string
	Traceback string
}

// Error returns "python: Type: Message", as the last line of a Python
// traceback reads, with a hint when the process profile is the fix.
func (e *PythonError) Error() string {
	msg := "python: " + e.Type
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.IsSubinterpreterRefusal() {
		msg += " (run this code in the process profile)"
	}
	if isDaemonRefusal(e) {
		msg += " (the process profile allows daemon threads)"
	}
	return msg
}

// Unwrap returns [ErrPython], and also [ErrNotSubinterpreterSafe] when the
// exception is CPython's refusal to import an extension module in a
// sub-interpreter.
func (e *PythonError) Unwrap() []error {
	if e.IsSubinterpreterRefusal() {
		return []error{ErrPython, ErrNotSubinterpreterSafe}
	}
	return []error{ErrPython}
}

// IsSubinterpreterRefusal reports whether e is the ImportError CPython raises
// for an extension module that does not support sub-interpreters, or the
// one such a module raises itself when a second interpreter imports it
// (numpy before 2 on CPython 3.11: "Interpreter change detected").
func (e *PythonError) IsSubinterpreterRefusal() bool {
	return (e.Type == "ImportError" || e.Type == "ModuleNotFoundError") &&
		(strings.Contains(e.Message, "does not support loading in subinterpreters") ||
			strings.Contains(e.Message, "Interpreter change detected"))
}

// isDaemonRefusal reports whether e is the RuntimeError a sub-interpreter
// raises when a daemon thread is started in it.
func isDaemonRefusal(e *PythonError) bool {
	return e.Type == "RuntimeError" && strings.Contains(e.Message, "daemon threads are disabled")
}
