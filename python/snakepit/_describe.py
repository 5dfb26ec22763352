"""Describe an adapter module's commands: what ``snakepit check`` lists."""

import importlib
import inspect
import json
import sys

from ._adapter import commands_of, thread_safe_of


def _signature(info):
    """The handler's signature as the caller sees it: without ctx."""
    try:
        sig = inspect.signature(info.fn)
    except (TypeError, ValueError):
        return "(...)"
    params = [p for name, p in sig.parameters.items() if name != "ctx"]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def describe(module_name):
    """Import module_name and return {"module", "commands": [...]}: each
    command's name, signature (without ctx), docstring, description, and
    whether it streams, is async, takes ctx and is thread-safe."""
    module = importlib.import_module(module_name)
    out = []
    for name, info in sorted(commands_of(module).items()):
        fn = info.fn
        out.append({
            "name": name,
            "signature": _signature(info),
            "description": info.description or "",
            "doc": inspect.getdoc(fn) or "",
            "stream": inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn),
            "async": info.is_async,
            "ctx": info.wants_ctx,
            "thread_safe": thread_safe_of(module, info),
        })
    return {"module": module_name, "commands": out}


def main(argv):
    """``python -m snakepit._describe MODULE``: print describe(MODULE) as
    JSON on stdout."""
    if len(argv) != 1:
        print("usage: python -m snakepit._describe MODULE", file=sys.stderr)
        return 2
    json.dump(describe(argv[0]), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
