"""The one exception type the CLI turns into a one-line error message (exit status 2)."""


class CdrlBenchError(ValueError):
    """A problem with the user's input or files; the message names the problem and the fix."""
