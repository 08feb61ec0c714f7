"""Errors that reach the user as one clear paragraph instead of a traceback."""


class UserError(ValueError):
    """Bad input (missing data, wrong shapes, config typos): the message says what to do."""
