package subproc_test

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
)

// A scripted fake child: the test binary re-executed (mode "script") that
// speaks the frame protocol and does, for each request, what the request's
// command says. The command is a JSON-encoded step, so each test (or a
// seeded random run) scripts the child call by call.

// Frame types, as in frame.go.
const (
	fHello       = 1
	fPing        = 3
	fPong        = 4
	fCall        = 5
	fStreamOpen  = 6
	fStreamNext  = 7
	fStreamClose = 8
	fShutdown    = 10
	fReply       = 11
)

// step tells the scripted child what to do with one request.
type step struct {
	// Op: "echo" (reply with Value), "exit" (write Prefix bytes of the
	// reply, then exit), "hang" (never reply), "garbage" (reply to another
	// request id), "noread" (reply, then stop reading for good), "stream"
	// (open a stream of N chunks), "grandchild-setsid" (start a process in a
	// new session that holds stdout and stderr, write its pid to PidFile,
	// reply).
	Op    string `json:"op"`
	Value []byte `json:"value,omitempty"`
	// The reply is written in pieces cut at Cuts (byte offsets), PauseUS
	// apart, after DelayMS; with StallMS set, the bytes before StallAt go
	// out after DelayMS and the rest StallMS later.
	Cuts    []int `json:"cuts,omitempty"`
	PauseUS int   `json:"pause_us,omitempty"`
	DelayMS int   `json:"delay_ms,omitempty"`
	StallAt int   `json:"stall_at,omitempty"`
	StallMS int   `json:"stall_ms,omitempty"`
	// Interruptible: SIGUSR1 during the delay ends the call with a
	// Cancelled reply (otherwise signals are ignored).
	Interruptible bool `json:"interruptible,omitempty"`
	Prefix        int  `json:"prefix,omitempty"`
	// Stream: N chunks; closing takes CloseDelayMS (interruptible by
	// SIGUSR1 unless CloseIgnoresSignal; negative: for ever).
	N                  int    `json:"n,omitempty"`
	CloseDelayMS       int    `json:"close_delay_ms,omitempty"`
	CloseIgnoresSignal bool   `json:"close_ignores_signal,omitempty"`
	NextDelayMS        int    `json:"next_delay_ms,omitempty"` // before each chunk (signals ignored)
	ExitAtChunk        int    `json:"exit_at_chunk,omitempty"` // exit instead of sending this chunk (N+1: the end)
	ExitOnClose        bool   `json:"exit_on_close,omitempty"` // exit instead of closing
	PidFile            string `json:"pid_file,omitempty"`
	// Op "shm": reply through the shared region (fd 5). The child first
	// tries to shrink the region to ShmShrink bytes (when not negative;
	// the seal must refuse it), grows it to ShmGrow bytes (when larger),
	// writes the reply at ShmOff (when it fits) and sends the reference
	// (ShmGen, ShmOff, ShmLen, or the reply's length when ShmLen is zero).
	// ShmRaw, when set, is sent as the reference instead.
	ShmShrink int    `json:"shm_shrink,omitempty"`
	ShmGrow   int    `json:"shm_grow,omitempty"`
	ShmGen    uint64 `json:"shm_gen,omitempty"`
	ShmOff    uint64 `json:"shm_off,omitempty"`
	ShmLen    uint64 `json:"shm_len,omitempty"`
	ShmRaw    []byte `json:"shm_raw,omitempty"`
	// ShmAuto: follow the protocol instead (grow the region when the reply
	// does not fit at ShmOff, bumping the child's generation), then break
	// it as ShmBad says: "off" (an offset at the region's end), "len" (a
	// length that overflows), "gen" (a generation two ahead).
	ShmAuto bool   `json:"shm_auto,omitempty"`
	ShmBad  string `json:"shm_bad,omitempty"`
}

// shmGen is the scripted child's generation of the shared region, for
// replies with ShmAuto.
var shmGen uint64

// fShared marks a frame whose payload lies in the shared region.
const fShared = 0x80

