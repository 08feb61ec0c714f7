"""Errors that reach the user as one clear paragraph instead of a traceback."""


class UserError(ValueError):
    """Bad input (missing data, wrong shapes, config typos): the message says what to do."""

# Written into a run folder when its stage refused its input (the message), removed when the run starts again:
# `relreward report` lists such a run as failed, with the reason.
ERROR_FILE = "error.txt"
