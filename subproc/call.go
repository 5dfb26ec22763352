package subproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/internal/wstream"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/worker"
)

// acquire takes the request slot, bounded by ctx.
func (w *Worker) acquire(ctx context.Context) error {
	return w.slot.Acquire(ctx, w.done, w.unavailable)
}

func (w *Worker) releaseSlot() { w.slot.Release() }

// Call runs a command. See [worker.Worker.Call].
func (w *Worker) Call(ctx context.Context, req *worker.Request) (*worker.Response, error) {
	ctx, cancel := req.WithDeadline(ctx)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if w.mux != nil {
		return w.callMux(ctx, req, deadline)
	}
	if w.shmPeer && requestSize(req) >= w.cfg.SharedThreshold {
		return w.callShared(ctx, req, deadline)
	}
	args, err := python.EncodeCall(nil, req, deadline)
	if err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(ctx); err != nil {
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	return w.roundTrip(ctx, req, frameCall, args)
}

// roundTrip sends a call's request frame, the slot held, and reads its
// reply (serving the handler's host calls meanwhile); it releases the
// slot unless the call was abandoned (then the reply's arrival does).
func (w *Worker) roundTrip(ctx context.Context, req *worker.Request, typ byte, payload []byte) (*worker.Response, error) {
	sc := w.newScope(ctx, req.CorrelationID)
	r, abandoned, err := w.request(ctx, typ, payload, req.Command, req.CorrelationID, w.releaseSlot, sc)
	w.endScope(sc)
	if !abandoned {
		w.releaseSlot()
	}
	if err != nil {
		return nil, err
	}
	return &worker.Response{Result: r.Payload}, nil
}

// requestSize is what req's arguments, attachments and out-of-band
// buffers take in its encoding, about.
func requestSize(req *worker.Request) int {
	n := len(req.Args)
	for _, a := range req.Attachments {
		n += 5 + len(a)
	}
	for _, b := range req.Buffers {
		n += 5 + len(b)
	}
	return n
}

// callShared is Call for large arguments: once the slot is held (the
// region is then free), the request is encoded straight into the shared
// region (its buffers laid out for the handler to view in place), not into
// a buffer copied there. A request the region cannot hold goes through the
// socket.
func (w *Worker) callShared(ctx context.Context, req *worker.Request, deadline time.Time) (*worker.Response, error) {
	wrap := func(err error) error {
		return &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(ctx); err != nil {
		return nil, wrap(err)
	}
	typ := byte(frameCall)
	var payload []byte
	ref, ok, err := w.shm.encodeIn(python.RegionCallSize(req), func(mem []byte) (int, int, error) {
		return python.EncodeCallInRegion(mem, req, deadline)
	})
	if err != nil && !errors.As(err, new(*worker.NotSerializableError)) {
		// The host could not grow the region: the socket still works.
		w.log.Warn("shared memory unavailable, payload sent through the socket", "worker", w.id, "error", err)
		err = nil
	}
	switch {
	case err != nil:
	case ok && ref.off+ref.n > uint64(w.cfg.MaxFrame):
		err = &worker.NotSerializableError{What: "argument", Detail: fmt.Sprintf("request of %d bytes exceeds the frame limit of %d bytes", ref.off+ref.n, w.cfg.MaxFrame)}
	case ok:
		typ |= frameShared
		payload = ref.append(make([]byte, 0, regionRefSize))
	default:
		payload, err = python.EncodeCall(nil, req, deadline)
	}
	if err != nil {
		w.releaseSlot()
		return nil, wrap(err)
	}
	return w.roundTrip(ctx, req, typ, payload)
}

// request sends one request frame and reads its reply; the caller holds
// the slot. If ctx ends first it returns at once with abandoned set: the
// child is interrupted (SIGUSR1) and its reply awaited in the background for
// the grace period, after which onAbandon runs — or the group is killed.
// Host calls that arrive meanwhile are served (see serveHostCall); sc, if
// not nil, is begun under the request's id (the caller ends it).
func (w *Worker) request(ctx context.Context, typ byte, payload []byte, command, cid string, onAbandon func(), sc *hostScope) (r python.Reply, abandoned bool, err error) {
	if w.mux != nil {
		return w.muxRequest(ctx, w.nextID.Add(1), typ, payload, command, cid, onAbandon, sc, nil)
	}
	wrap := func(err error) error {
		return &worker.CallError{Command: command, CorrelationID: cid, Err: err}
	}
	id := w.nextID.Add(1)
	w.beginScope(sc, id)
	if n, err := w.write(ctx, typ, id, payload); err != nil {
		if ctx.Err() != nil && n == 0 {
			// The context ended before anything was sent: the worker is
			// as it was.
			return r, false, wrap(context.Cause(ctx))
		}
		if ctx.Err() != nil {
			// A partly written frame cannot be taken back.
			w.die(&worker.DeadError{WorkerID: w.id, Reason: "request write interrupted", Err: context.Cause(ctx)})
			return r, false, wrap(context.Cause(ctx))
		}
		var nse *worker.NotSerializableError
		if errors.As(err, &nse) {
			return r, false, wrap(err)
		}
		return r, false, wrap(w.connError(err))
	}
	// The read is bounded by the context's end alone (its deadline fires
	// through it too): a timeout then always means the context ended.
	var stop func() bool
	fired := make(chan struct{})
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() {
			w.conn.SetReadDeadline(longAgo)
			close(fired)
		})
	}
	f, err := w.readReply(id)
	if stop != nil && !stop() {
		<-fired // it ran: let it finish before the deadline is cleared
		w.conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() != nil {
			// What was read of the reply stays in w.rd: abandon
			// continues the frame where this read stopped.
			w.bg.Add(1)
			go w.abandon(id, command, cid, onAbandon)
			return r, true, wrap(context.Cause(ctx))
		}
		return r, false, wrap(err)
	}
	r, err = python.DecodeReply(f.payload, command, cid)
	if err != nil {
		w.die(&ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()})
		return r, false, wrap(w.Err())
	}
	w.emit(ctx, r.Logs)
	// A reply read as the context ended: the call ended with its context
	// (as it would have a moment later), whatever the handler returned.
	if ctx.Err() != nil {
		return r, false, wrap(context.Cause(ctx))
	}
	if r.Err != nil {
		if errors.Is(r.Err, python.ErrCancelled) {
			return r, false, python.CancelledError(ctx, r.Err, command, cid)
		}
		return r, false, r.Err
	}
	return r, false, nil
}