// shmReply writes reply into the shared region as s says and returns the
// reference to send.
func shmReply(s step, reply []byte) []byte {
	const fd = 5
	if s.ShmShrink > 0 || s.ShmShrink < 0 {
		_ = unix.Ftruncate(fd, int64(max(s.ShmShrink, 0)))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		os.Exit(5)
	}
	if s.ShmAuto {
		if need := s.ShmOff + uint64(len(reply)); need > uint64(st.Size) {
			page := uint64(os.Getpagesize())
			s.ShmGrow = int((need + page - 1) / page * page)
			shmGen++
		}
		s.ShmGen, s.ShmLen = shmGen, 0
	}
	if int64(s.ShmGrow) > st.Size {
		if err := unix.Ftruncate(fd, int64(s.ShmGrow)); err != nil {
			os.Exit(5)
		}
		st.Size = int64(s.ShmGrow)
	}
	if st.Size > 0 && s.ShmOff <= uint64(st.Size) && uint64(len(reply)) <= uint64(st.Size)-s.ShmOff {
		mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			os.Exit(5)
		}
		copy(mem[s.ShmOff:], reply)
		unix.Munmap(mem)
	}
	if s.ShmRaw != nil {
		return s.ShmRaw
	}
	switch s.ShmBad {
	case "off":
		s.ShmOff, s.ShmLen = uint64(st.Size), 1
	case "len":
		s.ShmOff, s.ShmLen = 8, ^uint64(0)-6 // their sum wraps to 1
	case "gen":
		s.ShmGen += 2
	}
	n := s.ShmLen
	if n == 0 {
		n = uint64(len(reply))
	}
	ref := binary.LittleEndian.AppendUint64(nil, s.ShmGen)
	ref = binary.LittleEndian.AppendUint64(ref, s.ShmOff)
	return binary.LittleEndian.AppendUint64(ref, n)
}

// command returns the request command carrying s.
func (s step) command() string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// replyBytes is the reply frame payload for a handler result of value v (a
// bytes object holding the marshalled result), and the result itself.
func replyBytes(v []byte) (payload, result []byte) {
	result = appendMarshalBytes(nil, v)
	return appendMarshalBytes(nil, result), result
}

func appendMarshalBytes(dst, v []byte) []byte {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(v)))
	dst = append(dst, 's')
	dst = append(dst, n[:]...)
	return append(dst, v...)
}

func encodeFrame(typ byte, id uint64, payload []byte) []byte {
	h := make([]byte, 13, 13+len(payload))
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	h[4] = typ
	binary.LittleEndian.PutUint64(h[5:13], id)
	return append(h, payload...)
}

