"""The adapter of examples/tracing: a handler that logs, asks Go for a
price (a host function, which joins the trace) and returns the trace
context it ran under."""
import snakepit


@snakepit.command
def quote(ctx, sku, qty):
    ctx.log.info("quoting %d x %s", qty, sku)
    price = ctx.host.price(sku=sku)
    return {"total": price * qty, "traceparent": ctx.traceparent}
