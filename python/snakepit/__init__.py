"""snakepit: write Python handlers that Go calls through snakepit for Go.

An adapter is a plain module. Its public functions decorated with
``@snakepit.command`` are the commands Go can call::

    import snakepit

    def setup():                 # optional: runs once per worker, before it is ready
        global model
        model = load_model()

    @snakepit.command
    def predict(features, threshold=0.5):
        return {"label": model(features) > threshold}

    @snakepit.command(name="stats", description="Summary statistics")
    def summarize(values, ctx):  # a parameter named ctx receives a Context
        ctx.log.info("summarising %d values", len(values))
        return {"n": len(values), "mean": sum(values) / len(values)}

    @snakepit.command
    def count(n):                # a generator streams: one chunk per item
        for i in range(n):
            yield i

    @snakepit.command
    async def fetch(url):        # async handlers run on the worker's event loop
        ...

    snakepit.configure(thread_safe=True)  # plain handlers may run on several
                                          # threads at once (worker concurrency > 1)

    def teardown():              # optional: runs when the worker stops
        ...

Handlers receive the call's arguments as keyword arguments. Values crossing
to and from Go are None, bool, int, float, str, bytes, list, tuple and dict
with str keys; results of other types are converted where there is an
obvious conversion (dataclasses, datetimes, enums, sets, Decimal, UUID,
paths, objects with ``tolist()``) and refused with a clear error otherwise.

The same adapter runs unchanged in the thread profile (a sub-interpreter in
the Go process) and the process profile (a child process).
"""

from ._adapter import Cancelled, CommandInfo, Context, HostError, command, commands_of, configure

__all__ = ["Cancelled", "CommandInfo", "Context", "HostError", "command", "commands_of", "configure"]

#: Version of the wire protocol between Go and this package.
PROTOCOL = 2
