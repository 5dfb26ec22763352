"""An adapter importing an extension that refuses sub-interpreters
(single-phase initialisation; CPython 3.12+ refuses it)."""

import _testsinglephase  # noqa: F401

import snakepit


@snakepit.command
def ping():
    """Answer pong."""
    return "pong"
