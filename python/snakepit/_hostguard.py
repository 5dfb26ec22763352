"""Guards for interpreters that run inside a Go process (the thread profile).

Such an interpreter shares its process, its signal handlers and its OS
threads with the Go program hosting it. A few functions would act on the
host as a whole rather than on Python: ending the process (os._exit),
forking it (os.fork, which 3.11 sub-interpreters and the main
interpreter do not refuse),
replacing the host's signal handlers (faulthandler) or changing the
signal mask or timers of its threads (signal.pthread_sigmask, ...), or
starting multiprocessing children (whose start methods fork the host, or
run helper processes the host does not own).
install() replaces them, in the calling interpreter only, with functions
raising RuntimeError that name the process profile, whose workers are
separate processes and may do all of this. On 3.11 it also refuses daemon
threads, which 3.12+ refuse in isolated sub-interpreters: a daemon thread
still running when the interpreter ends aborts the host; and numpy, which
3.12+ refuse as a single-phase extension: on 3.11 it loads in one
sub-interpreter, and a sub-interpreter importing it after that one ended
crashes the host.

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
    _refuse_multiprocessing()
    if sub_interpreter:
        _refuse_daemon_threads(legacy_threads)
    if sub_interpreter and legacy_threads:
        _refuse_modules(_SINGLE_INTERPRETER)


# Extension modules that keep process-wide state pointing into the
# interpreter that first loaded them: on 3.11, which does not check
# single-phase extensions in sub-interpreters, a second interpreter that
# imports one after the first has ended crashes the host (numpy: a
# segmentation fault in its first call). Everything built on numpy (scipy,
# pandas, scikit-learn, torch) imports it.
_SINGLE_INTERPRETER = ("numpy",)


def _refuse_modules(names):
    import sys

    class _Refuse:
        """A meta path finder that refuses the packages in names with the
        ImportError CPython 3.12+ raises for a single-phase extension in a
        sub-interpreter (which the host reports as not sub-interpreter
        safe)."""

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            top = fullname.partition(".")[0]
            if top in names:
                raise ImportError(
                    "module %s does not support loading in subinterpreters on CPython 3.11 "
                    "(it keeps process-wide state that crashes the host once the interpreter "
                    "that loaded it ends); %s" % (top, HINT), name=fullname)
            return None

    sys.meta_path.insert(0, _Refuse)


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
    # 3.13+: threading starts its threads through start_joinable_thread,
    # whose daemon argument (default True) only threading itself checks.
    start_joinable = getattr(_thread, "start_joinable_thread", None)
    if start_joinable is not None:
        def start_joinable_thread(function, handle=None, daemon=True):
            if daemon:
                raise RuntimeError("_thread.start_joinable_thread with daemon=True is not available in a "
                                   "thread-profile worker (daemon threads are not joined when the worker ends); "
                                   "pass daemon=False, or use the process profile")
            return start_joinable(function, handle=handle, daemon=daemon)

        start_joinable_thread.__doc__ = start_joinable.__doc__
        _thread.start_joinable_thread = start_joinable_thread


MP_WHY = "it would start child processes from the host process"


def _refuse_multiprocessing():
    """Refuse multiprocessing's child processes, before any resource they
    need exists. Its start methods cannot work here: fork copies the Go
    host, and spawn and forkserver start helper processes (the resource
    tracker, the fork server) through the host's signal mask and leave
    named semaphores and shared memory to them. The modules are patched
    when first imported (see _PatchOnImport), so that interpreters not
    using multiprocessing do not pay for its import.
    concurrent.futures.ThreadPoolExecutor still works (multiprocessing's
    ThreadPool needs daemon threads and a semaphore, refused either way)."""
    import sys

    patches = {
        "multiprocessing.process": _patch_process,
        "multiprocessing.pool": _patch_pool,
        "concurrent.futures.process": _patch_futures,
        "multiprocessing.resource_tracker": _patch_helper("ResourceTracker", "_resource_tracker"),
        "multiprocessing.forkserver": _patch_helper("ForkServer", "_forkserver"),
        "multiprocessing.synchronize": _patch_synchronize,
        "multiprocessing.shared_memory": _patch_shared_memory,
    }
    for name in list(patches):
        mod = sys.modules.get(name)
        if mod is not None:
            patches.pop(name)(mod)
    sys.meta_path.insert(0, _PatchOnImport(patches))


class _PatchOnImport:
    """A meta path finder that lets the other finders find the modules it
    names and patches each one once its code has run."""

    def __init__(self, patches):
        self._patches = patches

    def find_spec(self, name, path=None, target=None):
        patch = self._patches.get(name)
        if patch is None:
            return None
        import sys

        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


class _PatchingLoader:
    """Delegates to loader, then patches the module it executed."""

    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _patch_process(mod):
    mod.BaseProcess.start = _refused("multiprocessing.Process.start", MP_WHY)


def _patch_pool(mod):
    init = mod.Pool.__init__
    refused = _refused("multiprocessing.Pool", MP_WHY)

    def guarded_init(self, *args, **kwargs):
        if not isinstance(self, mod.ThreadPool):
            refused()
        init(self, *args, **kwargs)

    guarded_init.__name__ = guarded_init.__qualname__ = "__init__"
    guarded_init.__doc__ = init.__doc__
    mod.Pool.__init__ = guarded_init


def _patch_futures(mod):
    mod.ProcessPoolExecutor.__init__ = _refused(
        "concurrent.futures.ProcessPoolExecutor", MP_WHY)


def _patch_helper(cls, instance):
    def patch(mod):
        f = _refused("multiprocessing.%s.ensure_running" % mod.__name__.rpartition(".")[2], MP_WHY)
        getattr(mod, cls).ensure_running = f
        if hasattr(mod, "ensure_running"):  # bound to the instance at import
            mod.ensure_running = f
    return patch


def _patch_synchronize(mod):
    """Named semaphores (every start method but fork) are left to the
    resource tracker to unlink: refuse them before they exist."""
    init = mod.SemLock.__init__
    refused = _refused("multiprocessing.synchronize.SemLock",
                       "a named semaphore needs the resource tracker, a child process")

    def guarded_init(self, *args, ctx=None, **kwargs):
        import multiprocessing

        if (ctx or multiprocessing.get_context()).get_start_method() != "fork":
            refused()
        init(self, *args, ctx=ctx, **kwargs)

    guarded_init.__name__ = guarded_init.__qualname__ = "__init__"
    mod.SemLock.__init__ = guarded_init


def _patch_shared_memory(mod):
    """A tracked segment (always on 3.11, by default on 3.13+) is left to
    the resource tracker to unlink: refuse it before it exists."""
    init = mod.SharedMemory.__init__
    refused = _refused("multiprocessing.shared_memory.SharedMemory",
                       "a tracked segment needs the resource tracker, a child process")

    def guarded_init(self, *args, **kwargs):
        if kwargs.get("track", True):
            refused()
        init(self, *args, **kwargs)

    guarded_init.__name__ = guarded_init.__qualname__ = "__init__"
    guarded_init.__doc__ = init.__doc__
    mod.SharedMemory.__init__ = guarded_init
