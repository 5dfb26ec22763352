"""An adapter whose setup() fails."""
import snakepit


def setup():
    raise RuntimeError("setup failed on purpose")


@snakepit.command
def never():
    return None
