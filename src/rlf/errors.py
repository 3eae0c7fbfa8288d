"""The one exception type for user mistakes (bad input, bad options, missing packages)."""


class RLFError(Exception):
    """A user-facing error: the message names the file, line, field or option and the fix.

    The CLI prints it without a traceback and exits with status 2.
    """
