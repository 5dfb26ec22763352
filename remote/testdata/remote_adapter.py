"""The adapter the remote package's serving processes run."""
import os
import time

import snakepit

_record_fd = None


@snakepit.command
def tag():
    """Names the serving process (its SNAKEPIT_REMOTE_TAG)."""
    return os.environ.get("SNAKEPIT_REMOTE_TAG", "")


@snakepit.command
def echo(ctx, value=None):
    return {"value": value, "cid": ctx.correlation_id,
            "attachments": [len(a) for a in (ctx.attachments or [])]}


@snakepit.command
def record(ctx, i):
    """Appends the call's correlation id to a file per worker process."""
    global _record_fd
    if _record_fd is None:
        path = os.path.join(os.environ["SNAKEPIT_REMOTE_RECORD"], "rec-%d" % os.getpid())
        _record_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_record_fd, (ctx.correlation_id + "\n").encode())
    return i


@snakepit.command
def boom(message):
    raise ValueError(message)


@snakepit.command
def sleep(seconds, marker=""):
    if marker:
        with open(marker, "w") as f:
            f.write("started")
    time.sleep(seconds)
    return os.environ.get("SNAKEPIT_REMOTE_TAG", "")


@snakepit.command
def wait_cancel(ctx, marker):
    """Runs until cancelled; writes "cancelled" to marker then."""
    with open(marker + ".started", "w") as f:
        f.write("started")
    try:
        while not ctx.cancelled():
            time.sleep(0.005)
    except snakepit.Cancelled:
        pass
    with open(marker, "w") as f:
        f.write("cancelled")
    return "cancelled"


@snakepit.command
def count(ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return {"n": ctx.session["n"], "tag": os.environ.get("SNAKEPIT_REMOTE_TAG", "")}


@snakepit.command
def big(n):
    return b"x" * n


@snakepit.command
def squares(n):
    for i in range(n):
        yield i * i


@snakepit.command
def ticks(marker):
    """Yields forever, counting what it produced in marker; writes
    "closed" there when the generator is closed."""
    i = 0
    try:
        while True:
            i += 1
            with open(marker, "w") as f:
                f.write(str(i))
            yield i
    finally:
        with open(marker, "w") as f:
            f.write("closed")
