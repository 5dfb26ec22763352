"""The process profile's fork server: ``python -m snakepit._forkserver MODULE``.

A template process that has imported snakepit (and, with
``--import-adapter``, the adapter module) and forks process-profile
workers on request, so a worker starts without an interpreter start-up
and shares the pages of what the template imported.

The host starts it with file descriptor 3 bound to its end of a
``socketpair(AF_UNIX, SOCK_SEQPACKET)`` (the control socket) and file
descriptor 4 the read end of a lifeline pipe whose write end only the
host holds. Each message is one marshalled dict:

* template -> host, once, after the imports: ``{"pid", "python",
  "threads"}`` or ``{"error": text}``. A template with more than one OS
  thread (``/proc/self/task``) says so and exits: forking a process whose
  other threads hold locks (BLAS pools, loggers, gRPC) leaves the child
  with locks nobody will release.
* host -> template ``{"op": "spawn", "argv": [...], "env": [...]}`` with
  the worker's descriptors attached (SCM_RIGHTS): its socket, its
  lifeline, its stdout and stderr, and optionally its shared-memory memfds
  (the request region, the host-call region).
  The template forks; the reply is ``{"pid": n}`` or ``{"error": text}``.
  The child leaves the template's session (setsid: it leads its own
  process group, as an exec'd worker does), puts the descriptors at 1, 2,
  3, 4 (and 5, 6), closes every other descriptor (the control socket, the
  template's lifeline, whatever it was sent) except those the template's
  imports opened (a library's own descriptor, such as libffi's, is part of
  the imported state the worker goes on using), replaces its environment
  with the one sent, and runs ``snakepit._process`` with ``argv`` as an
  exec'd worker would.
* host -> template ``{"op": "reap", "pid": n}``: the host saw the worker
  exit (through a pidfd) and killed the rest of its process group while the
  unreaped worker still pinned the group id; the template now reaps it.
  Reply ``{"status": wait status}`` (-1 if it was not a child).

The template runs one thread and no signal handlers of its own: it ends
when the lifeline or the control socket reaches end of file (its host is
gone or closed it) or on SIGTERM, leaving the workers it forked to their
own lifelines.
"""

import marshal
import os
import select
import socket
import sys

CTL_FD = 3
LIFELINE_FD = 4

# The largest request the template reads: argv and environment.
MAX_MESSAGE = 1 << 20
# Descriptors a spawn request carries: socket, lifeline, stdout, stderr and
# the optional memfds.
MAX_FDS = 6
# The highest descriptor a worker is given (the second memfd).
TOP_FD = 6

# The descriptors the template's imports opened, kept open in the workers.
_kept = frozenset()


def _send(ctl, msg):
    ctl.send(marshal.dumps(msg, 4))


def _threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0  # unknown: no /proc


def _serve(ctl):
    """Answer requests until the host goes away. Returns None in the
    template; in a forked child, the request and its descriptors (the
    template's frames unwound, so nothing of them runs again)."""
    poll = select.poll()  # poll(2) holds no descriptor a child would inherit
    poll.register(CTL_FD, select.POLLIN)
    poll.register(LIFELINE_FD, select.POLLIN)
    while True:
        try:
            events = poll.poll()
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == LIFELINE_FD:
                try:
                    if os.read(LIFELINE_FD, 1):
                        continue
                except OSError:
                    pass
                return None  # the host is gone
            try:
                msg, fds, _, _ = socket.recv_fds(ctl, MAX_MESSAGE, MAX_FDS)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not msg:
                for d in fds:
                    os.close(d)
                return None  # the host closed the control socket
            try:
                req = marshal.loads(msg)
                op = req.get("op") if type(req) is dict else None
            except (ValueError, EOFError, TypeError):
                op = None
            if op == "spawn":
                try:
                    pid = os.fork()
                except OSError as e:
                    for d in fds:
                        os.close(d)
                    _send(ctl, {"error": "fork: %s" % e})
                    continue
                if pid == 0:
                    return req, fds
                for d in fds:
                    os.close(d)
                _send(ctl, {"pid": pid})
            elif op == "reap":
                for d in fds:
                    os.close(d)
                status = -1
                pid = req.get("pid")
                if type(pid) is int and pid > 0:
                    try:
                        got, status = os.waitpid(pid, 0)
                        if got != pid:
                            status = -1
                    except ChildProcessError:
                        status = -1
                    except OSError:
                        status = -1
                _send(ctl, {"status": status})
            else:
                for d in fds:
                    os.close(d)
                _send(ctl, {"error": "unknown request"})


