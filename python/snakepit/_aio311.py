"""asyncio in a sub-interpreter of CPython 3.11.

CPython 3.11's C accelerator of asyncio (_asyncio) keeps one process-wide
cache of "the running event loop", keyed by a thread state id that is
unique only within an interpreter: event loops running at once in two
sub-interpreters (two thread-profile workers, each in an async handler)
then see each other's loop ("Cannot run the event loop while another loop
is running", "Event loop is closed"). 3.12 keeps that state per
interpreter. install() makes this interpreter's asyncio use its pure-Python
implementations of what touches that state (the running loop, Future,
Task and their bookkeeping): correct, somewhat slower. It must run before
anything imports names from asyncio that it replaces (the adapter)."""

import sys


def install():
    """Switch this interpreter's asyncio to its pure-Python running-loop
    bookkeeping, futures and tasks (3.11 only; a no-op elsewhere)."""
    if sys.version_info >= (3, 12):
        return
    import asyncio
    import weakref
    from asyncio import events, futures, tasks

    events._get_running_loop = events._py__get_running_loop
    events._set_running_loop = events._py__set_running_loop
    events.get_running_loop = events._py_get_running_loop
    events.get_event_loop = events._py_get_event_loop
    events._get_event_loop = events._py__get_event_loop
    futures.Future = futures._PyFuture
    tasks.Task = tasks._PyTask
    tasks._register_task = tasks._py_register_task
    tasks._unregister_task = tasks._py_unregister_task
    tasks._enter_task = tasks._py_enter_task
    tasks._leave_task = tasks._py_leave_task
    tasks._all_tasks = weakref.WeakSet()
    tasks._current_tasks = {}
    for name in ("_get_running_loop", "_set_running_loop", "get_running_loop", "get_event_loop",
                 "_register_task", "_unregister_task", "_enter_task", "_leave_task"):
        if hasattr(asyncio, name):
            setattr(asyncio, name, getattr(events, name, None) or getattr(tasks, name))
    asyncio.Future = futures.Future
    asyncio.Task = tasks.Task
