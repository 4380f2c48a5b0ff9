"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a missing folder, a typo in a config key, an
unknown class name...). ``train.py`` turns it into one line on stderr and a non-zero exit, never a
traceback. Raise it with a message that names what was expected and where the program looked.
"""


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

    exit_code = 2


class NonFiniteLossError(Exception):
    """Training produced a NaN or infinite loss; the run stops (exit code 3) without saving."""

    exit_code = 3
