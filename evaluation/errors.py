"""The one exception type eval.py turns into `error: ...` and exit status 2."""


class EvaluationError(RuntimeError):
    """A problem with the user's input or setup; the message is one line naming the fix."""
