"""The process profile's worker: ``python -m snakepit._process MODULE``.

The host starts this with file descriptor 3 bound to its end of a
socketpair and file descriptor 4 the read end of a pipe whose write end
only the host holds (the lifeline). Frames on fd 3 are
``<u32 payload length><u8 type><u64 request id><payload>``, little-endian.
The child sends HELLO once the adapter is imported and setup() has run (or
FAIL with the error), then answers requests one at a time with the same
dispatcher the thread profile uses. When the lifeline reaches end of file
(the host died, even by SIGKILL) the child kills its process group, so
whatever its handlers started dies with it; SIGTERM (also the host's
parent-death signal, and the host's second stop step) does the same. SIGUSR1
from the host interrupts the running call with snakepit.Cancelled.
"""

import argparse
import faulthandler
import marshal
import os
import signal
import socket
import struct
import sys
import threading
import time

from . import _dispatch
from ._adapter import Cancelled

PROTOCOL = 1

(HELLO, FAIL, PING, PONG, CALL, STREAM_OPEN, STREAM_NEXT, STREAM_CLOSE,
 END_SESSION, SHUTDOWN, REPLY) = range(1, 12)

_HEADER = struct.Struct("<IBQ")
SOCK_FD = 3
LIFELINE_FD = 4

# Set to False by code that must outlive its host (tests of orphan cleanup).
LIFELINE_ENABLED = True


class _Conn:
    def __init__(self, fd, max_frame, spin_s=0.0):
        self.sock = socket.socket(fileno=fd)
        self.max_frame = max_frame
        self.header = bytearray(_HEADER.size)
        self.spin_s = spin_s

    def _spin(self):
        """Poll for the next request for a moment before sleeping in recv:
        a caller making calls back to back then finds this process awake
        instead of paying an OS thread wake-up (tens of microseconds)."""
        if self.spin_s <= 0:
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
        """(type, id, payload), or None at end of stream."""
        self._spin()
        n = self._read_exact(memoryview(self.header))
        if n == 0:
            return None
        if n < len(self.header):
            raise EOFError("truncated frame header")
        size, typ, rid = _HEADER.unpack(self.header)
        if size > self.max_frame:
            raise ValueError("frame of %d bytes exceeds the limit %d" % (size, self.max_frame))
        payload = bytearray(size)
        if self._read_exact(memoryview(payload)) < size:
            raise EOFError("truncated frame")
        return typ, rid, bytes(payload)

    def send(self, typ, rid, payload):
        self.sock.sendall(_HEADER.pack(len(payload), typ, rid) + payload)


def _kill_group(*_):
    """End this worker and everything it started (its process group)."""
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(70)


def _watch_lifeline():
    # Signals are for the main thread (it runs the handlers).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT})
    try:
        while os.read(LIFELINE_FD, 1):
            pass
    except OSError:
        pass
    if LIFELINE_ENABLED:
        _kill_group()  # the host is gone


def _encode_reply(reply, max_frame):
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
    p.add_argument("--max-frame", type=int, default=64 << 20)
    p.add_argument("--spin-us", type=int, default=0)
    args = p.parse_args(argv)

    faulthandler.enable()  # a crash prints the Python stack on stderr
    signal.signal(signal.SIGTERM, _kill_group)
    threading.Thread(target=_watch_lifeline, name="snakepit-lifeline", daemon=True).start()
    conn = _Conn(SOCK_FD, args.max_frame, args.spin_us / 1e6)
    worker_id = args.worker_id or "proc-%d" % os.getpid()
    try:
        # print() in handlers becomes log records tagged with the call, as in
        # the thread profile. stderr stays the real file descriptor: the host
        # forwards it line by line at once, so what a crashing process writes
        # last (a traceback, faulthandler's report) is never lost.
        d = _dispatch.Dispatcher(args.module, worker_id=worker_id, capture_stdio=("stdout",),
                                 log_level=args.log_level)
    except BaseException as e:
        conn.send(FAIL, 0, marshal.dumps(_dispatch._error(_dispatch.K_PYTHON, e), 4))
        return 1
    reply = d.setup()
    if isinstance(reply, tuple) and reply[0] == _dispatch.ERROR:
        conn.send(FAIL, 0, marshal.dumps(reply, 4))
        return 1

    # [in a call, cancelled already]: the host repeats SIGUSR1 until the
    # call ends (one sent before the call started is ignored); the handler
    # gets Cancelled once.
    in_call = [False, False]

    def on_cancel(signum, frame):
        if in_call[0] and not in_call[1]:
            in_call[1] = True
            d.cancel()
            raise Cancelled("cancelled by the host")

    signal.signal(signal.SIGUSR1, on_cancel)
    hello = {
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "commands": d.info()["commands"],
        "logs": d.drain_logs(),
    }
    conn.send(HELLO, 0, marshal.dumps(hello, 4))

    handlers = {
        CALL: lambda payload: d.call(*marshal.loads(payload)),
        STREAM_OPEN: lambda payload: d.stream_open(*marshal.loads(payload)),
        STREAM_NEXT: lambda payload: d.stream_next(),
        STREAM_CLOSE: lambda payload: d.stream_close(),
        END_SESSION: lambda payload: d.end_session(*marshal.loads(payload)),
    }
    while True:
        frame = conn.read()
        if frame is None:
            # The host closed the connection without SHUTDOWN: it is gone.
            # Do what the lifeline would (it may not have run yet).
            if LIFELINE_ENABLED:
                _kill_group()
            return 0
        typ, rid, payload = frame
        if typ == PING:
            conn.send(PONG, rid, b"")
            continue
        if typ == SHUTDOWN:
            conn.send(REPLY, rid, _encode_reply(d.teardown(), args.max_frame))
            return 0
        handler = handlers.get(typ)
        if handler is None:
            sys.stderr.write("snakepit: unexpected frame type %d from the host\n" % typ)
            return 2
        try:
            in_call[1] = False
            in_call[0] = True
            reply = handler(payload)
        except Cancelled as e:
            reply = _dispatch._error(_dispatch.K_CANCELLED, e)
        finally:
            in_call[0] = False
        conn.send(REPLY, rid, _encode_reply(reply, args.max_frame))


if __name__ == "__main__":
    sys.exit(main())