// readReply reads the reply to request id. Host calls that come first are
// served: from the first one on, a hostReader goroutine reads in this
// goroutine's place (the caller may not run a host function itself: it
// must return at its deadline) and hands over the reply. Anything else is
// a protocol violation that kills the worker.
func (w *Worker) readReply(id uint64) (frame, error) {
	// A fresh buffer per frame (w.rd has none): the payload becomes the
	// caller's result (or a host function's arguments).
	f, err := w.rd.next()
	if err == nil && isHostFrame(f.typ) {
		hr := &hostReading{id: id, res: make(chan replyResult, 1)}
		hr.start = func() { w.goHostReader(hr, nil) }
		first := f // a copy: f itself stays off the heap on the common path
		w.goHostReader(hr, &first)
		r := <-hr.res
		return r.f, r.err
	}
	return w.checkReply(id, f, err)
}

// checkReply checks what reading request id's reply returned.
func (w *Worker) checkReply(id uint64, f frame, err error) (frame, error) {
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return f, err
		}
		return f, w.connError(err)
	}
	if f.typ&^frameShared != frameReply || f.id != id {
		err := &ProtocolError{PID: w.pid, Err: fmt.Errorf("%w: got type %d id %d, want REPLY %d", ErrBadFrame, f.typ, f.id, id), Stderr: w.stderr.String()}
		w.die(err)
		return f, err
	}
	if f.typ&frameShared != 0 {
		payload, err := w.sharedPayload(f.payload)
		if err != nil {
			err := &ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()}
			w.die(err)
			return f, err
		}
		f.typ, f.payload = frameReply, payload
	}
	return f, nil
}

