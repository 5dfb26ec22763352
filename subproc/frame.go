package subproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types of the protocol between the host and a worker process. The
// Python side is python/snakepit/_process.py.
const (
	frameHello       = 1  // child → host: ready (adapter imported, setup() ran)
	frameFail        = 2  // child → host: start-up failed; payload is an error envelope
	framePing        = 3  // host → child
	framePong        = 4  // child → host
	frameCall        = 5  // host → child: Dispatcher.call arguments
	frameStreamOpen  = 6  // host → child: Dispatcher.stream_open arguments
	frameStreamNext  = 7  // host → child
	frameStreamClose = 8  // host → child
	frameEndSession  = 9  // host → child: marshalled (session_id,)
	frameShutdown    = 10 // host → child: run teardown() and exit
	frameReply       = 11 // child → host: a dispatcher reply envelope
)

// ProtocolVersion is the version the child announces in its HELLO.
const ProtocolVersion = 1

// headerSize is the frame header: payload length (uint32), type (uint8),
// request id (uint64), all little-endian.
const headerSize = 13

// DefaultMaxFrame bounds a frame's payload when Config.MaxFrame is zero.
const DefaultMaxFrame = 64 << 20

// Errors of the frame layer. A peer that causes one of them is not trusted
// again: the worker is killed.
var (
	// ErrFrameTooLarge: a frame announced a payload above the size cap.
	ErrFrameTooLarge = errors.New("subproc: frame too large")
	// ErrTruncated: the stream ended inside a frame.
	ErrTruncated = errors.New("subproc: truncated frame")
	// ErrBadFrame: a frame of an unknown or unexpected type.
	ErrBadFrame = errors.New("subproc: bad frame")
)

type frame struct {
	typ     byte
	id      uint64
	payload []byte
}

// appendFrame appends one encoded frame to dst.
func appendFrame(dst []byte, typ byte, id uint64, payload []byte) []byte {
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	h[4] = typ
	binary.LittleEndian.PutUint64(h[5:13], id)
	dst = append(dst, h[:]...)
	return append(dst, payload...)
}

// readFrame reads one frame. It returns io.EOF only at a frame boundary,
// ErrTruncated for a stream that ends inside a frame, and ErrFrameTooLarge
// (before reading the payload) for a payload above max. buf is reused for
// the payload when large enough.
func readFrame(r io.Reader, max int, buf []byte) (frame, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return frame{}, ErrTruncated
		}
		return frame{}, err
	}
	n := binary.LittleEndian.Uint32(h[0:4])
	f := frame{typ: h[4], id: binary.LittleEndian.Uint64(h[5:13])}
	if f.typ == 0 || f.typ > frameReply {
		return frame{}, fmt.Errorf("%w: type %d", ErrBadFrame, f.typ)
	}
	if uint64(n) > uint64(max) {
		return frame{}, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	if cap(buf) >= int(n) {
		f.payload = buf[:n]
	} else {
		f.payload = make([]byte, n)
	}
	if _, err := io.ReadFull(r, f.payload); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return frame{}, ErrTruncated
		}
		return frame{}, err
	}
	return f, nil
}
