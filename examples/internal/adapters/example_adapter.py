"""The adapter of the snakepit examples."""

import os
import statistics
import sys
import threading

import snakepit


@snakepit.command
def stats(values):
    """Summary statistics of a list of numbers."""
    return {
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "pid": os.getpid(),
        "thread": threading.get_ident(),
    }


@snakepit.command
def add_item(item, ctx):
    """Append to this session's basket (state kept on the worker)."""
    basket = ctx.session.setdefault("basket", [])
    basket.append(item)
    ctx.log.info("basket of %s has %d items", ctx.session_id, len(basket))
    return basket


@snakepit.command
def fibonacci(n):
    """Stream the first n Fibonacci numbers."""
    a, b = 0, 1
    for _ in range(n):
        yield a
        a, b = b, a + b
