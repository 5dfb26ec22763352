"""An adapter used by the array unit tests."""

import snakepit


@snakepit.command
def echo(x):
    return x


@snakepit.command
def describe(x):
    return {"type": type(x).__name__, "shape": list(x.shape), "readonly": bool(getattr(x, "readonly", False))
            or not getattr(getattr(x, "flags", None), "writeable", True)}


@snakepit.command
def lengths(x):
    yield len(x)