// scriptChild is the body of the scripted fake child.
func scriptChild() {
	unix.CloseOnExec(3)
	unix.CloseOnExec(4)
	sock := os.NewFile(3, "sock")
	usr1 := make(chan os.Signal, 64)
	signal.Notify(usr1, unix.SIGUSR1)
	drain := func() {
		for {
			select {
			case <-usr1:
			default:
				return
			}
		}
	}
	// wait sleeps d (for ever if negative); with interruptible set, a
	// SIGUSR1 ends it early and it reports true.
	wait := func(d time.Duration, interruptible bool) bool {
		var tc <-chan time.Time
		if d >= 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			tc = t.C
		}
		for {
			select {
			case <-tc:
				return false
			case <-usr1:
				if interruptible {
					return true
				}
			}
		}
	}
	write := func(b []byte) {
		if _, err := sock.Write(b); err != nil {
			os.Exit(0)
		}
	}
	cancelled, _ := pymarshal.Marshal(pymarshal.Tuple{int64(1),
		pymarshal.Tuple{"cancelled", "Cancelled", "cancelled by the host", "", nil}, []any{}})
	okNone := appendMarshalBytes(nil, []byte{'N'}) // a result of None
	end, _ := pymarshal.Marshal(pymarshal.Tuple{int64(2), nil, []any{}})
	hello, _ := pymarshal.Marshal(map[string]any{"protocol": subproc.ProtocolVersion, "pid": os.Getpid(), "commands": map[string]any{}})
	write(encodeFrame(fHello, 0, hello))

	var stream *step
	chunk := 0
	for {
		var h [13]byte
		if _, err := readFull(sock, h[:]); err != nil {
			os.Exit(0)
		}
		payload := make([]byte, binary.LittleEndian.Uint32(h[0:4]))
		if _, err := readFull(sock, payload); err != nil {
			os.Exit(0)
		}
		typ, id := h[4], binary.LittleEndian.Uint64(h[5:13])
		drain() // a signal sent before the request is ignored
		switch typ {
		case fPing:
			write(encodeFrame(fPong, id, nil))
			continue
		case fShutdown:
			write(encodeFrame(fReply, id, okNone))
			os.Exit(0)
		case fStreamNext:
			if stream != nil && stream.ExitAtChunk == chunk+1 {
				os.Exit(3)
			}
			if stream == nil || chunk >= stream.N {
				write(encodeFrame(fReply, id, end))
				continue
			}
			if stream.NextDelayMS > 0 {
				wait(time.Duration(stream.NextDelayMS)*time.Millisecond, false)
			}
			chunk++
			p, _ := replyBytes([]byte(strconv.Itoa(chunk)))
			write(encodeFrame(fReply, id, p))
			continue
		case fStreamClose:
			if stream != nil && stream.ExitOnClose {
				os.Exit(3)
			}
			if stream != nil && stream.CloseDelayMS != 0 {
				d := time.Duration(stream.CloseDelayMS) * time.Millisecond
				if wait(d, !stream.CloseIgnoresSignal) {
					stream = nil
					write(encodeFrame(fReply, id, cancelled))
					continue
				}
			}
			stream = nil
			write(encodeFrame(fReply, id, okNone))
			continue
		case fCall, fStreamOpen:
		default:
			os.Exit(2)
		}
		v, err := pymarshal.Decode(payload)
		args, _ := v.([]any)
		if err != nil || len(args) < 1 {
			os.Exit(2)
		}
		cmd, _ := args[0].(string)
		var s step
		if err := json.Unmarshal([]byte(cmd), &s); err != nil {
			os.Exit(2)
		}
		if typ == fStreamOpen {
			stream, chunk = &s, 0
			time.Sleep(time.Duration(s.DelayMS) * time.Millisecond)
			write(encodeFrame(fReply, id, okNone))
			continue
		}
		reply, _ := replyBytes(s.Value)
		frame := encodeFrame(fReply, id, reply)
		switch s.Op {
		case "exit":
			write(frame[:min(s.Prefix, len(frame))])
			os.Exit(3)
		case "hang":
			wait(-1, false)
		case "garbage":
			write(encodeFrame(fReply, id+7, reply))
			continue
		case "grandchild-setsid":
			gc := exec.Command(os.Args[0], "-test.run=^TestFakeChild$")
			gc.Env = append(os.Environ(), envFakeChild+"=silent")
			gc.Stdout, gc.Stderr = os.Stdout, os.Stderr
			gc.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := gc.Start(); err != nil {
				os.Exit(4)
			}
			os.WriteFile(s.PidFile, []byte(strconv.Itoa(gc.Process.Pid)), 0o600)
			gc.Process.Release()
		}
		if s.DelayMS > 0 && wait(time.Duration(s.DelayMS)*time.Millisecond, s.Interruptible) {
			write(encodeFrame(fReply, id, cancelled))
			continue
		}
		if s.Op == "shm" {
			write(encodeFrame(fReply|fShared, id, shmReply(s, reply)))
			continue
		}
		if s.StallMS > 0 {
			at := min(max(s.StallAt, 0), len(frame))
			write(frame[:at])
			wait(time.Duration(s.StallMS)*time.Millisecond, false)
			frame = frame[at:]
		}
		last := 0
		for _, c := range s.Cuts {
			if c <= last || c >= len(frame) {
				continue
			}
			write(frame[last:c])
			if s.PauseUS > 0 {
				time.Sleep(time.Duration(s.PauseUS) * time.Microsecond)
			}
			last = c
		}
		write(frame[last:])
		if s.Op == "noread" {
			wait(-1, false)
		}
	}
}
