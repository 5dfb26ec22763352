package subproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Large payloads travel through a shared memory region instead of the
// socket. The host creates one memfd per worker (close-on-exec, sealable)
// and seals it against shrinking before anything maps it; the child
// inherits it as fd 5. Either side grows it (ftruncate, never beyond
// Config.MaxSharedMemory) when the payload it is about to write does not
// fit, and bumps the region's generation: the frame that follows carries
// the new generation, and the reader maps the region anew. As the region
// can only grow, a mapping of a size the file once had never faults.
//
// Requests and replies alternate on a worker (one request is outstanding
// at a time), so the host writes each request from offset 0 and reads the
// reply before it writes again. A call's out-of-band buffers are laid out
// from offset 0, its call tuple after them (python.EncodeCallInRegion): the
// handler gets read-only views of the buffers, not copies. The child writes
// its reply after the request (from offset 0 when the request is not in
// the region); a result that is one of the buffers itself is replied in
// place, its headers written in the room left before each buffer. The host copies a reply out of the region before the call
// returns; nothing it hands out points into it.

// frameShared, or-ed into a frame's type, says its payload lies in the
// shared region: the frame then carries a region reference (generation,
// offset, length; three little-endian uint64) instead of the payload.
const frameShared = 0x80

// regionRefSize is the size of a region reference in a frame.
const regionRefSize = 24

// shmFD is the child's descriptor of the shared region.
const shmFD = 5

// hostShmFD is the child's descriptor of the host-call region: the next
// after the request region's.
func hostShmFD(cfg Config) int {
	if cfg.SharedThreshold > 0 {
		return shmFD + 1
	}
	return shmFD
}

// DefaultSharedThreshold is the payload size from which a frame's payload
// travels through the shared region when Config.SharedThreshold is zero.
const DefaultSharedThreshold = 256 << 10

// ErrBadRegion: a frame referred to bytes outside the shared region, to a
// generation of the region that never existed, or to a region grown beyond
// its cap. The worker is killed.
var ErrBadRegion = errors.New("subproc: bad shared memory reference")

// regionRef locates a payload in the shared region.
type regionRef struct {
	gen, off, n uint64
}

func (r regionRef) append(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, r.gen)
	dst = binary.LittleEndian.AppendUint64(dst, r.off)
	return binary.LittleEndian.AppendUint64(dst, r.n)
}

// parseRegionRef decodes a region reference from a frame's payload.
func parseRegionRef(p []byte) (regionRef, error) {
	if len(p) != regionRefSize {
		return regionRef{}, fmt.Errorf("%w: reference of %d bytes, want %d", ErrBadRegion, len(p), regionRefSize)
	}
	return regionRef{
		gen: binary.LittleEndian.Uint64(p[0:8]),
		off: binary.LittleEndian.Uint64(p[8:16]),
		n:   binary.LittleEndian.Uint64(p[16:24]),
	}, nil
}

// region is the host's side of a worker's shared memory.
type region struct {
	mu     sync.Mutex // guards all below; held while the mapping is read or written
	file   *os.File   // the memfd; nil once closed
	mem    []byte     // the current mapping; nil while the region is empty
	gen    uint64     // generation of mem: bumped on every growth
	max    int        // cap on the region's size
	closed bool
}

// newRegion creates an empty region (a memfd of that name, as /proc shows
// it) capped at max bytes, sealed against shrinking.
func newRegion(name string, max int) (*region, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("seal shared memory: %w", err)
	}
	return &region{file: os.NewFile(uintptr(fd), name), max: max}, nil
}

// size returns the size of the current mapping.
func (r *region) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.mem)
}

// remap maps the region's first n bytes in place of the current mapping.
func (r *region) remap(n int) error {
	mem, err := unix.Mmap(int(r.file.Fd()), 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map shared memory: %w", err)
	}
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
	}
	r.mem = mem
	r.gen++
	return nil
}

// grow makes the region hold at least need bytes (need <= r.max); r.mu
// held.
func (r *region) grow(need int) error {
	if need <= len(r.mem) {
		return nil
	}
	n := min(max(need, 2*len(r.mem)), r.max)
	n = min((n+pageSize-1)/pageSize*pageSize, r.max)
	if err := unix.Ftruncate(int(r.file.Fd()), int64(n)); err != nil {
		return fmt.Errorf("grow shared memory to %d bytes: %w", n, err)
	}
	return r.remap(n)
}

