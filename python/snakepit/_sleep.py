"""An interruptible time.sleep for thread-profile worker interpreters.

A thread-profile worker cannot interrupt C code with a signal as a worker
process can: the exception it raises in a cancelled handler lands only
between bytecodes, so a handler blocked in time.sleep() would keep its
worker busy until the sleep ends. install() replaces time.sleep in the
worker's interpreter (the time module is per interpreter) with one that
sleeps in short slices and returns as soon as the running call is
cancelled (the worker cancels a call at its deadline), so the
cancellation lands at once.

It applies to the thread that runs the call; threads the handler started
sleep as before. Other blocking C calls (socket reads, locks, C
extensions) are not interrupted.
"""

import threading
import time

# How long one slice of an interruptible sleep is: the latency of noticing
# a cancellation.
_SLICE = 0.005

# Cancellations seen so far: a sleep wakes when this changes. A worker runs
# one call at a time, so a cancellation during a sleep is the running
# call's.
_cancels = 0


def on_cancel(cancel, running):
    """Wrap the dispatcher's cancel so that it also wakes a sleeping call —
    unless the running call (running(), its Context or None) has seen its
    cancellation already (ctx.cancelled() held it): its clean-up sleeps
    as long as it asks."""
    def wrapped():
        global _cancels
        out = cancel()
        ctx = running()
        if ctx is None or not ctx._held:
            _cancels += 1
        return out
    return wrapped


def install():
    """Replace time.sleep in this interpreter."""
    orig = time.sleep

    def sleep(secs):
        if not isinstance(threading.current_thread(), threading._DummyThread):
            return orig(secs)  # a thread the handler started
        if secs < 0:
            raise ValueError("sleep length must be non-negative")
        seen = _cancels
        end = time.monotonic() + secs
        while _cancels == seen:
            left = end - time.monotonic()
            if left <= 0:
                return None
            orig(min(left, _SLICE))
        return None

    sleep.__doc__ = orig.__doc__
    time.sleep = sleep
