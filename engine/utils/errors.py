"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a missing folder, a typo in a config key, an
unknown class name...). ``train.py`` turns it into one line on stderr and a non-zero exit, never a
traceback. Raise it with a message that names what was expected and where the program looked.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Callable


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

    exit_code = 2


def user_error_line(e: BaseException) -> str:
    """The one line a command prints for ``e``. Errors raised in DataLoader workers arrive with the
    worker's traceback in their message; keep only the original message."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last.split(prefix, 1)[-1] if "Original Traceback" in str(e) else " ".join(lines)


class NonFiniteLossError(Exception):
    """Training produced a NaN or infinite loss; the run stops (exit code 3) without saving."""

    exit_code = 3


def run_command(body: Callable[[], object]) -> int:
    """Run a command's body and return its exit status: a user mistake or a non-finite loss becomes one
    ``error: ...`` line on stderr (no traceback), Ctrl-C becomes ``interrupted`` (130)."""
    try:
        body()
    except UserError as e:
        print(f"error: {user_error_line(e)}", file=sys.stderr)
        return UserError.exit_code
    except NonFiniteLossError as e:
        logging.getLogger("train").error(str(e))  # also in log.txt, beside the step's loss lines
        print(f"error: {e}", file=sys.stderr)
        return NonFiniteLossError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def interrupt_on_sigterm() -> Callable[[], None]:
    """Handle SIGTERM (a scheduler's time limit or pre-emption, ``scancel``, ``kill``) as Ctrl-C: a
    ``KeyboardInterrupt`` in the main thread, so that ``finally`` blocks run (the output folder's lock is
    released) before the process ends. Returns the function that puts the previous handler back; outside the
    main thread it changes nothing."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
