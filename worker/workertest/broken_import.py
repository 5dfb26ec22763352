"""An adapter that cannot be imported."""
raise ImportError("this adapter is broken on purpose")
