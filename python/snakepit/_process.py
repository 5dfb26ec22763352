"""The process profile's worker: ``python -m snakepit._process MODULE``.

The host starts this with file descriptor 3 bound to its end of a
socketpair and file descriptor 4 the read end of a pipe whose write end
only the host holds (the lifeline). Frames on fd 3 are
``<u32 payload length><u8 type><u64 request id><payload>``, little-endian.
With ``--shm-fd`` (5) the host also passes a memfd, sealed against
shrinking: a payload of at least ``--shm-threshold`` bytes is written into
it at offset 0 (grown as needed, up to ``--shm-max``) and its frame's type
has bit 0x80 set, carrying ``<u64 generation><u64 offset><u64 length>``
instead of the payload (see _Shm).
The child sends HELLO once the adapter is imported and setup() has run (or
FAIL with the error), then answers requests one at a time with the same
dispatcher the thread profile uses. When the lifeline reaches end of file
(the host died, even by SIGKILL) the child kills its process group, so
whatever its handlers started dies with it; SIGTERM (also the host's
parent-death signal, and the host's second stop step) does the same. SIGUSR1
from the host interrupts the running call with snakepit.Cancelled.

What the worker starts does not escape it, and does not inherit its
plumbing:

* At start, every descriptor above 4 (whatever the host left open without
  close-on-exec) is closed, and fds 3 and 4 are marked close-on-exec, so
  programs the handlers run (os.system, subprocess) hold neither the
  host's socket nor the lifeline.
* On Linux the worker is a child subreaper (PR_SET_CHILD_SUBREAPER):
  descendants whose parent exits are re-parented to it, even those that
  left its process group with setsid(). However the worker ends (lifeline
  end of file, SIGTERM, SHUTDOWN, a failed start), it SIGKILLs every
  descendant it can find and reaps them. Only SIGKILL of the worker itself
  escapes this (its process group is then killed by the host). Adopted
  orphans that exit are reaped when the next frame arrives (children a
  live subprocess or multiprocessing Popen owns are left to it).
* A process forked from the worker (multiprocessing's fork context) gets
  the default SIGTERM, SIGUSR1 and SIGCHLD dispositions back, has
  /dev/null on fds 3 and 4, and runs no lifeline watcher: terminating it
  ends only it.
"""

import argparse
import collections
import errno
import faulthandler
import itertools
import marshal
import mmap
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

from . import _dispatch, _wire
from ._adapter import Cancelled, HostError

PROTOCOL = 3

(HELLO, FAIL, PING, PONG, CALL, STREAM_OPEN, STREAM_NEXT, STREAM_CLOSE,
 END_SESSION, SHUTDOWN, REPLY, HOST_CALL, HOST_REPLY) = range(1, 14)
# A host call's result for the host-call region (see _HostShm): the host
# asks for room (HOST_SPACE, the size as <u64>), the thread waiting for
# the result grants it (HOST_GRANT, a region reference, or empty: none).
HOST_SPACE = 17
HOST_GRANT = 18

# Set in the request id of every HOST_CALL: host calls are numbered in a
# range of their own, apart from the host's request ids.
HOST_CALL_ID_BIT = 1 << 63

_HEADER = struct.Struct("<IBQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
SOCK_FD = 3
LIFELINE_FD = 4

# Set to False by code that must outlive its host (tests of orphan cleanup).
LIFELINE_ENABLED = True

PR_SET_CHILD_SUBREAPER = 36

# The shared regions' descriptors (-1: none), set by main().
_shm_fd = -1
_host_shm_fd = -1

# The pid of the worker process, set by main(). Processes forked from the
# worker see another pid and leave the worker's duties alone.
_worker_pid = None


def _close_inherited_fds():
    """Close the descriptors above the lifeline that the host left
    inheritable, and keep fds 3 and 4 from reaching programs this worker
    runs. Descriptors this process opened itself before main() (site
    hooks, imports) are left alone: Python opens them non-inheritable
    (PEP 446), and closing one under its file object would let the next
    open() reuse the number behind its back."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        fds = range(LIFELINE_FD + 1, min(os.sysconf("SC_OPEN_MAX"), 1 << 16))
    for fd in fds:
        if fd <= LIFELINE_FD or fd == _shm_fd or fd == _host_shm_fd:
            continue
        try:
            if os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass  # not open (the directory listing's own descriptor)
    for fd in (SOCK_FD, LIFELINE_FD, _shm_fd, _host_shm_fd):
        if fd < 0:
            continue
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass


def _become_subreaper():
    """Ask Linux to re-parent orphaned descendants to this process, so that
    one which left the process group (setsid) can still be found. Best
    effort: False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:
        return False


def _live_descendants():
    """Pids of the live (not zombie) descendants of this process, from /proc."""
    kids = {}
    state = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2:].split()
            pid, ppid = int(name), int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(pid)
        state[pid] = fields[0]
    out, stack = [], [os.getpid()]
    while stack:
        for pid in kids.get(stack.pop(), ()):
            stack.append(pid)
            if state.get(pid) != b"Z":
                out.append(pid)
    return out


