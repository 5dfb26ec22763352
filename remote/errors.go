package remote

import (
	"errors"
	"fmt"
)

// Errors a caller branches on, besides those of packages pool and worker
// that remote errors unwrap to.
var (
	// ErrNoResponders: no instance serves the pool (none subscribed to its
	// subjects). Nothing ran.
	ErrNoResponders = errors.New("remote: no instance serves the pool")
	// ErrInstanceGone: the instance running a call stopped answering (no
	// heartbeat within Options.DeadAfter): it died, or its connection did.
	// Errors with it also match worker.ErrWorkerDead; whether the call ran
	// is unknown.
	ErrInstanceGone = errors.New("remote: instance stopped answering")
	// ErrPayloadTooLarge: a request, result or stream chunk is larger than
	// the NATS connection's maximum payload (nats.Conn.MaxPayload). Large
	// payloads are refused, not split. See *PayloadError.
	ErrPayloadTooLarge = errors.New("remote: payload larger than the server's max payload")
	// ErrProtocol: a message did not follow the protocol (another version
	// or another program on the subjects).
	ErrProtocol = errors.New("remote: protocol error")

	// errLeaving: the instance is shutting down and took no new call;
	// nothing ran, so the caller sends it elsewhere.
	errLeaving = errors.New("remote: instance is leaving")
)

// PayloadError is a payload over the maximum. It matches
// ErrPayloadTooLarge.
type PayloadError struct {
	What string // "request", "result" or "chunk"
	Size int    // bytes, with headers
	Max  int64  // nats.Conn.MaxPayload
}

func (e *PayloadError) Error() string {
	return fmt.Sprintf("remote: %s of %d bytes exceeds the max payload of %d bytes", e.What, e.Size, e.Max)
}

// Unwrap returns ErrPayloadTooLarge.
func (e *PayloadError) Unwrap() error { return ErrPayloadTooLarge }

// RemoteError is an error a serving instance returned. Err is the error
// the local pool returned there, rebuilt: a sentinel (pool.ErrSaturated,
// context.DeadlineExceeded, ...) or typed error (*worker.PythonError,
// *worker.DeadError, ...) that errors.Is and errors.As find; nil for an
// error of no known kind. Message is the error's text on the instance.
type RemoteError struct {
	Instance string
	Message  string
	Err      error
}

func (e *RemoteError) Error() string {
	return "remote: instance " + e.Instance + ": " + e.Message
}

// Unwrap returns the rebuilt error.
func (e *RemoteError) Unwrap() error { return e.Err }
