package subproc

import (
	"bufio"
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
	frameHostCall    = 12 // child → host: a host function call (see decodeHostCall)
	frameHostReply   = 13 // host → child: the reply bytes of worker.Host.Invoke
	// The concurrent mode (Config.Concurrency > 1 or Config.PipelineDepth
	// > 0) only; see mux.go.
	frameCancel     = 14 // host → child: cancel request id; payload "w": withdraw it only if not started
	frameNotStarted = 15 // child → host: request id was removed before it started (empty payload)
	frameStarted    = 16 // child → host: a withdrawn request id had started or ended (empty payload)
	// Host calls with a result for the host-call region; see hostcall.go.
	frameHostSpace = 17 // host → child: a host call's result of this many bytes (uint64) needs room
	frameHostGrant = 18 // child → host: the room granted (a region reference), or empty: none
)

// ProtocolVersion is the version the child announces in its HELLO.
const ProtocolVersion = 3

// headerSize is the frame header: payload length (uint32), type (uint8),
// request id (uint64), all little-endian.
const headerSize = 13

// DefaultMaxFrame bounds a frame's payload when Config.MaxFrame is zero:
// room for a 64 MiB argument or result with its envelope.
const DefaultMaxFrame = 128 << 20

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
	fr := frameReader{r: r, max: max, buf: buf}
	return fr.next()
}

// frameReader reads frames one after the other and keeps a frame it has
// partly read across errors that leave the stream intact (a read deadline):
// the next call to next resumes where the failed one stopped, so a reply
// that straddles a caller's deadline is read whole, never parsed from its
// middle.
type frameReader struct {
	r   io.Reader
	br  *bufio.Reader // r, when it reads ahead (newFrameReader); nil otherwise
	max int
	buf []byte // reused for payloads when large enough; nil: a fresh one each

	h   [headerSize]byte
	nh  int   // header bytes read so far
	f   frame // the frame being read, once the header is whole
	np  int   // payload bytes read so far
	err error // a frame-level error: the stream cannot be read further
}

// readAhead is how much a worker's frame reader takes from the connection
// in one read: every frame the child has sent, up to that, costs one
// system call. A larger payload is read straight into its own buffer.
const readAhead = 64 << 10

// newFrameReader returns a frameReader that reads ahead from r (see
// readAhead), handing out fresh payloads.
func newFrameReader(r io.Reader, max int) *frameReader {
	br := bufio.NewReaderSize(r, readAhead)
	return &frameReader{r: br, br: br, max: max}
}

// ready reports whether next would return without reading from the
// underlying reader: the rest of a frame (or a header that next refuses)
// was read ahead already.
func (fr *frameReader) ready() bool {
	if fr.br == nil || fr.err != nil {
		return false
	}
	n := fr.br.Buffered()
	if fr.nh < headerSize {
		need := headerSize - fr.nh
		if n < need {
			return false
		}
		peek, _ := fr.br.Peek(need) // buffered: no read
		var h [headerSize]byte
		copy(h[:], fr.h[:fr.nh])
		copy(h[fr.nh:], peek)
		size := uint64(binary.LittleEndian.Uint32(h[0:4]))
		return size > uint64(fr.max) || uint64(n-need) >= size
	}
	return n >= len(fr.f.payload)-fr.np
}

// next reads the next frame, or continues the one a previous call left
// unfinished. Errors as for readFrame; after a frame-level error
// (ErrFrameTooLarge, ErrBadFrame, ErrTruncated) every later call fails too.
func (fr *frameReader) next() (frame, error) {
	if fr.err != nil {
		return frame{}, fr.err
	}
	for fr.nh < headerSize {
		n, err := fr.r.Read(fr.h[fr.nh:])
		fr.nh += n
		if fr.nh == headerSize {
			break
		}
		if err != nil {
			if err == io.EOF {
				if fr.nh == 0 {
					return frame{}, io.EOF
				}
				return frame{}, fr.fail(ErrTruncated)
			}
			return frame{}, err
		}
	}
	if fr.np == 0 && fr.f.typ == 0 {
		n := binary.LittleEndian.Uint32(fr.h[0:4])
		f := frame{typ: fr.h[4], id: binary.LittleEndian.Uint64(fr.h[5:13])}
		if base := f.typ &^ frameShared; base == 0 || base > frameHostGrant {
			return frame{}, fr.fail(fmt.Errorf("%w: type %d", ErrBadFrame, f.typ))
		}
		if f.typ&frameShared != 0 && n != regionRefSize {
			return frame{}, fr.fail(fmt.Errorf("%w: region reference of %d bytes", ErrBadFrame, n))
		}
		if uint64(n) > uint64(fr.max) {
			return frame{}, fr.fail(fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, fr.max))
		}
		if cap(fr.buf) >= int(n) {
			f.payload = fr.buf[:n]
		} else {
			f.payload = make([]byte, n)
		}
		fr.f = f
	}
	for fr.np < len(fr.f.payload) {
		n, err := fr.r.Read(fr.f.payload[fr.np:])
		fr.np += n
		if fr.np == len(fr.f.payload) {
			break
		}
		if err != nil {
			if err == io.EOF {
				return frame{}, fr.fail(ErrTruncated)
			}
			return frame{}, err
		}
	}
	f := fr.f
	fr.nh, fr.np, fr.f = 0, 0, frame{}
	return f, nil
}

func (fr *frameReader) fail(err error) error {
	fr.err = err
	return err
}
