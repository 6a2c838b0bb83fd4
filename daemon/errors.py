"""The root of the daemon's own errors."""


class TextbackError(Exception):
    """The root of every error the daemon raises on purpose: catch it to catch ours and
    nothing else (gsm/ has its own tree, rooted at gsm.errors.GsmError)."""
