"""Guards for interpreters that run inside a Go process (the thread profile).

Such an interpreter shares its process, its signal handlers and its OS
threads with the Go program hosting it. A few functions would act on the
host as a whole rather than on Python: ending the process (os._exit),
forking it (os.fork, which 3.11 sub-interpreters and the main
interpreter do not refuse),
replacing the host's signal handlers (faulthandler) or changing the
signal mask or timers of its threads (signal.pthread_sigmask, ...).
install() replaces them, in the calling interpreter only, with functions
raising RuntimeError that name the process profile, whose workers are
separate processes and may do all of this. On 3.11 it also refuses daemon
threads, which 3.12+ refuse in isolated sub-interpreters: a daemon thread
still running when the interpreter ends aborts the host.

On 3.11 it also binds the calling thread's PyGILState slot to the thread
state running the sub-interpreter (see _bind_gilstate): without that, an
extension calling PyGILState_Ensure there (pybind11 modules do in their
init: scipy.spatial, hence sklearn) waits for the GIL its own thread holds.

This module is loaded by the Go side (embed), not imported by adapters.
"""

HINT = "use the process profile, whose workers are separate processes"


def _refused(name, why):
    msg = "%s is not available in a Python worker running inside the host process (%s); %s" % (
        name, why, HINT)

    def refused(*args, **kwargs):
        raise RuntimeError(msg)

    refused.__name__ = refused.__qualname__ = name.rpartition(".")[2]
    refused.__doc__ = msg
    return refused


def install(sub_interpreter=False, legacy_threads=False):
    """Install the guards in this interpreter. sub_interpreter: refuse
    threads nothing joins when the interpreter ends (raw _thread threads);
    legacy_threads: the interpreter does not refuse daemon threads of
    threading itself (3.11)."""
    import os
    import posix
    import signal
    try:
        import faulthandler
    except ImportError:  # refused in isolated sub-interpreters (3.12+)
        faulthandler = None

    f = _refused("os._exit", "it would end the host process")
    os._exit = posix._exit = f
    # 3.12+ sub-interpreters refuse fork themselves; 3.11 ones and the main
    # interpreter would fork the Go host, whose child cannot run.
    for name in ("fork", "forkpty"):
        if hasattr(posix, name):
            f = _refused("os." + name, "it would fork the host process")
            setattr(posix, name, f)
            setattr(os, name, f)
    for name in ("enable", "register", "dump_traceback_later") if faulthandler else ():
        setattr(faulthandler, name, _refused(
            "faulthandler." + name, "it would replace the host's signal handlers"))
    for name, why in (
        ("pthread_sigmask", "it would change the signal mask of a host thread"),
        ("siginterrupt", "it would change the host's signal handlers"),
        ("setitimer", "its timers belong to the host process"),
        ("alarm", "its timers belong to the host process"),
    ):
        if hasattr(signal, name):
            setattr(signal, name, _refused("signal." + name, why))
    if sub_interpreter:
        _refuse_daemon_threads(legacy_threads)
    if sub_interpreter and legacy_threads:
        _bind_gilstate()


def _bind_gilstate():
    """Make PyGILState_Ensure on this thread (the interpreter's home thread)
    find the thread state this interpreter runs with.

    CPython 3.11 binds a thread's PyGILState slot to the first thread state
    created on it while the slot is empty. The home thread creates a
    temporary main-interpreter state to create the sub-interpreter, so the
    sub-interpreter's state is not bound, and the slot is empty once the
    temporary state is gone. PyGILState_Ensure with an empty slot creates a
    main-interpreter state and waits for the GIL, which 3.11 interpreters
    share and this very thread holds: a deadlock, hit by every pybind11
    module (its init calls PyGILState_Ensure). _PyThreadState_SetCurrent
    (exported by 3.11, the function PyThreadState_New binds with) binds an
    empty slot; a slot bound to another state is left alone. 3.12+ bind
    the state a thread runs with themselves.
    """
    import ctypes

    api = ctypes.pythonapi
    this = api.PyGILState_GetThisThreadState
    this.restype, this.argtypes = ctypes.c_void_p, []
    cur = api.PyThreadState_Get
    cur.restype, cur.argtypes = ctypes.c_void_p, []
    if this() is None:
        bind = api._PyThreadState_SetCurrent
        bind.restype, bind.argtypes = None, [ctypes.c_void_p]
        bind(cur())


def _refuse_daemon_threads(legacy_threads):
    import threading  # first: it keeps its own reference to _thread's functions
    import _thread

    if legacy_threads:
        msg = ("daemon threads are disabled in this interpreter: one still running "
               "when the worker closes would abort the host; " + HINT)
        start = threading.Thread.start

        def guarded_start(self):
            if self.daemon:
                raise RuntimeError(msg)
            return start(self)

        guarded_start.__name__ = guarded_start.__qualname__ = "start"
        guarded_start.__doc__ = start.__doc__
        threading.Thread.start = guarded_start
        # A thread inherits daemon from its creator, and calls run on
        # threads threading knows as dummy threads, which are daemon: as on
        # 3.12+ where daemon threads are refused, a thread not asked to be
        # a daemon is not one.
        init = threading.Thread.__init__

        def guarded_init(self, *args, daemon=None, **kwargs):
            init(self, *args, daemon=daemon, **kwargs)
            if daemon is None:
                self._daemonic = False

        guarded_init.__name__ = guarded_init.__qualname__ = "__init__"
        guarded_init.__doc__ = init.__doc__
        threading.Thread.__init__ = guarded_init
    # Threads started directly with _thread are never joined (daemon
    # threads): on 3.11 one still running when the interpreter ends aborts
    # the host, on 3.12+ it is left hanging for good.
    _thread.start_new_thread = _thread.start_new = _refused(
        "_thread.start_new_thread", "its threads are daemon threads")
