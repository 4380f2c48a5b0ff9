"""Logging to the console and ``OUTPUT_DIR/log.txt`` through Python's logging module.

Everything the project reports goes through ``logging`` (module loggers propagate to the root);
Python warnings are captured into the same log. ``log.txt`` is appended to, so a resumed run keeps
the history of the interrupted one.
"""
from __future__ import annotations

import logging
import os
import sys

_HANDLER_TAG = "_engine_handler"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logger(output_dir: str | None = None, level: int = logging.INFO, console: bool = True) -> None:
    """Send log records to stdout and, when ``output_dir`` is given, to ``output_dir/log.txt``.

    Calling it again replaces the handlers it added before (tests build several trainers).
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    handlers: list[logging.Handler] = []
    if console:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(stream)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a")
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(file_handler)
    for h in handlers:
        setattr(h, _HANDLER_TAG, True)
        root.addHandler(h)
    logging.captureWarnings(True)
    # Libraries that log at INFO by default would drown the training log.
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
