"""The one error type a user sees as a single line (CLIs print it and exit 2)."""


class BigtrainError(Exception):
    """A problem with user input (a file, a checkpoint, a shape) whose str() is one line: what and where."""
