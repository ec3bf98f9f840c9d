"""The error every step raises when it cannot go on; kept apart so light modules can raise it."""


class StepError(Exception):
    """A step cannot go on (bad input, too few images...); the message says why."""
