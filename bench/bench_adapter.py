"""The adapter the benchmark runs in both profiles."""
import snakepit


@snakepit.command
def noop(req):
    return req


@snakepit.command
def echo(data):
    return data


@snakepit.command
def burn(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


@snakepit.command
def chunks(n):
    for i in range(n):
        yield i


@snakepit.command
async def sleep(s):
    """An I/O-bound handler: waits s seconds on the event loop."""
    import asyncio
    await asyncio.sleep(s)
    return s
