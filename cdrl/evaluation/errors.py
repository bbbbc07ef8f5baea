"""The evaluation library's exception type."""

from cdrl.errors import CdrlBenchError


class EvaluationError(CdrlBenchError):
    """Bad evaluation input, weights or cache file; the message names the problem and the fix."""
