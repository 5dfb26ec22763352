"""A thread-safe adapter for the snakepit command's tests."""

import snakepit

snakepit.configure(thread_safe=True)


@snakepit.command
def greet(name, punctuation="!"):
    """Say hello to name.

    Returns {"greeting": str, "length": int}."""
    return {"greeting": "hello " + name + punctuation, "length": len(name)}


@snakepit.command
def count(n, ctx):
    """Count from 0 to n - 1, one item at a time."""
    for i in range(n):
        yield {"i": i}


@snakepit.command
def fail(message):
    """Raise ValueError(message)."""
    raise ValueError(message)


@snakepit.command
def blob():
    """Return bytes."""
    return b"\x00\x01snake"


@snakepit.command
def session_id(ctx):
    """Return the call's session id."""
    return ctx.session_id