// put writes p at offset 0, growing the region if needed, and returns its
// reference. ok is false when p does not fit under the cap (or the region
// is closed): the payload then goes through the socket.
func (r *region) put(p []byte) (ref regionRef, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.putLocked(p)
}

func (r *region) putLocked(p []byte) (ref regionRef, ok bool, err error) {
	if r.closed || len(p) > r.max {
		return ref, false, nil
	}
	if err := r.grow(len(p)); err != nil {
		return ref, false, err
	}
	copy(r.mem, p)
	return regionRef{gen: r.gen, off: 0, n: uint64(len(p))}, true, nil
}

// encodeIn lets enc write a payload into the region, grown first to hold
// need bytes; enc returns where in mem the payload lies. ok is false when
// need exceeds the cap (or the region is closed, or cannot grow): nothing
// was written and the payload goes through the socket.
func (r *region) encodeIn(need int, enc func(mem []byte) (start, end int, err error)) (ref regionRef, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || need > r.max {
		return ref, false, nil
	}
	if err := r.grow(need); err != nil {
		return ref, false, err
	}
	start, end, err := enc(r.mem)
	if err != nil {
		return ref, false, err
	}
	return regionRef{gen: r.gen, off: uint64(start), n: uint64(end - start)}, true, nil
}

// get copies out the payload ref names, after checking it against the
// mapping (and limit, the frame cap). A reference to the next generation,
// or beyond the mapping, means the child grew the region: it is mapped anew
// at its current size, which must not exceed the cap. A reference to a
// later generation is refused.
func (r *region) get(ref regionRef, limit int) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.cover(ref); err != nil {
		return nil, err
	}
	if ref.n > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, ref.n, limit)
	}
	out := make([]byte, ref.n)
	copy(out, r.mem[ref.off:ref.off+ref.n])
	return out, nil
}

// putAt copies parts, one after the other, into the bytes ref names,
// which must be exactly their size: a span the child granted in the
// host-call region (see hostcall.go). The region is mapped anew when ref
// lies beyond the mapping, as for get.
func (r *region) putAt(ref regionRef, parts [][]byte, size int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ref.n != uint64(size) {
		return fmt.Errorf("%w: a span of %d bytes for %d", ErrBadRegion, ref.n, size)
	}
	if err := r.cover(ref); err != nil {
		return err
	}
	off := ref.off
	for _, p := range parts {
		off += uint64(copy(r.mem[off:ref.off+ref.n], p))
	}
	return nil
}

// cover checks that ref lies in the region, mapping the region anew at its
// current size when ref names a newer generation or lies beyond the
// mapping; r.mu held.
func (r *region) cover(ref regionRef) error {
	if r.closed {
		return fmt.Errorf("%w: region closed", ErrBadRegion)
	}
	// A reference to an older generation is no error: the child has not
	// seen a growth of the host's whose request never went out. Its bytes
	// are checked against the mapping like any other.
	grown := ref.gen == r.gen+1
	if ref.gen > r.gen+1 {
		return fmt.Errorf("%w: generation %d, want at most %d", ErrBadRegion, ref.gen, r.gen+1)
	}
	if grown || ref.off > uint64(len(r.mem)) || ref.n > uint64(len(r.mem))-ref.off {
		// The child grew the region (perhaps past a growth of the host's
		// it had not seen yet): map it anew at its current size.
		var st unix.Stat_t
		if err := unix.Fstat(int(r.file.Fd()), &st); err != nil {
			return fmt.Errorf("shared memory: %w", err)
		}
		if st.Size > int64(r.max) || (grown && st.Size <= int64(len(r.mem))) {
			return fmt.Errorf("%w: generation %d of %d bytes (was %d, cap %d)", ErrBadRegion, ref.gen, st.Size, len(r.mem), r.max)
		}
		if st.Size > int64(len(r.mem)) {
			gen := r.gen
			if err := r.remap(int(st.Size)); err != nil {
				return err
			}
			r.gen = max(gen, ref.gen)
		}
	}
	size := uint64(len(r.mem))
	if ref.off > size || ref.n > size-ref.off {
		return fmt.Errorf("%w: %d bytes at offset %d, region of %d bytes", ErrBadRegion, ref.n, ref.off, size)
	}
	return nil
}

// fileSize returns the size of the region's file: what it holds, mapped
// on this side or not.
func (r *region) fileSize() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(r.file.Fd()), &st); err != nil {
		return 0
	}
	return st.Size
}

// close unmaps the region and closes the memfd. Idempotent.
func (r *region) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
	r.file.Close()
}

var pageSize = os.Getpagesize()
