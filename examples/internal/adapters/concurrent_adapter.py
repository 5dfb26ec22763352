"""An I/O-bound adapter: each call waits on a slow service (standing in
for an HTTP API or a database) without holding its worker."""

import asyncio

import snakepit


@snakepit.command
async def lookup(key, ctx):
    """Waits 50 ms for the slow service, then answers."""
    await asyncio.sleep(0.05)
    return {"key": key, "worker": ctx.worker_id, "correlation_id": ctx.correlation_id}