// sharedPayload copies out of the shared region the payload a frame refers
// to.
func (w *Worker) sharedPayload(p []byte) ([]byte, error) {
	if w.shm == nil {
		return nil, fmt.Errorf("%w: no shared region", ErrBadRegion)
	}
	ref, err := parseRegionRef(p)
	if err != nil {
		return nil, err
	}
	return w.shm.get(ref, w.cfg.MaxFrame)
}

// connError turns a failed read or write into the worker's death: a child
// that closed the connection has exited or is exiting.
func (w *Worker) connError(err error) error {
	if errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrBadFrame) || errors.Is(err, ErrTruncated) {
		perr := &ProtocolError{PID: w.pid, Err: err, Stderr: w.stderr.String()}
		w.die(perr)
		return perr
	}
	if dead := w.Err(); dead != nil {
		return dead
	}
	// The connection broke: the process is gone or going. Report how it ended.
	w.kill()
	if w.waitExit(2 * time.Second) {
		if dead := w.Err(); dead != nil {
			return dead
		}
		return worker.ErrClosed // it exited because Close stopped it
	}
	w.die(&ExitError{PID: w.pid, Stderr: w.stderr.String()})
	return w.Err()
}

// abandon interrupts a request whose caller left and waits the grace
// period for its reply.
func (w *Worker) abandon(id uint64, command, cid string, onAbandon func()) {
	defer w.bg.Done()
	// SIGUSR1 until the reply comes: the child ignores one that arrives
	// before it started the call, and heeds only the first in a call.
	settled := make(chan struct{})
	var signals sync.WaitGroup
	signals.Add(1)
	go func() {
		defer signals.Done()
		for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
			select {
			case <-w.exited:
				return // reaped: the pid may belong to another process now
			default:
			}
			w.signalProcess(unix.SIGUSR1)
			select {
			case <-settled:
				return
			case <-w.exited:
				return
			case <-time.After(delay):
			}
		}
	}()
	w.conn.SetReadDeadline(time.Now().Add(w.cfg.InterruptGrace))
	f, err := w.readReply(id)
	w.conn.SetReadDeadline(time.Time{})
	close(settled)
	signals.Wait() // none may reach the next call
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			w.die(&worker.DeadError{WorkerID: w.id,
				Reason: fmt.Sprintf("handler %q (correlation %s) did not stop within %v of its deadline", command, cid, w.cfg.InterruptGrace)})
		}
		onAbandon()
		return
	}
	if r, err := python.DecodeReply(f.payload, command, cid); err == nil {
		w.emit(context.Background(), r.Logs)
	}
	onAbandon()
}

// EndSession drops the Python-side state of a session on this worker.
func (w *Worker) EndSession(ctx context.Context, sessionID string) error {
	args, err := pymarshal.Marshal(pymarshal.Tuple{sessionID})
	if err != nil {
		return err
	}
	if err := w.acquire(ctx); err != nil {
		return err
	}
	_, abandoned, err := w.request(ctx, frameEndSession, args, "end_session", "", w.releaseSlot, nil)
	if !abandoned {
		w.releaseSlot()
	}
	return err
}