def _child(ctl, req, fds):
    """In the forked worker: take its descriptors and environment, then run
    the worker's main loop. Returns the exit status."""
    os.setsid()
    ctl.detach()  # its descriptor is closed below, not by the object later
    argv = [str(a) for a in req.get("argv", ())]
    env = {}
    for kv in req.get("env", ()):
        k, sep, v = str(kv).partition("=")
        if sep and k:
            env[k] = v
    if len(fds) < 4:
        os.write(2, b"snakepit: fork server: spawn request without its descriptors\n")
        return 70
    sock, life, out, err = fds[:4]
    targets = {1: out, 2: err, 3: sock, 4: life}
    for i, fd in enumerate(fds[4:]):
        targets[5 + i] = fd
    # Move every source above the targets first, so that no dup2 overwrites
    # a source still to be placed.
    import fcntl
    high = {t: fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 16) for t, src in targets.items()}
    for t, src in high.items():
        os.dup2(src, t, inheritable=True)
    for fd in range(LIFELINE_FD + 1, TOP_FD + 1):
        if fd not in targets:
            os.close(fd)  # the template's placeholder
    # Everything else the template held or was sent goes: 0, 1, 2, the
    # socket, the lifeline, the memfd and what the imports opened stay.
    for fd in _open_fds():
        if fd > TOP_FD and fd not in _kept:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor
    # The kept ones stay with this process, not with what it runs: the
    # worker's start closes inheritable descriptors above 4 as strays from
    # the host, and libffi (ctypes) would then map whatever took its
    # descriptor's number.
    for fd in _kept:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass

    os.environ.clear()
    os.environ.update(env)
    # The worker's PYTHONPATH may name directories the template's did not.
    # (No importlib.invalidate_caches(): it costs more than the rest of the
    # start, and the path finders see a directory's changes by its mtime.)
    for p in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        if p not in sys.path:
            sys.path.insert(0, p)

    from . import _process
    # As under ``python -m snakepit._process``: the worker module is
    # __main__ (its LIFELINE_ENABLED, its name in tracebacks).
    sys.modules["__main__"] = _process
    sys.argv = [_process.__file__] + argv
    return _process.run(argv)


def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _open_fds():
    try:
        return [int(n) for n in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return range(os.sysconf("SC_OPEN_MAX"))


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="snakepit._forkserver")
    p.add_argument("module")
    p.add_argument("--import-adapter", action="store_true")
    args = p.parse_args(argv)

    # Descriptors the host's process left inheritable are strays, not the
    # template's (a worker exec'd by the host closes them too).
    for fd in _open_fds():
        if fd > LIFELINE_FD:
            try:
                if os.get_inheritable(fd):
                    os.close(fd)
            except OSError:
                pass  # the listing's own descriptor
    ctl = socket.socket(fileno=CTL_FD)
    for fd in (CTL_FD, LIFELINE_FD):
        os.set_inheritable(fd, False)
    # Hold the workers' descriptors above the lifeline, so that no import
    # takes one.
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for fd in range(LIFELINE_FD + 1, TOP_FD + 1):
        if fd != null:
            os.dup2(null, fd, inheritable=False)
    if null > TOP_FD:
        os.close(null)
    try:
        # What every worker imports, so that its pages are shared (and
        # what the worker's start imports on its way: ctypes, asyncio).
        import array  # noqa: F401
        import asyncio  # noqa: F401
        import ctypes  # noqa: F401
        import functools  # noqa: F401
        import gc
        import importlib
        from . import _dispatch, _process, _wire  # noqa: F401
        if args.import_adapter:
            importlib.import_module(args.module)
        # Keep the collector off the imported objects: it would write to
        # their pages in every worker, unsharing them.
        gc.collect()
        gc.freeze()
    except BaseException:
        import traceback
        # The host reads messages of up to 64 KiB: the end of a long
        # traceback is what says most.
        _send(ctl, {"error": traceback.format_exc()[-32768:]})
        return 1
    global _kept
    _kept = frozenset(fd for fd in _open_fds() if fd > TOP_FD and _is_open(fd))
    n = _threads()
    _send(ctl, {"pid": os.getpid(), "python": "%d.%d.%d" % sys.version_info[:3], "threads": n})
    if n > 1:
        return 1
    child = _serve(ctl)
    if child is None:
        return 0
    return _child(ctl, *child)


if __name__ == "__main__":
    sys.exit(main())