def _reap():
    """Collect every child that has exited; True if none is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        except OSError as e:
            return e.errno == errno.ECHILD
        if pid == 0:
            return False


# Set by the SIGCHLD handler: a child (perhaps an adopted orphan) exited.
_child_exited = False


def _on_sigchld(signum, frame):
    global _child_exited
    _child_exited = True


def _children():
    """Pids of this process's children, from /proc (each thread's children
    list where the kernel has one, else a scan of every process)."""
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid, "rb") as f:
                pids.extend(int(p) for p in f.read().split())
        return pids
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                data = f.read()
            if int(data[data.rindex(b")") + 2:].split()[1]) == me:
                pids.append(int(name))
        except (OSError, ValueError, IndexError):
            pass
    return pids


# Children the worker started itself through os.fork, os.forkpty or
# os.posix_spawn(p) (and what uses them: os.spawn*, pty, multiprocessing).
# Their exit status belongs to the code that started them: the reaper of
# adopted orphans leaves them alone.
_own_children = set()


def _track_own_children():
    """Wrap the process-creating functions of os to record the pids they
    return in the worker."""
    import functools

    def recording(fn, pid_of):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            r = fn(*args, **kwargs)
            pid = pid_of(r)
            if pid and os.getpid() == _worker_pid:
                _own_children.add(pid)
            return r
        return wrapper

    for name, pid_of in (("fork", lambda r: r), ("forkpty", lambda r: r[0]),
                         ("posix_spawn", lambda r: r), ("posix_spawnp", lambda r: r)):
        fn = getattr(os, name, None)
        if fn is not None:
            setattr(os, name, recording(fn, pid_of))


def _waited_for():
    """Pids that a live Popen object (subprocess, multiprocessing) will
    wait for."""
    import gc
    pids = set()
    for mod, name in (("subprocess", "Popen"), ("multiprocessing.popen_fork", "Popen")):
        m = sys.modules.get(mod)
        cls = getattr(m, name, None) if m is not None else None
        if cls is None:
            continue
        classes, stack = set(), [cls]
        while stack:
            c = stack.pop()
            if c not in classes:
                classes.add(c)
                stack.extend(c.__subclasses__())
        for c in classes:
            for o in gc.get_referrers(c):
                if type(o) is c:
                    pid = getattr(o, "pid", None)
                    if isinstance(pid, int):
                        pids.add(pid)
    return pids


def _reap_adopted():
    """Reap exited children that nothing in the worker will wait for.

    As a subreaper the worker inherits the orphans of its descendants
    (what "cmd &" in os.system leaves, daemons): without this they would
    stay zombies for the worker's life. Children the worker started itself
    (see _track_own_children) and those a live Popen object (subprocess,
    multiprocessing) owns are left to whoever waits for them."""
    global _child_exited
    _child_exited = False
    zombies = []
    children = _children()
    _own_children.intersection_update(children)  # the others were waited for
    for pid in children:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                data = f.read()
            if data[data.rindex(b")") + 2:data.rindex(b")") + 3] == b"Z":
                zombies.append(pid)
        except (OSError, ValueError):
            pass
    if not zombies:
        return
    owned = _waited_for() | _own_children
    for pid in zombies:
        if pid not in owned:
            try:
                os.waitpid(pid, os.WNOHANG)
            except OSError:
                pass


def _end_descendants(limit_s=2.0):
    """SIGKILL every descendant of the worker and reap its children, until
    none is left or limit_s has passed (a descendant may fork meanwhile)."""
    if _worker_pid is None or os.getpid() != _worker_pid:
        return
    deadline = time.monotonic() + limit_s
    while True:
        live = _live_descendants()
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        none_left = _reap()
        if (not live and none_left) or time.monotonic() > deadline:
            return
        time.sleep(0.002)  # the killed ones are exiting


# Signals whose worker handlers a forked process must not run.
_FORK_SIGNALS = frozenset((signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD))

# Signal mask of each thread that is forking, restored after the fork.
_fork_masks = {}


def _before_fork():
    """Block the worker's signals while forking: a SIGTERM that reaches the
    new process before its handlers are reset stays pending (instead of
    being caught by the worker's handler and dropped when Python reinitialises
    its signal state in the child) and takes effect once they are."""
    if os.getpid() == _worker_pid:
        _fork_masks[threading.get_ident()] = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_SIGNALS)


def _after_fork_in_parent():
    old = _fork_masks.pop(threading.get_ident(), None)
    if old is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _after_fork_in_child():
    """A process forked from the worker is not the worker: give it the
    default signal dispositions and take the host's descriptors away.
    Processes forked further down (by a child that installed handlers of
    its own, or reused fds 3 and 4) are left as they are."""
    old = _fork_masks.pop(threading.get_ident(), None)
    _fork_masks.clear()
    _own_children.clear()
    if old is None:
        return  # the parent was not the worker (see _before_fork)
    for sig in _FORK_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        null = -1
    if null >= 0:
        for fd in (SOCK_FD, LIFELINE_FD, _shm_fd, _host_shm_fd):
            if fd < 0:
                continue
            try:
                os.dup2(null, fd, inheritable=False)
            except OSError:
                pass
        os.close(null)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


# How much one read of the socket takes in: every frame that has arrived,
# up to this, in one system call. A larger frame's payload is read into a
# buffer of its own.
_READ_SIZE = 1 << 16

# The sequential pipelined mode reads what has arrived before a queued
# request starts, unless it read the socket within this many seconds (see
# _SeqQueue).
_RECHECK_S = 50e-6
_perf_counter = time.perf_counter


class _Conn:
    """The socket, read through a buffer: one recv takes in every frame
    that has arrived (up to _READ_SIZE bytes), and the frames are then
    handed out one at a time without further system calls. An exception
    in a recv (Cancelled from SIGUSR1) loses nothing: the bytes of a
    frame read in part stay in the buffer."""

    def __init__(self, fd, max_frame, spin_s=0.0, shm=None):
        self.sock = socket.socket(fileno=fd)
        self.max_frame = max_frame
        self.spin_s = spin_s
        self.shm = shm
        self.hshm = None  # the host-call region (_HostShm), if any
        self.buf = bytearray(_READ_SIZE)
        self.view = memoryview(self.buf)
        self.start = 0  # the first byte of buf not handed out
        self.end = 0  # the end of the bytes received
        self.full = True  # the last recv filled the space offered (more may wait)
        # fill asks it whether anything arrived: a recv that finds nothing
        # costs a BlockingIOError, about three times the system call.
        self.arrived = select.poll()
        self.arrived.register(self.sock.fileno(), select.POLLIN)

    def buffered(self):
        """Whether bytes were received that were not handed out yet."""
        return self.end > self.start

    def whole(self):
        """Whether a whole frame (or a header announcing a payload too
        large for the buffer, or above the limit) is buffered: read_now
        returns (or raises) without waiting."""
        start, end = self.start, self.end
        if end - start < _HEADER.size:
            return False
        size = _HEADER.unpack_from(self.buf, start)[0]
        return end - start >= _HEADER.size + size or size > self.max_frame

    def fill(self):
        """Take in what has arrived, without waiting: False at end of
        stream."""
        self._compact()
        if self.end == len(self.buf):
            # Full of the first part of a frame larger than the buffer:
            # read_now reads the rest into one of its own.
            self.full = True
            return True
        if not self.arrived.poll(0):
            self.full = False
            return True
        try:
            n = self.sock.recv_into(self.view[self.end:], 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self.full = False
            return True
        if n == 0:
            return False
        self.full = n == len(self.buf) - self.end
        self.end += n
        return True

    def _compact(self):
        """Make room at the end of the buffer for the next recv."""
        start, end = self.start, self.end
        if start == end:
            self.start = self.end = 0
        elif start and len(self.buf) - end < _HEADER.size + 4096:
            n = end - start
            self.buf[:n] = bytes(self.view[start:end])
            self.start, self.end = 0, n

    def _spin(self):
        """Poll for the next request for a moment before sleeping in recv:
        a caller making calls back to back then finds this process awake
        instead of paying an OS thread wake-up (tens of microseconds)."""
        if self.spin_s <= 0 or self.end > self.start:
            return
        deadline = time.perf_counter() + self.spin_s
        sock, flags = self.sock, socket.MSG_PEEK | socket.MSG_DONTWAIT
        while time.perf_counter() < deadline:
            try:
                if sock.recv(1, flags):
                    return
                return  # end of stream: let the blocking read see it
            except BlockingIOError:
                os.sched_yield()  # let a host thread that shares this CPU run

    def _read_exact(self, view):
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                return got
            got += n
        return got

    def read(self):
        """(type, id, payload), or None at end of stream. A payload in the
        shared region is a memoryview of it: release it before the next
        send."""
        self._spin()
        return self.read_now()

    def read_now(self):
        """read() without the spin."""
        hs = _HEADER.size
        while True:
            start, end = self.start, self.end
            if end - start >= hs:
                size, typ, rid = _HEADER.unpack_from(self.buf, start)
                if size > self.max_frame:
                    raise ValueError("frame of %d bytes exceeds the limit %d" % (size, self.max_frame))
                if end - start >= hs + size:
                    payload = bytes(self.view[start + hs:start + hs + size])
                    self.start = start + hs + size
                    break
                if hs + size > len(self.buf):
                    # Too large for the buffer: the rest of the payload is
                    # read into one of its own.
                    payload = bytearray(size)
                    got = end - start - hs
                    payload[:got] = self.view[start + hs:end]
                    self.start = self.end = 0
                    if self._read_exact(memoryview(payload)[got:]) < size - got:
                        raise EOFError("truncated frame")
                    payload = bytes(payload)
                    break
            self._compact()
            n = self.sock.recv_into(self.view[self.end:])
            self.full = n == len(self.buf) - self.end
            if n == 0:
                if self.end == self.start:
                    return None
                if self.end - self.start < hs:
                    raise EOFError("truncated frame header")
                raise EOFError("truncated frame")
            self.end += n
        if typ & SHARED:
            if typ & ~SHARED == HOST_REPLY and self.hshm is not None and size == _REF.size:
                return HOST_REPLY, rid, self.hshm.take(rid, payload)
            if self.shm is None or size != _REF.size or typ & ~SHARED == HOST_REPLY:
                raise ValueError("unexpected shared frame")
            return typ & ~SHARED, rid, self.shm.view(payload)
        if typ == HOST_REPLY or typ == HOST_SPACE:
            # The host has read the host call's arguments.
            if self.hshm is not None:
                self.hshm.release(rid)
            if typ == HOST_SPACE:
                # Filed as the reply: the thread waiting for it grants
                # the room.
                if self.hshm is None or size != _U64.size:
                    raise ValueError("unexpected HOST_SPACE")
                return HOST_REPLY, rid, _Space(_U64.unpack(payload)[0])
            if payload[:1] == _REPLY_BUFFERS:
                return typ, rid, _split_host_reply(payload, 0, size)
            return typ, rid, payload
        if self.shm is not None:
            # A request through the socket: the region is free for the
            # reply. (A host call's reply leaves the request in place.)
            self.shm.reserved, self.shm.spans = 0, ()
        return typ, rid, payload

    def take_plain(self, frames):
        """Append to frames the whole requests buffered (_PLAIN), as
        read_now would return them, up to the first frame that read_now
        must look at itself (a host call's reply, a frame in the shared
        region or above the limit), without reading. Only while no region
        is in use."""
        buf, view, hs, unpack, plain = self.buf, self.view, _HEADER.size, _HEADER.unpack_from, _PLAIN
        start, end = self.start, self.end
        while end - start >= hs:
            size, typ, rid = unpack(buf, start)
            stop = start + hs + size
            if stop > end or typ not in plain or size > self.max_frame:
                break
            frames.append((typ, rid, bytes(view[start + hs:stop])))
            start = stop
        self.start = start

    def peek(self):
        """The bytes received and not handed out, followed by those waiting
        in the socket (which stay there)."""
        data = bytes(self.view[self.start:self.end])
        try:
            return data + self.sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return data

    def send(self, typ, rid, payload, shared=True):
        """Send a frame; payload is bytes, or a tuple of parts to send one
        after the other (so a large part is never copied to be joined).
        shared=False keeps a large payload out of the shared region."""
        if payload.__class__ is tuple and len(payload) == 2 and self.shm is None:
            # The common reply (see _encode_reply): one system call.
            head, body = payload
            size = len(head) + len(body)
            if size < 1 << 16:
                self.sock.sendall(b"".join((_HEADER.pack(size, typ, rid), head, body)))
                return
        if payload.__class__ is _InPlace:
            self.sock.sendall(_HEADER.pack(len(payload.ref), typ | SHARED, rid) + payload.ref)
            return
        parts = payload if payload.__class__ is tuple else (payload,)
        size = sum(map(len, parts))
        if shared and self.shm is not None and size >= self.shm.threshold:
            ref = self.shm.put(parts)
            if ref is not None:
                typ, parts, size = typ | SHARED, (ref,), len(ref)
        if len(parts) == 1:
            self.sock.sendall(_HEADER.pack(size, typ, rid) + parts[0])
            return
        if size < 1 << 16:  # one system call
            self.sock.sendall(b"".join((_HEADER.pack(size, typ, rid),) + parts))
            return
        self.sock.sendall(_HEADER.pack(size, typ, rid))
        for p in parts:
            self.sock.sendall(p)


def _host_call_frame(token, name, payload, max_frame):
    """The HOST_CALL payload for a host call from this process, after the
    checks every transport makes (the arguments' types, a call in flight,
    not a process forked from the worker, the frame limit)."""
    bufs = None
    if type(payload) is tuple:
        # (kwargs with buffer markers, the buffers): see _adapter._in_parts.
        if (len(payload) != 2 or type(payload[0]) is not bytes or type(payload[1]) is not tuple
                or not all(type(b) in (bytes, bytearray) or (type(b) is memoryview and b.format == "B"
                                                              and b.ndim == 1) for b in payload[1])):
            raise TypeError("host call arguments must be bytes, or (bytes, a tuple of bytes-like buffers)")
        payload, bufs = payload
    elif type(payload) is not bytes:
        raise TypeError("host call arguments must be bytes, not %s" % type(payload).__name__)
    if type(name) is not str:
        raise TypeError("host function name must be str, not %s" % type(name).__name__)
    if type(token) is not int:
        raise HostError("snakepit: ctx.host used outside a call", "ended")
    if _worker_pid is not None and os.getpid() != _worker_pid:
        # A forked process has /dev/null for the socket, and may have been
        # forked while another thread held the locks.
        raise HostError("snakepit: ctx.host is not available in a process forked from the worker")
    # The tuple (token, name, payload) as marshal writes it, in parts sent
    # one after the other: the payload is not copied into a new bytes.
    # Version 2 writes no back-references, so the parts stand alone. With
    # buffers, the tuple (token, name, payload, their lengths as <u64s>)
    # and the buffers after it (subproc's decodeHostCall).
    if bufs is None:
        parts = (b")\x03" + marshal.dumps(token, 2) + marshal.dumps(name, 2) + b"s" + _U32.pack(len(payload)),
                 payload)
    else:
        lens = b"".join([_U64.pack(len(b)) for b in bufs])
        parts = (b")\x04" + marshal.dumps(token, 2) + marshal.dumps(name, 2) + b"s" + _U32.pack(len(payload))
                 + payload + b"s" + _U32.pack(len(lens)) + lens,) + bufs
    size = sum(map(len, parts))
    if size > max_frame:
        raise _dispatch._host_error("arguments", "")(
            "host function %r: arguments of %d bytes exceed the frame limit of %d bytes"
            % (name, size, max_frame))
    return parts


class _Link:
    """The connection as the main loop and the threads waiting in host
    calls share it.

    Sends are serialized by send_lock. Frames are read by one thread at a
    time: whichever needs one (the main loop its next request, a thread in
    a host call its reply) takes the reader's role when it is free and
    files what it reads: a HOST_REPLY for the thread waiting for it
    (dropped when none waits: its call ended), a request for the main
    loop. The others wait on cond.

    A host call goes out only while its call is live (its token in
    `live`): the main loop takes the token out, under send_lock, before
    it sends the call's REPLY. So the host reads every HOST_CALL before
    the reply of its call, and answers it; one made later raises HostError
    "ended" without reaching the host.

    SIGUSR1 raises Cancelled in the main thread, which may be in a host
    call: it never leaves a frame half read or half sent. It waits for a
    frame to begin with poll (Cancelled there consumes nothing); while it
    reads the rest of the frame, files it, or sends, main_busy is set and
    the signal handler leaves the Cancelled in cancel_pending, raised once
    the frame is whole.
    """

    def __init__(self, conn, max_frame):
        self.conn = conn
        self.max_frame = max_frame
        self.send_lock = threading.Lock()
        # cond's lock, taken directly where nothing waits (a Condition's
        # own __enter__ is a Python-level call on the path of every frame).
        self.mutex = threading.Lock()
        self.cond = threading.Condition(self.mutex)
        self.reader = None  # the ident of the thread reading a frame, or None
        self.waiting = 0  # threads waiting on cond
        self.replies = {}  # host call id -> its reply; None until it comes
        self.requests = collections.deque()  # requests read by other threads, for the main loop
        self.broken = None  # True at end of stream, or the exception reading raised
        self.live = set()  # tokens of the calls whose host calls may go out
        self.ids = itertools.count(1)
        self.main = threading.get_ident()
        self.main_busy = False
        self.cancel_pending = False
        self.poll = select.poll()
        self.poll.register(conn.sock.fileno(), select.POLLIN)
        self.on_cancel = None  # called after a CANCEL frame was filed in requests

    def send(self, typ, rid, payload):
        with self.send_lock:
            self.conn.send(typ, rid, payload)

    def finish(self, ended, typ, rid, payload):
        """Send a request's reply, the calls with tokens in ended no longer
        live (see the class doc)."""
        with self.send_lock:
            for token in ended:
                self.live.discard(token)
            self.conn.send(typ, rid, payload)

    def next_request(self):
        """The main loop's next frame (the host call replies read on the
        way are handed on), or None at end of stream."""
        cond = self.cond
        while True:
            with self.mutex:
                while not self.requests and self.reader is not None:
                    self.waiting += 1
                    try:
                        cond.wait()
                    finally:
                        self.waiting -= 1
                if self.requests:
                    return self.requests.popleft()
                if self.broken is True:
                    return None
                if self.broken is not None:
                    raise self.broken
                self.reader = self.main
            frame = self._read_one(True)
            if frame is not None:
                return frame

    def take_available(self, recv):
        """The main loop's frames that are there without waiting, in the
        order they came (host call replies among them are handed on): those
        buffered, and with recv first what has arrived in the socket. Empty
        when another thread reads (what it reads goes to requests) or the
        connection broke (next_request reports it)."""
        cond = self.cond
        with self.mutex:
            if self.reader is not None or self.broken is not None:
                return ()
            self.reader = self.main
        frames = []
        broken = None
        replies = False
        conn = self.conn
        try:
            try:
                if recv and not conn.fill():
                    broken = True
                if conn.shm is None:
                    conn.take_plain(frames)
                while conn.whole():
                    frames.append(conn.read_now())
                if broken is True and conn.buffered():
                    broken = EOFError("truncated frame")
            except Exception as e:
                broken = e
            for frame in frames:
                if frame[0] == HOST_REPLY:  # rare: a host call's reply
                    frames, replies = self._hand_on(frames), True
                    break
        finally:
            with self.mutex:
                self.reader = None
                if broken is not None:
                    self.broken = broken
                if self.waiting and (replies or broken is not None):
                    cond.notify_all()
        return frames

    def _hand_on(self, frames):
        """frames without the host call replies among them, which are
        handed to the threads waiting for them (dropped when none waits:
        its call ended)."""
        kept = []
        for frame in frames:
            if frame[0] != HOST_REPLY:
                kept.append(frame)
            elif frame[1] in self.replies:
                self.replies[frame[1]] = frame[2]
        return kept

    def host_call(self, token, name, payload):
        """Dispatcher.host_transport: run the host function name for the
        call token with payload (marshalled kwargs); the reply bytes."""
        data = _host_call_frame(token, name, payload, self.max_frame)
        hid = HOST_CALL_ID_BIT | next(self.ids)
        main = threading.get_ident() == self.main
        cond = self.cond
        try:
            with cond:
                self.replies[hid] = None  # before the send: any reader may take the reply
            self._send_host(main, _send_host_call, token, hid, data)
            granted = False
            while True:
                reply = self._await(hid, main)
                if reply.__class__ is not _Space:
                    return _granted(reply) if granted else reply
                with cond:
                    self.replies[hid] = None
                self._send_host(main, _send_grant, token, hid, reply.size)
                granted = True
        finally:
            with cond:
                self.replies.pop(hid, None)

    def _send_host(self, main, send, token, hid, data):
        """send (_send_host_call or _send_grant) with the send lock; in the
        main thread, a Cancelled waits until the frame is out."""
        if main:
            self.main_busy = True
        try:
            send(self.conn, self.send_lock, self.live, token, hid, data)
        finally:
            if main:
                self.main_busy = False
        if main:
            self._raise_pending()

    def _await(self, hid, main):
        cond = self.cond
        me = threading.get_ident()
        while True:
            try:
                with cond:
                    while True:
                        reply = self.replies.get(hid)
                        if reply is not None:
                            return reply
                        if self.broken is not None:
                            raise HostError("snakepit: the connection to the host is closed", "error")
                        if self.reader is None:
                            break
                        self.waiting += 1
                        try:
                            cond.wait()
                        finally:
                            self.waiting -= 1
                    self.reader = me
                self._read_one(False)
            finally:
                if self.reader == me:  # Cancelled before the read began
                    self._give_up_reading()
            if main:
                self._raise_pending()

    def _give_up_reading(self):
        with self.cond:
            self.reader = None
            if self.waiting:
                self.cond.notify_all()

    def _raise_pending(self):
        if self.cancel_pending:
            self.cancel_pending = False
            raise Cancelled("cancelled by the host")

    def _read_one(self, for_main_loop):
        """Read one frame as the reader and file it, giving up the role.
        Returns the frame if for_main_loop and it is a request."""
        me = threading.get_ident()
        guard = me == self.main and not for_main_loop  # Cancelled may come
        cond = self.cond
        frame = None
        cancelled = False
        try:
            if self.conn.spin_s > 0:
                self.conn._spin()
            if guard:
                if not self.conn.buffered():
                    self.poll.poll()  # a frame begins: nothing of it read yet
                self.main_busy = True
            try:
                frame = self.conn.read_now()
                broken = True if frame is None else None
            except Exception as e:
                frame, broken = None, e
            with self.mutex:
                self.reader = None
                if broken is not None:
                    self.broken = broken
                elif frame[0] == HOST_REPLY:
                    if frame[1] in self.replies:
                        self.replies[frame[1]] = frame[2]
                    frame = None
                elif not for_main_loop:
                    self.requests.append(frame)
                    if frame[0] == CANCEL and self.on_cancel is not None:
                        cancelled = True
                    frame = None
                if self.waiting:
                    cond.notify_all()
            if cancelled:
                self.on_cancel()
        finally:
            if guard:
                self.main_busy = False
            if self.reader == me:  # an exception before the frame began
                self._give_up_reading()
        return frame


# Or-ed into a frame's type: the payload lies in the shared region, and the
# frame carries <u64 generation><u64 offset><u64 length> instead.
SHARED = 0x80
_REF = struct.Struct("<QQQ")


class _Shm:
    """The child's side of the shared region (a memfd the host created,
    sealed against shrinking, inherited as fd SHM_FD). Requests and replies
    alternate. The host writes a request from offset 0: a call's buffers
    first (each at a multiple of 64), its marshalled arguments after them.
    The reply is written after the request (a result that is a view of an
    argument is then copied once), or from offset 0 when the request was
    not in the region or the reply does not fit after it. The side that
    writes a payload that does not fit grows the region (up to max_size)
    and bumps the generation; the reader maps it anew when a frame names a
    newer generation. Views of a mapping that is replaced keep it mapped
    until they go."""

    def __init__(self, fd, threshold, max_size):
        self.fd = fd
        self.threshold = threshold
        self.max_size = max_size
        self.gen = 0
        self.mm = None
        self.reserved = 0  # the current request's extent: the reply goes after it
        self.spans = ()    # the current request's buffers: (offset, length) pairs

    def _map(self, size):
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass  # views of it are alive: it is unmapped when they go
            self.mm = None
        if size > 0:
            self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def view(self, ref):
        """A memoryview of the request payload ref names (release it when
        done). The region up to its end is the request's until the reply."""
        gen, off, n = _REF.unpack(ref)
        size = len(self.mm) if self.mm is not None else 0
        if gen != self.gen or off > size or n > size - off:
            self._map(os.fstat(self.fd).st_size)
            self.gen = gen
            size = len(self.mm) if self.mm is not None else 0
        if off > size or n > size - off:
            raise ValueError("shared payload of %d bytes at %d outside the region of %d" % (n, off, size))
        self.reserved = (off + n + 63) & ~63
        self.spans = ()
        if n == 0:
            return memoryview(b"")
        with memoryview(self.mm) as whole:
            return whole[off:off + n]

    def buffers(self, spans):
        """Read-only views of the request's buffers, spans a flat tuple of
        (offset, length) pairs. Raises ValueError for spans that are not
        such pairs or lie outside the request."""
        if len(spans) % 2 or not all(type(x) is int for x in spans):
            raise ValueError("buffer spans %r are not (offset, length) pairs" % (spans[:8],))
        limit = min(self.reserved, len(self.mm) if self.mm is not None else 0)
        out = []
        with memoryview(self.mm if self.mm is not None else b"") as whole:
            for i in range(0, len(spans), 2):
                off, n = spans[i], spans[i + 1]
                if off < 0 or n < 0 or off > limit or n > limit - off:
                    for v in out:
                        v.release()
                    raise ValueError("buffer of %d bytes at %d outside the request's %d bytes of the region" % (n, off, limit))
                out.append(whole[off:off + n].toreadonly())
        self.spans = spans
        return out

    def echo(self, i):
        """The reference of a reply that is the request's buffer i itself,
        written in place: the reply's two headers go in the room the host
        leaves before each buffer. None when there is no such buffer."""
        if not 0 <= 2 * i < len(self.spans) or self.mm is None:
            return None
        off, n = self.spans[2 * i], self.spans[2 * i + 1]
        h = 2 * _BYTES_HEADER.size
        if off < h or off + n > len(self.mm):
            return None
        self.mm[off - h:off] = _BYTES_HEADER.pack(b"s", n + _BYTES_HEADER.size) + _BYTES_HEADER.pack(b"s", n)
        self.reserved, self.spans = 0, ()
        return _REF.pack(self.gen, off - h, n + h)

    def put(self, parts):
        """Write the concatenation of parts after the current request (or
        at offset 0) and return its reference, or None when it does not fit
        under the cap."""
        n = sum(len(p) for p in parts)
        off = self.reserved
        self.reserved = 0
        if off + n > self.max_size:
            # Not after the request: from offset 0, which a part may view.
            parts = tuple(bytes(p) if isinstance(p, memoryview) else p for p in parts)
            off = 0
        if n > self.max_size:
            return None
        size = len(self.mm) if self.mm is not None else 0
        if off + n > size:
            # The host may have grown the region without a request to tell
            # of it: map what is there when it is enough (it cannot shrink).
            new = os.fstat(self.fd).st_size
            if new < off + n:
                new = min(max(off + n, 2 * size), self.max_size)
                page = mmap.PAGESIZE
                new = min((new + page - 1) // page * page, self.max_size)
                try:
                    os.ftruncate(self.fd, new)
                except OSError:
                    return None
            self._map(new)
            self.gen += 1
        start = off
        for p in parts:
            self.mm[off:off + len(p)] = p
            off += len(p)
        return _REF.pack(self.gen, start, n)


# The first byte of a host call's reply with out-of-band buffers (subproc's
# hostReplyBuffers): <u32 count k><u64 reply length><k u64 lengths>, the
# reply proper (marshal, with buffer markers), the buffers.
_REPLY_BUFFERS = b"\x02"
_REPLY_HEAD = struct.Struct("<IQ")


def _split_host_reply(buf, off, n):
    """The host reply with out-of-band buffers in buf[off:off + n] (bytes, or
    the host-call region's mmap): (the reply proper, [the buffers]), each
    bytes of its own."""
    end = off + n
    pos = off + 1 + _REPLY_HEAD.size
    if pos > end:
        raise ValueError("truncated host reply")
    k, rlen = _REPLY_HEAD.unpack_from(buf, off + 1)
    if k > (end - pos) // 8:
        raise ValueError("host reply of %d bytes with %d buffers" % (n, k))
    lens = struct.unpack_from("<%dQ" % k, buf, pos)
    pos += 8 * k
    if rlen + sum(lens) != end - pos:
        raise ValueError("host reply of %d bytes: parts do not add up" % n)
    reply = buf[pos:pos + rlen]
    pos += rlen
    bufs = []
    for size in lens:
        bufs.append(buf[pos:pos + size])
        pos += size
    return reply, bufs


class _Space:
    """A HOST_SPACE filed as a host call's reply: its result of size bytes
    waits for room in the host-call region."""

    __slots__ = ("size",)

    def __init__(self, size):
        self.size = size


class _HostShm:
    """The child's side of the host-call region: a memfd of its own (see
    subproc/hostcall.go), which this side alone allocates and grows, from
    any thread. A host call's arguments of at least threshold bytes are
    written into a span of it, kept until the host answers the call (it
    has copied them out by then); a large result goes into a span granted
    for it, copied out and freed when its HOST_REPLY is read. References
    carry generation 0: the region only grows, and the host maps it anew
    when a reference lies beyond its mapping. A mapping replaced by a
    larger one stays mapped while a thread still copies through it."""

    def __init__(self, fd, threshold, max_size):
        self.fd = fd
        self.threshold = threshold
        self.max_size = max_size
        self.lock = threading.Lock()  # guards mm, args, grants
        self.mm = None
        self.args = {}    # host call id -> (offset, length) of its arguments
        self.grants = {}  # host call id -> (offset, length) granted for its result

    def _alloc(self, n):
        """The offset of n free bytes (lock held), the region grown if
        needed; None when they do not fit under the cap."""
        off = 0
        for start, length in sorted(list(self.args.values()) + list(self.grants.values())):
            if start - off >= n:
                break
            off = max(off, (start + length + 63) & ~63)
        if off + n > self.max_size:
            return None
        size = len(self.mm) if self.mm is not None else 0
        if off + n > size:
            page = mmap.PAGESIZE
            new = min(max(off + n, 2 * size), self.max_size)
            new = min((new + page - 1) // page * page, self.max_size)
            try:
                os.ftruncate(self.fd, new)
                self.mm = mmap.mmap(self.fd, new, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except (OSError, ValueError):
                return None
        return off

    def put_args(self, hid, parts):
        """Write a HOST_CALL payload (parts, concatenated) into a span kept
        for host call hid; its reference, or None when it does not fit."""
        n = sum(map(len, parts))
        with self.lock:
            off = self._alloc(n)
            if off is None:
                return None
            self.args[hid] = (off, n)
            mm = self.mm
        at = off
        for p in parts:
            mm[at:at + len(p)] = p
            at += len(p)
        return _REF.pack(0, off, n)

    def release(self, hid):
        """The host answered host call hid (not through the region): its
        arguments' span is free, and so is a span granted for its result,
        which the host then never wrote."""
        if hid in self.args or hid in self.grants:
            with self.lock:
                self.args.pop(hid, None)
                self.grants.pop(hid, None)

    def grant(self, hid, n):
        """A span of n bytes for host call hid's result: its reference, or
        b"" when there is no room (the result then comes through the
        socket)."""
        with self.lock:
            off = self._alloc(n)
            if off is None:
                return b""
            self.grants[hid] = (off, n)
        return _REF.pack(0, off, n)

    def drop(self, hid):
        """A grant that never went out is free again."""
        with self.lock:
            self.grants.pop(hid, None)

    def take(self, hid, ref):
        """Copy out host call hid's result from the span granted for it
        (ref must name that span), and free the span."""
        gen, off, n = _REF.unpack(ref)
        with self.lock:
            span = self.grants.get(hid)
            mm = self.mm
        if span != (off, n) or gen != 0:
            raise ValueError("a host call's result at %d (%d bytes), not where room was granted" % (off, n))
        try:
            if n and mm[off] == _REPLY_BUFFERS[0]:
                return _split_host_reply(mm, off, n)
            return mm[off:off + n]
        finally:
            with self.lock:
                self.grants.pop(hid, None)


def _send_host_call(conn, send_lock, live, token, hid, parts):
    """Send host call hid's HOST_CALL (payload parts) while its call is
    live; large arguments go through the host-call region."""
    hshm = conn.hshm
    if hshm is not None and sum(map(len, parts)) >= hshm.threshold:
        ref = hshm.put_args(hid, parts)
        if ref is not None:
            _send_live(conn, send_lock, live, token, HOST_CALL | SHARED, hid, ref,
                       "snakepit: ctx.host used after its call ended", hshm.release)
            return
    _send_live(conn, send_lock, live, token, HOST_CALL, hid, parts,
               "snakepit: ctx.host used after its call ended", None)


def _send_grant(conn, send_lock, live, token, hid, size):
    """Grant room for host call hid's result of size bytes (HOST_GRANT)
    while its call is live; after it ended the result is not wanted."""
    hshm = conn.hshm
    ref = hshm.grant(hid, size)
    _send_live(conn, send_lock, live, token, HOST_GRANT, hid, ref,
               "snakepit: the call ended before its host function's result came", hshm.drop if ref else None)


def _granted(reply):
    """The reply to a host call whose result was granted room: an error
    one says no result waited for it any more (its call ended)."""
    if reply.__class__ is bytes and reply[:1] == b"\x01":  # host.ReplyError
        raise HostError("snakepit: the call ended before its host function's result came", "ended")
    return reply


def _send_live(conn, send_lock, live, token, typ, hid, payload, ended, undo):
    """Send a frame of host call hid while its call (token) is live, else
    raise HostError ended (kind "ended"); undo(hid), if not None, runs
    when the frame did not go out."""
    sent = False
    try:
        with send_lock:
            if token not in live:
                raise HostError(ended, "ended")
            conn.send(typ, hid, payload, shared=False)
            sent = True
    finally:
        if not sent and undo is not None:
            undo(hid)


def _kill_group(signum=None, frame=None):
    """End this worker and everything it started (its descendants, then its
    process group)."""
    if _worker_pid is not None and os.getpid() != _worker_pid:
        # A forked process that kept the handler: behave as the default.
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return
    try:
        _end_descendants(0.5)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(70)


def _watch_lifeline():
    # Signals are for the main thread (it runs the handlers).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    try:
        while os.read(LIFELINE_FD, 1):
            pass
    except OSError:
        pass
    if LIFELINE_ENABLED:
        _kill_group()  # the host is gone


_BYTES_HEADER = struct.Struct("<cI")


class _InPlace:
    """A REPLY payload already in the shared region: its reference."""

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref


def _encode_reply(reply, max_frame, shm=None):
    """The REPLY payload for a dispatcher reply: bytes, or a tuple of parts.
    The common reply, a bytes object (the marshalled result), is marshal's
    header for it followed by the object itself, not a marshalled copy. A
    result that is one of the call's buffers in the region is replied with
    in place (_InPlace)."""
    if reply.__class__ is _wire.EchoedBuffer:
        ref = shm.echo(reply.index) if shm is not None else None
        if ref is not None:
            return _InPlace(ref)
        reply = reply.raw
    if reply.__class__ is bytes and len(reply) + _BYTES_HEADER.size <= max_frame:
        return (_BYTES_HEADER.pack(b"s", len(reply)), reply)
    if reply.__class__ is memoryview and reply.nbytes + 2 * _BYTES_HEADER.size <= max_frame:
        # A large bytes-like result (Dispatcher.raw_results): the reply is
        # the bytes object holding its marshalled form, written here as
        # two headers and the result's own memory, not copies of it.
        n = reply.nbytes
        return (_BYTES_HEADER.pack(b"s", n + _BYTES_HEADER.size), _BYTES_HEADER.pack(b"s", n), reply)
    if reply.__class__ is memoryview:
        reply = marshal.dumps(bytes(reply), 4)  # too large: refused below
    data = marshal.dumps(reply, 4)
    if len(data) > max_frame:
        err = _dispatch._error(
            _dispatch.K_NOT_SERIALIZABLE,
            message="result of %d bytes exceeds the frame limit of %d bytes" % (len(data), max_frame))
        data = marshal.dumps(err, 4)
    return data


def main(argv=None):
    p = argparse.ArgumentParser(prog="snakepit._process")
    p.add_argument("module")
    p.add_argument("--worker-id", default="")
    p.add_argument("--log-level", type=int, default=20)
    p.add_argument("--max-frame", type=int, default=128 << 20)
    p.add_argument("--spin-us", type=int, default=0)
    p.add_argument("--shm-fd", type=int, default=-1)
    p.add_argument("--shm-threshold", type=int, default=0)
    p.add_argument("--shm-max", type=int, default=0)
    p.add_argument("--host-shm-fd", type=int, default=-1)
    p.add_argument("--host-shm-threshold", type=int, default=0)
    p.add_argument("--host-shm-max", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--queue", type=int, default=0)
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.queue < 0:
        p.error("--concurrency must be at least 1 and --queue not negative")
    concurrent = args.concurrency > 1
    # Sequential pipelined mode (--concurrency 1 --queue N): the one-call
    # loop, with requests queued behind the running one (see _SeqQueue).
    seq = not concurrent and args.queue > 0

    global _worker_pid, _shm_fd, _host_shm_fd
    _worker_pid = os.getpid()
    _shm_fd = args.shm_fd
    _host_shm_fd = args.host_shm_fd
    _close_inherited_fds()
    if _become_subreaper():
        signal.signal(signal.SIGCHLD, _on_sigchld)
        # Restart system calls a child's exit interrupts: C extensions that
        # do not retry on EINTR never see it.
        signal.siginterrupt(signal.SIGCHLD, False)
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    _track_own_children()
    faulthandler.enable()  # a crash prints the Python stack on stderr
    signal.signal(signal.SIGTERM, _kill_group)
    threading.Thread(target=_watch_lifeline, name="snakepit-lifeline", daemon=True).start()
    shm = None
    if _shm_fd >= 0 and args.shm_threshold > 0:
        shm = _Shm(_shm_fd, args.shm_threshold, args.shm_max)
    conn = _Conn(SOCK_FD, args.max_frame, args.spin_us / 1e6, shm)
    if _host_shm_fd >= 0 and args.host_shm_threshold > 0:
        conn.hshm = _HostShm(_host_shm_fd, args.host_shm_threshold, args.host_shm_max)
    worker_id = args.worker_id or "proc-%d" % os.getpid()
    try:
        # print() in handlers becomes log records tagged with the call, as in
        # the thread profile. stderr stays the real file descriptor: the host
        # forwards it line by line at once, so what a crashing process writes
        # last (a traceback, faulthandler's report) is never lost.
        d = _dispatch.Dispatcher(args.module, worker_id=worker_id, capture_stdio=("stdout",),
                                 log_level=args.log_level, concurrency=args.concurrency)
        d.raw_results = True  # see _encode_reply
        d.echo_buffers = shm is not None
        # Large bytes in a host call's arguments are sent as they are, into
        # the host-call region or the socket, not copied into one payload.
        d.host_parts = conn.hshm.threshold if conn.hshm is not None else 1 << 16
    except BaseException as e:
        conn.send(FAIL, 0, marshal.dumps(_dispatch._error(_dispatch.K_PYTHON, e), 4))
        return 1
    reply = d.setup()
    if isinstance(reply, tuple) and reply[0] == _dispatch.ERROR:
        conn.send(FAIL, 0, marshal.dumps(reply, 4))
        return 1

    if concurrent:
        return _serve_concurrent(conn, d, args, shm)
    if seq:
        # Requests and replies overlap in time: the region is not used.
        conn.shm = shm = None

    # [in a call, cancelled already]: the host repeats SIGUSR1 until the
    # call ends (one sent before the call started is ignored); the handler
    # gets Cancelled once.
    in_call = [False, False]

    link = _Link(conn, args.max_frame)
    d.host_transport = link.host_call
    queue = _SeqQueue(link) if seq else None
    main_ident = threading.get_ident()

    def hold_interrupt():
        # A handler that saw its cancellation stops by itself: on_cancel
        # then raises nothing (the handler runs in the main thread).
        return in_call[0] and threading.get_ident() == main_ident

    d.hold_interrupt = hold_interrupt

    @_not_nested
    def on_cancel(signum, frame):
        if os.getpid() != _worker_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if in_call[0] and not in_call[1]:
            if queue is not None:
                queue.service()
                if not queue.cancelled(queue.current):
                    return  # for a withdraw, or a request that ended
            in_call[1] = True
            d.cancel()
            ctx = d._call
            if ctx is not None and ctx._held:
                return  # the handler saw its cancellation already
            if link.main_busy:  # inside a frame: raised once it is whole
                link.cancel_pending = True
                return
            raise Cancelled("cancelled by the host")

    signal.signal(signal.SIGUSR1, on_cancel)
    hello = {
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "commands": d.info()["commands"],
        "logs": d.drain_logs(),
        "shm": shm is not None,
        "host_shm": conn.hshm is not None,
    }
    link.send(HELLO, 0, marshal.dumps(hello, 4))

    def call(payload):
        try:
            args = _loads(payload, shm)
        except _BadRegion as e:
            return _dispatch._error(_dispatch.K_PROTOCOL, message=str(e))
        return d.call(*args)

    def stream_open(payload):
        try:
            args = _loads(payload, shm, keep=True)
        except _BadRegion as e:
            return _dispatch._error(_dispatch.K_PROTOCOL, message=str(e))
        return d.stream_open(*args)

    handlers = {
        CALL: call,
        STREAM_OPEN: stream_open,
        STREAM_NEXT: lambda payload: d.stream_next(),
        STREAM_CLOSE: lambda payload: d.stream_close(),
        END_SESSION: lambda payload: d.end_session(*_loads(payload, shm)),
    }
    # The token of the open stream (its STREAM_OPEN's request id): its
    # host calls may go out until it ends.
    stream_token = None
    while True:
        frame = link.next_request() if queue is None else queue.next()
        if frame is None:
            # The host closed the connection without SHUTDOWN: it is gone.
            # Do what the lifeline would (it may not have run yet).
            if LIFELINE_ENABLED:
                _kill_group()
            return 0
        typ, rid, payload = frame
        if typ not in (CALL, STREAM_OPEN, END_SESSION) and isinstance(payload, memoryview):
            payload.release()  # not read: free the region for the reply
        if _child_exited:
            _reap_adopted()
        if typ == PING:
            if payload:  # the names of the host functions
                names = marshal.loads(payload)
                if type(names) is not list or not all(type(n) is str for n in names):
                    sys.stderr.write("snakepit: malformed host function names from the host\n")
                    return 2
                d.host_names = tuple(names)
            link.send(PONG, rid, b"")
            continue
        if typ == SHUTDOWN:
            reply = _encode_reply(d.teardown(), args.max_frame)
            link.finish(() if stream_token is None else (stream_token,), REPLY, rid, reply)
            return 0
        handler = handlers.get(typ)
        if handler is None:
            sys.stderr.write("snakepit: unexpected frame type %d from the host\n" % typ)
            return 2
        if typ == CALL or typ == STREAM_OPEN:
            d.host_token = rid
            link.live.add(rid)
        if queue is not None:
            queue.current = rid
        stream = d._stream
        try:
            in_call[1] = False
            link.cancel_pending = False
            in_call[0] = True
            reply = handler(payload)
        except Cancelled as e:
            reply = _dispatch._error(_dispatch.K_CANCELLED, e)
        finally:
            in_call[0] = False
        ended = (rid,) if typ == CALL else ()
        if d._stream is not stream:  # a stream opened, or the open one ended
            if stream_token is not None:
                ended += (stream_token,)
            stream_token = rid if d._stream is not None else None
        if typ == STREAM_OPEN and stream_token != rid:
            ended += (rid,)
        link.finish(ended, REPLY, rid, _encode_reply(reply, args.max_frame, shm))
        reply = None  # perhaps a view of the region: not kept to the next call


class _SeqQueue:
    """The requests of the sequential pipelined mode (--concurrency 1
    --queue N), in the order the host sent them.

    The host may send requests while one runs; they wait in the socket's
    buffer, the connection's (one recv takes in all that arrived) or
    link.requests (when a thread waiting in a host call read them), and are
    read without sleeping. Before the next request starts, every frame
    already available is read (a poll that does not wait, and one recv if
    something arrived), unless the socket was read within _RECHECK_S: a
    CANCEL for a request still queued removes it (NOT_STARTED: it never
    runs); a withdraw (CANCEL b"w") of one that started or ended answers
    STARTED; a CANCEL of one that ended is moot. So a request whose CANCEL
    reached this process more than _RECHECK_S before it would start never
    starts; under load, requests queued behind calls that take less than
    that start one after the other without a system call between them. A
    read counts only when it took in all there was (it did not fill the
    buffer) with the reader's role held, and whole frames already buffered
    are always filed first.

    While a request runs, the host follows a CANCEL or withdraw with
    SIGUSR1, repeated until it has its answer. The signal handler first
    reads the whole frames already available (service) when that is safe
    at once (no frame half read, no lock held), answering withdraws; then
    it interrupts the running request only if a CANCEL for it was seen
    (cancelled), so a signal meant for the request before, or for a
    withdraw, never interrupts this one. A thread waiting in a host call
    answers the CANCELs it reads (absorb, through link.on_cancel)."""

    def __init__(self, link):
        self.link = link
        self.lock = threading.Lock()  # guards pending, cancels
        self.pending = collections.deque()  # requests read, not started
        self.cancels = set()  # ids CANCELled (not withdrawn) while not queued: the running one's, or moot
        self.current = None  # the id of the request running (or last run)
        self.read_at = 0.0  # when the main loop last took in all that had arrived (perf_counter)
        link.on_cancel = self.absorb

    def next(self):
        """The next request to start, or None at end of stream."""
        link = self.link
        conn = link.conn
        send = link.send
        lock = self.lock
        requests = link.requests
        pending = self.pending
        with lock:
            if self.cancels:
                self.cancels.clear()  # the request they named has ended
            if requests:
                self._absorb(send)
            if (pending and link.reader is None and not conn.whole()
                    and _perf_counter() - self.read_at < _RECHECK_S):
                return pending.popleft()
            # conn.whole() is a hint (another thread may be reading):
            # take_available decides with the reader's role held.
            if pending or conn.whole():
                t = _perf_counter()
                conn.full = True
                # Before one starts: every frame already there (_Conn.fill,
                # which does not wait).
                for frame in link.take_available(True):
                    if frame[0] != CANCEL:
                        pending.append(frame)  # _file, inlined
                    else:
                        self._file(frame, send)
                if requests:
                    self._absorb(send)
                if not conn.full:
                    self.read_at = t
            if pending:
                return pending.popleft()
        while True:
            t = _perf_counter()
            conn.full = True
            frame = link.next_request()
            if frame is None:
                return None
            if not conn.full:
                self.read_at = t
            with lock:
                if frame[0] != CANCEL and not (pending or requests or conn.whole()):
                    return frame  # it came alone
                self._file(frame, send)
                # That read took in all that had arrived: what it left in
                # the buffer is filed without another recv.
                if conn.whole():
                    for frame in link.take_available(False):
                        self._file(frame, send)
                if requests:
                    self._absorb(send)
                if pending:
                    return pending.popleft()

    def absorb(self):
        """File the frames other threads read (link.requests)."""
        with self.lock:
            self._absorb(self.link.send)

    def _absorb(self, send):
        requests = self.link.requests
        while requests:
            self._file(requests.popleft(), send)

    def _file(self, frame, send):
        typ, rid, payload = frame
        if typ != CANCEL:
            self.pending.append(frame)
            return
        for i, f in enumerate(self.pending):
            if f[1] == rid:
                del self.pending[i]
                send(NOT_STARTED, rid, b"")
                return
        if payload == b"w":
            send(STARTED, rid, b"")
        else:
            self.cancels.add(rid)

    def service(self):
        """From the SIGUSR1 handler, in the main thread, during a request:
        read the whole frames available and file them, if no frame is
        half read and no lock it needs is held (else the host signals
        again)."""
        link = self.link
        if link.main_busy or not self.lock.acquire(False):
            return
        try:
            if not link.cond.acquire(False):
                return
            try:
                if link.reader is not None or not link.send_lock.acquire(False):
                    return
                try:
                    frames = self._take_whole()
                    send = link.conn.send
                    self._absorb(send)
                    for frame in frames:
                        if frame[0] == HOST_REPLY:
                            if frame[1] in link.replies:
                                link.replies[frame[1]] = frame[2]
                        else:
                            self._file(frame, send)
                    if frames and link.waiting:
                        link.cond.notify_all()
                finally:
                    link.send_lock.release()
            finally:
                link.cond.release()
        finally:
            self.lock.release()

    def _take_whole(self):
        """Take in what has arrived and return the whole frames (not a
        shared-region or oversized one: the main loop's read reports
        those)."""
        conn = self.link.conn
        try:
            conn.fill()
        except OSError:
            return []
        frames = []
        while conn.whole():
            size, typ, _ = _HEADER.unpack_from(conn.buf, conn.start)
            if typ & SHARED or size > conn.max_frame:
                break
            frames.append(conn.read_now())
        return frames

    def cancelled(self, rid):
        """Whether a CANCEL (not a withdraw) for request rid was read, or is
        waiting in the connection's buffer or the socket (peeked at only
        while no frame is being read)."""
        if rid in self.cancels:
            return True
        link = self.link
        try:
            seen = list(link.requests)
        except RuntimeError:
            seen = ()
        for typ, r, payload in seen:
            if typ == CANCEL and r == rid and payload != b"w":
                return True
        if link.main_busy or link.reader not in (None, link.main):
            return False  # a frame is being read: the host signals again
        data = link.conn.peek()
        off, hs = 0, _HEADER.size
        while off + hs <= len(data):
            size, typ, r = _HEADER.unpack_from(data, off)
            if typ == CANCEL and r == rid and size == 0:
                return True
            off += hs + size
        return False


# Frames of the concurrent mode (--concurrency > 1 or --queue > 0).
CANCEL = 14       # host -> child: cancel request id (payload b"w": withdraw it only if it has not started)
NOT_STARTED = 15  # child -> host: request id was removed before it started; it never runs
STARTED = 16      # child -> host: a withdrawn request id had started (or ended) already

# The frames the host sends that read_now returns as they came (without a
# region): _Conn.take_plain takes these, and leaves any other to read_now.
_PLAIN = frozenset((PING, CALL, STREAM_OPEN, STREAM_NEXT, STREAM_CLOSE, END_SESSION, SHUTDOWN, CANCEL))

_STREAM_ID = struct.Struct("<Q")


class _Interrupted(Cancelled):
    """The Cancelled the concurrent mode raises in a handler thread."""


def _set_async_exc(tid, exc):
    """Raise exc in thread tid at its next bytecode (None clears a pending
    one). True when exactly one thread was reached."""
    import ctypes
    set_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    n = set_exc(ctypes.c_ulong(tid), ctypes.py_object(exc) if exc is not None else None)
    if n > 1:  # cannot happen for a live thread id; undo it
        set_exc(ctypes.c_ulong(tid), None)
    return n == 1


class _Mux:
    """The child's concurrent mode: the main thread reads every frame; a
    pool of handler threads runs the requests (CALL, STREAM_*, END_SESSION)
    through the dispatcher, each naming its call by its request id (a
    stream's operations by the STREAM_OPEN's id, the payload of
    STREAM_NEXT and STREAM_CLOSE), and sends its own reply (frame writes
    serialized by send_lock). Requests beyond the handler threads wait in
    a queue (the host sends at most concurrency + queue depth). CANCEL
    removes a queued request (NOT_STARTED: it never runs) or cancels the
    running call: an async handler's task is cancelled, a plain handler's
    thread gets snakepit.Cancelled at its next bytecode
    (PyThreadState_SetAsyncExc; a handler blocked in C code sees it when
    that returns) — but only in the handler's own code, never in
    snakepit's (see open and close). Host calls go out from the handler
    threads; the main thread hands each HOST_REPLY to the thread waiting
    for it.

    The interrupt gate: a Cancelled raised at an arbitrary bytecode of
    snakepit's code could leave a frame half sent, a lock taken for good or
    a span of the host-call region freed while the host reads it. So each
    running request has a token, in its thread's hands while snakepit's
    code runs and put out (open) only while the handler's own code runs
    (the dispatcher calls open before it and close after it; a host call
    closes the gate for its duration). The main thread interrupts a thread
    only when it takes the token (an atomic dict.pop under the GIL);
    otherwise it records the request, and the thread raises Cancelled
    itself when it next opens the gate. A thread that finds the token
    taken waits for the interrupt on its way, clears it if it is still
    pending, and raises Cancelled itself: one Cancelled, always at the
    gate or in the handler's code. A handler that saw ctx.cancelled()
    return True keeps the token for good (hold_interrupt): it stops by
    itself, and no Cancelled cuts its clean-up short."""

    def __init__(self, conn, d, n, depth, max_frame):
        self.conn = conn
        self.d = d
        self.n = n
        self.depth = depth
        self.max_frame = max_frame
        self.send_lock = threading.Lock()
        # Guards the fields below; only idle handler threads wait on it
        # (notify wakes one of them for each queued request).
        self.cond = threading.Condition(threading.Lock())
        self.queue = collections.deque()  # requests not started, in order
        self.queued = {}                  # their ids -> (typ, rid, payload)
        # request id -> [thread ident, call_id, interrupt requested, token
        # box (the token is box["t"]: see the class doc), interrupt sent,
        # the token in the thread's hands, the handler saw its cancellation
        # (the token stays in its hands: see hold_interrupt)]
        self.running = {}
        self._tls = threading.local()     # .entry: the thread's running request
        d.user_gate = self  # interrupts land only in handlers' own code
        d.hold_interrupt = self.hold_interrupt
        self.replies = {}                 # host call id -> [lock held until the reply, reply]
        self.live = set()                 # tokens of the calls whose host calls may go out
        self.ids = itertools.count(1)
        self.stopping = False
        self.threads = []

    def send(self, typ, rid, payload):
        with self.send_lock:
            self.conn.send(typ, rid, payload)

    def finish(self, ended, typ, rid, payload):
        with self.send_lock:
            for token in ended:
                self.live.discard(token)
            self.conn.send(typ, rid, payload)

    def open(self):
        """The dispatcher's user gate: the handler's own code runs from now
        on; raises Cancelled when an interrupt was requested meanwhile."""
        entry = getattr(self._tls, "entry", None)
        if entry is None:
            return  # not a handler thread: never interrupted
        if entry[6]:
            return  # the handler stops by itself: no interrupt
        box = entry[3]
        entry[5] = False
        box["t"] = True
        if entry[2]:
            if box.pop("t", None) is not None:
                entry[5] = True
                raise _Interrupted("cancelled by the host")
            self._interrupted(entry)

    def close(self):
        """The dispatcher's user gate: snakepit's code runs from now on."""
        entry = getattr(self._tls, "entry", None)
        if entry is None or entry[5]:
            return  # the token is in this thread's hands already
        if entry[3].pop("t", None) is not None:
            entry[5] = True
            return
        self._interrupted(entry)

    def hold_interrupt(self):
        """Dispatcher.hold_interrupt: the handler running in this thread
        saw its cancellation and stops by itself. It keeps the token for
        good, so the main thread interrupts it no more. If the main thread
        took the token already, its interrupt is on its way: that is
        raised here (it may land while this waits), once, as in
        _interrupted — the handler's cancelled() has not returned True."""
        entry = getattr(self._tls, "entry", None)
        if entry is None:
            return False  # not a handler thread
        entry[6] = True
        if not entry[5]:
            entry[5] = True
            if entry[3].pop("t", None) is None:
                # The main thread sets the interrupt, then entry[4], under
                # cond, a few statements after it took the token.
                deadline = time.monotonic() + 10
                while not entry[4] and time.monotonic() < deadline:
                    time.sleep(0.0001)
                _set_async_exc(threading.get_ident(), None)
                raise _Interrupted("cancelled by the host")
        return True

    def _interrupted(self, entry):
        """The main thread took the token: wait until it has set the
        interrupt, clear it if it is still pending, and raise it here. The
        token is spent: the gate stays closed."""
        entry[5] = True
        for _ in range(10000):  # a few statements of the main thread's
            if entry[4]:
                break
            time.sleep(0.0001)
        _set_async_exc(threading.get_ident(), None)
        raise _Interrupted("cancelled by the host")

    def host_call(self, token, name, payload):
        """Dispatcher.host_transport (see _Link.host_call). The user gate
        is closed while it runs: an interrupt waits for its end."""
        self.close()
        try:
            return self._host_call(token, name, payload)
        finally:
            self.open()

    def _host_call(self, token, name, payload):
        data = _host_call_frame(token, name, payload, self.max_frame)
        hid = HOST_CALL_ID_BIT | next(self.ids)
        send = _send_host_call
        granted = False
        try:
            while True:
                waiter = [threading.Lock(), None]
                waiter[0].acquire()
                with self.cond:
                    if self.stopping:
                        raise HostError("snakepit: the connection to the host is closed", "error")
                    self.replies[hid] = waiter
                send(self.conn, self.send_lock, self.live, token, hid, data)
                waiter[0].acquire()  # released by the main thread with the reply
                reply = waiter[1]
                if reply is None:
                    raise HostError("snakepit: the connection to the host is closed", "error")
                if reply.__class__ is not _Space:
                    return _granted(reply) if granted else reply
                send, data, granted = _send_grant, reply.size, True
        finally:
            with self.cond:
                self.replies.pop(hid, None)

    def run(self, on_frame):
        """Serve until SHUTDOWN or end of stream; the exit status.
        on_frame(typ, rid, payload) handles PING; returns None or a status."""
        for i in range(self.n):
            t = threading.Thread(target=self._serve, name="snakepit-call-%d" % i, daemon=True)
            t.start()
            self.threads.append(t)
        try:
            return self._read_loop(on_frame)
        finally:
            with self.cond:  # idle handler threads end (busy ones when done)
                self.stopping = True
                self.cond.notify_all()

    def _read_loop(self, on_frame):
        conn = self.conn
        while True:
            # No spin (see _Conn._spin): this thread would hold the GIL the
            # handler threads need.
            frame = conn.read_now()
            if frame is None:
                # The host is gone: handlers still running are not waited for.
                self._stop(join=False)
                if LIFELINE_ENABLED:
                    _kill_group()
                return 0
            typ, rid, payload = frame
            if _child_exited:
                _reap_adopted()
            if typ == HOST_REPLY:
                with self.cond:
                    waiter = self.replies.pop(rid, None)
                if waiter is not None:  # none: its call ended
                    waiter[1] = payload
                    waiter[0].release()
            elif typ in (CALL, STREAM_OPEN, STREAM_NEXT, STREAM_CLOSE, END_SESSION):
                item = (typ, rid, payload)
                with self.cond:
                    if len(self.queued) + len(self.running) >= self.n + self.depth:
                        sys.stderr.write("snakepit: more requests in flight than concurrency %d + queue %d\n"
                                         % (self.n, self.depth))
                        return 2
                    self.queue.append(item)
                    self.queued[rid] = item
                    self.cond.notify()
            elif typ == CANCEL:
                self._cancel(rid, payload == b"w")
            elif typ == SHUTDOWN:
                self._stop()
                reply = _encode_reply(self.d.teardown(), self.max_frame)
                self.finish(tuple(self.live), REPLY, rid, reply)
                return 0
            else:
                status = on_frame(typ, rid, payload)
                if status is not None:
                    return status

    def _stop(self, join=True):
        """Stop the handler threads once they are idle (join: wait for
        them); wake host calls."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            waiters = list(self.replies.values())
            self.replies.clear()
        for w in waiters:
            w[0].release()
        if join:
            for t in self.threads:
                t.join()

    def _cancel(self, rid, withdraw):
        d = self.d
        with self.cond:
            item = self.queued.pop(rid, None)
            if item is not None:
                self.queue.remove(item)
            elif not withdraw:
                entry = self.running.get(rid)
                if entry is not None and not d.cancel(entry[1]) and not entry[2]:
                    entry[2] = True
                    if entry[3].pop("t", None) is not None:
                        # In the handler's own code (see the class doc).
                        _set_async_exc(entry[0], _Interrupted)
                        entry[4] = True
        if item is not None:
            self.send(NOT_STARTED, rid, b"")
        elif withdraw:
            self.send(STARTED, rid, b"")

    def _serve(self):
        me = threading.get_ident()
        d, cond = self.d, self.cond
        while True:
            item = entry = reply = None
            try:
                try:
                    with cond:
                        while not self.queue:
                            if self.stopping:
                                return
                            cond.wait()
                        item = self.queue.popleft()
                        typ, rid, payload = item
                        del self.queued[rid]
                        call_id = rid
                        if typ == STREAM_NEXT or typ == STREAM_CLOSE:
                            call_id = _STREAM_ID.unpack(payload)[0] if len(payload) == 8 else None
                        elif typ != END_SESSION:
                            self.live.add(rid)
                        entry = [me, call_id, False, {}, False, True, False]
                        self.running[rid] = entry
                        self._tls.entry = entry
                    reply = self._handle(typ, call_id, payload)
                finally:
                    if entry is not None:
                        self._done(rid, entry)
            except Cancelled as e:
                if reply is None:
                    reply = _dispatch._error(_dispatch.K_CANCELLED, e)
            if item is None:
                continue
            ended = ()
            if typ == CALL:
                ended = (rid,)
            elif typ == STREAM_OPEN:
                if rid not in d._streams:
                    ended = (rid,)
            elif call_id is not None and call_id not in d._streams:
                ended = (call_id,)
            try:
                self.finish(ended, REPLY, rid, _encode_reply(reply, self.max_frame))
            except OSError:
                return  # the host is gone: the main loop ends the worker
            reply = payload = item = None

    def _done(self, rid, entry):
        """Take rid out of the running calls. The token is in this thread's
        hands (the gate is closed): no interrupt can come any more."""
        self._tls.entry = None
        with self.cond:
            if self.running.get(rid) is entry:
                del self.running[rid]

    def _handle(self, typ, call_id, payload):
        d = self.d
        if call_id is None:
            return _dispatch._error(_dispatch.K_PROTOCOL, message="malformed stream id")
        if typ == CALL:
            return d.call(*_with_id(_loads(payload, None), call_id))
        if typ == STREAM_OPEN:
            return d.stream_open(*_with_id(_loads(payload, None), call_id))
        if typ == STREAM_NEXT:
            return d.stream_next(call_id)
        if typ == STREAM_CLOSE:
            return d.stream_close(call_id)
        return d.end_session(*_loads(payload, None))


def _serve_concurrent(conn, d, args, shm):
    """main() from HELLO on, in the concurrent mode (see _Mux)."""
    mux = _Mux(conn, d, args.concurrency, args.queue, args.max_frame)
    # The host cancels with CANCEL frames here, never SIGUSR1.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    d.host_transport = mux.host_call
    hello = {
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "commands": d.info()["commands"],
        "logs": d.drain_logs(),
        "shm": False,  # requests overlap: the region is not used
        "host_shm": conn.hshm is not None,
        "concurrency": args.concurrency,
    }
    mux.send(HELLO, 0, marshal.dumps(hello, 4))

    def on_frame(typ, rid, payload):
        if isinstance(payload, memoryview):
            payload.release()
            sys.stderr.write("snakepit: a shared-region frame in the concurrent mode\n")
            return 2
        if typ == PING:
            if payload:  # the names of the host functions
                names = marshal.loads(payload)
                if type(names) is not list or not all(type(n) is str for n in names):
                    sys.stderr.write("snakepit: malformed host function names from the host\n")
                    return 2
                d.host_names = tuple(names)
            mux.send(PONG, rid, b"")
            return None
        sys.stderr.write("snakepit: unexpected frame type %d from the host\n" % typ)
        return 2

    try:
        return mux.run(on_frame)
    finally:
        d._stop_loop_thread()  # not a daemon: it would keep the process from exiting


class _BadRegion(ValueError):
    """A request's buffers lie outside the shared region."""


def _loads(payload, shm, keep=False):
    """The request arguments: marshal reads a region payload in place (the
    values it builds are copies), and the view is released at once. A call
    laid out in the region names its buffers by (offset, length): they are
    read-only views of the region (bytes when keep is set: a stream keeps
    them past the request)."""
    try:
        args = marshal.loads(payload)
    finally:
        if isinstance(payload, memoryview):
            payload.release()
    if len(args) >= 7 and type(args[6]) is tuple:
        if shm is None:
            raise _BadRegion("buffers in a shared region that does not exist")
        try:
            views = shm.buffers(args[6])
        except ValueError as e:
            raise _BadRegion(str(e)) from None
        if keep:
            kept = [bytes(v) for v in views]
            for v in views:
                v.release()
            views = kept
        args = args[:6] + (views,) + args[7:]
    return args


def _not_nested(handler):
    """A signal handler that ignores a signal arriving while it runs.

    CPython runs a Python signal handler at the next bytecode boundary even
    inside the handler itself. The host repeats SIGUSR1 until it has its
    answer, so the cancel handler could run again inside itself (under
    load, while it files frames holding the queue's locks) and raise
    Cancelled between a lock's acquire and the try that releases it: the
    lock stayed held and the worker's main thread blocked on it for good.
    The nested signal is dropped instead; the host signals again."""
    running = [False]

    def guarded(signum, frame):
        if running[0]:
            return None
        running[0] = True
        try:
            return handler(signum, frame)
        finally:
            running[0] = False

    guarded.__name__ = guarded.__qualname__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


def _with_id(args, call_id):
    """The call tuple args (see Dispatcher.call) with call_id in its
    eighth place, which the frame names."""
    if len(args) < 7:
        args = args + (None,) * (7 - len(args))
    return args[:7] + (call_id,) + args[8:]


def run(argv=None):
    """main(), then end whatever the worker started: the exit status."""
    try:
        return main(argv)
    finally:
        _end_descendants()


if __name__ == "__main__":
    sys.exit(run())