// Stream starts a streaming command. See [worker.Worker.Stream]. Closing
// the stream early closes the generator in the child (its finally blocks
// run) for up to InterruptGrace; then the child gets SIGUSR1
// (snakepit.Cancelled is raised in the generator's cleanup) and another
// InterruptGrace, after which its process group is killed. Neither Close
// nor breaking out of a loop over the stream waits longer than that.
func (w *Worker) Stream(ctx context.Context, req *worker.Request) (worker.Stream, error) {
	if w.mux != nil {
		return w.streamMux(ctx, req)
	}
	sctx, cancel := req.WithDeadline(ctx)
	deadline, _ := sctx.Deadline()
	args, err := python.EncodeCall(nil, req, deadline)
	if err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	if err := w.acquire(sctx); err != nil {
		cancel()
		return nil, &worker.CallError{Command: req.Command, CorrelationID: req.CorrelationID, Err: err}
	}
	cmd, cid := req.Command, req.CorrelationID
	// closeGen closes the generator, bounded by ctx and InterruptGrace.
	// If the close is abandoned, the slot is freed once its reply came
	// (or the worker died), not before: the child is still busy with it.
	closeGen := func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, w.cfg.InterruptGrace)
		defer cancel()
		_, abandoned, err := w.request(ctx, frameStreamClose, nil, cmd, cid, w.releaseSlot, nil)
		return abandoned, err
	}
	// After an interrupted open or next has ended in the child: close the
	// generator (if the worker still lives) and free the slot once the
	// child is done with it.
	closeAbandoned := func() {
		select {
		case <-w.done:
		default:
			if abandoned, _ := closeGen(context.Background()); abandoned {
				return // the close's own abandon frees the slot
			}
		}
		w.releaseSlot()
	}
	// The stream's host calls (during the open and each Next: they name
	// the open's request id) run with the stream's context, until it ends.
	sc := w.newScope(sctx, cid)
	_, abandoned, err := w.request(sctx, frameStreamOpen, args, cmd, cid, closeAbandoned, sc)
	if err != nil {
		w.endScope(sc)
		if !abandoned {
			w.releaseSlot()
		}
		cancel()
		return nil, err
	}
	var s *wstream.Stream
	s = wstream.New(sctx, cancel, wstream.Ops{
		Next: func(ctx context.Context) (python.Reply, bool, error) {
			return w.request(ctx, frameStreamNext, nil, cmd, cid, closeAbandoned, nil)
		},
		CloseGen: closeGen,
		Release:  w.releaseSlot,
		Forget: func() {
			w.endScope(sc)
			w.openStream.CompareAndSwap(s, nil)
		},
	})
	w.openStream.Store(s)
	if w.closing.Load() {
		// Close began while the stream was opening and may have missed
		// it (it looks for an open stream before it waits for the slot):
		// the stream ends now, so Close is not left waiting for a
		// caller who would hold it open.
		_ = s.Close()
		return nil, &worker.CallError{Command: cmd, CorrelationID: cid, Err: worker.ErrClosed}
	}
	return s, nil
}

// outputDrain is how long Close lets the output forwarders read what the
// reaped process (or a descendant that left its group) still has in the
// pipes before it closes them.
const outputDrain = 250 * time.Millisecond

// Close asks the child to run teardown() and exit, then escalates: SIGTERM
// to the process group, then SIGKILL, StopGrace apart — or at once when ctx
// ends. An open stream is closed first (bounded by ctx and InterruptGrace).
// It waits for a running call until ctx ends. Close returns within ctx plus
// a short bound: the kill is immediate and the reap follows it.
//
// Host functions still running (see [Config.Host]) have their contexts
// done; Close waits for them to return until ctx ends.
//
// Grandchildren in the process group die with the worker (the group is
// killed when the child exits, before it is reaped). A descendant that left
// the group (setsid, setpgid) is not killed by the host: the Python child
// kills the descendants it knows of as their subreaper when it exits, but
// one that escapes both (double fork before its parent exits, or a process
// that outlives the child's SIGKILL) survives. Close never waits for such
// a process: it stops reading the child's stdout and stderr, which the
// survivor may hold open, after a short drain.
func (w *Worker) Close(ctx context.Context) error {
	w.closeOnce.Do(func() { w.closeErr = w.close(ctx) })
	return w.closeErr
}

func (w *Worker) close(ctx context.Context) error {
	w.closing.Store(true)
	if s := w.openStream.Load(); s != nil {
		_ = s.CloseContext(ctx) // frees the slot (after a Next in progress)
	}
	if w.mux != nil {
		w.closeStreams(ctx)
	}
	// Every token of the slot: the calls in flight have ended.
	slotHeld := true
	for range cap(w.slot) {
		select {
		case w.slot <- struct{}{}:
			continue
		case <-ctx.Done():
		case <-w.exited:
		}
		slotHeld = false
		break
	}
	if slotHeld && w.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, w.cfg.StopGrace)
		if r, _, err := w.request(sctx, frameShutdown, nil, "teardown", "", func() {}, nil); err == nil && r.Err != nil {
			w.log.Warn("teardown raised", "worker", w.id, "error", r.Err)
		}
		cancel()
	}
	w.stop()
	if !w.waitExitCtx(ctx, w.cfg.StopGrace) {
		w.signalGroup(unix.SIGTERM)
		if !w.waitExitCtx(ctx, w.cfg.StopGrace) {
			w.kill()
			<-w.exited
		}
	}
	// The reaper killed what was left of the group before reaping.
	w.release()
	if w.mux != nil {
		w.waitReader()
	}
	w.reg.remove(w.pid)
	w.bg.Wait()
	w.closeHostCalls(ctx)
	w.drainOutputs(ctx)
	return nil
}

// drainOutputs lets the output forwarders finish, then closes the pipes'
// read ends: a process that left the worker's group may hold their write
// ends open for ever, and the forwarders must end regardless. Call it
// once the process was reaped.
func (w *Worker) drainOutputs(ctx context.Context) {
	done := make(chan struct{})
	go func() { w.outputs.Wait(); close(done) }()
	t := time.NewTimer(outputDrain)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	w.outR.Close()
	w.errR.Close()
	<-done
}

// MemoryBytes returns the resident memory of the worker process and its
// descendants (those still in its process tree), from /proc, plus the
// shared regions' sizes.
func (w *Worker) MemoryBytes() (int64, error) {
	select {
	case <-w.exited:
		return 0, w.unavailable()
	default:
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, fmt.Errorf("subproc: memory of %d: %w", w.pid, err)
	}
	self, err := fs.Proc(w.pid)
	if err != nil {
		return 0, fmt.Errorf("subproc: memory of %d: %w", w.pid, err)
	}
	statm, err := self.Statm()
	if err != nil {
		return 0, fmt.Errorf("subproc: memory of %d: %w", w.pid, err)
	}
	total := int64(statm.ResidentBytes())
	var size int64
	if w.shm != nil {
		size += int64(w.shm.size())
	}
	if w.hshm != nil {
		size += w.hshm.fileSize()
	}
	if size > 0 {
		// The shared regions count once, at their full size: the pages of
		// them the child touched are in its resident size already.
		if st, err := self.NewStatus(); err == nil {
			total -= min(int64(st.RssShmem), size)
		}
		total += size
	}
	seen := map[int]bool{w.pid: true}
	stack := children(fs, w.pid)
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		if p, err := fs.Proc(pid); err == nil {
			if sm, err := p.Statm(); err == nil {
				total += int64(sm.ResidentBytes())
			}
		}
		stack = append(stack, children(fs, pid)...)
	}
	return total, nil
}

// children lists pid's child processes from its threads' children files
// (a walk of the worker's own tree, not of every process on the host);
// where the kernel has no such files it falls back to scanning every
// process's parent.
func children(fs procfs.FS, pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil // gone meanwhile
	}
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/children")
		if errors.Is(err, os.ErrNotExist) {
			return scanChildren(fs, pid)
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// scanChildren finds pid's children by reading every process's parent.
func scanChildren(fs procfs.FS, pid int) []int {
	procs, err := fs.AllProcs()
	if err != nil {
		return nil
	}
	var out []int
	for _, p := range procs {
		if st, err := p.Stat(); err == nil && st.PPID == pid {
			out = append(out, p.PID)
		}
	}
	return out
}

// forward copies one output stream of the child to the logger, line by
// line, keeping a tail for error reports.
func (w *Worker) forward(r *os.File, name string, keep *tail, done chan struct{}) {
	defer w.outputs.Done()
	defer r.Close()
	if done != nil {
		defer close(done)
	}
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			text := strings.TrimRight(string(line), "\r\n")
			if keep != nil {
				keep.add(text)
			}
			lv := slog.LevelInfo
			if name == "stderr" {
				lv = slog.LevelWarn
			}
			w.log.Log(context.Background(), lv, text, "worker", w.id, "stream", name)
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// tail keeps the last lines written, up to a size.
type tail struct {
	mu    sync.Mutex // guards lines, size
	max   int
	lines []string
	size  int
}

func newTail(max int) *tail { return &tail{max: max} }

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(line) > t.max {
		line = line[len(line)-t.max:]
	}
	t.lines = append(t.lines, line)
	t.size += len(line) + 1
	for t.size > t.max && len(t.lines) > 1 {
		t.size -= len(t.lines[0]) + 1
		t.lines = t.lines[1:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
