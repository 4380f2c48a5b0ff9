"""A run of the protocol, its console log, and how a command is wrapped for several GPUs."""
from __future__ import annotations

import datetime
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import IO

RESULTS_FILE = "results.json"  # written by train.py at the end of a run: its presence means "finished"
CONSOLE_LOG = "console.log"    # a run's stdout and stderr when it does not run in the foreground


@dataclass(frozen=True)
class Run:
    """One ``train.py`` call: its output folder, its command (``[python, train.py, ...]``) and its method."""

    out: str
    command: tuple[str, ...]
    method: str

    @property
    def finished(self) -> bool:
        return os.path.isfile(os.path.join(self.out, RESULTS_FILE))

    @property
    def console_log(self) -> str:
        return os.path.join(self.out, CONSOLE_LOG)


def with_torchrun(command: tuple[str, ...] | list[str], nproc: int) -> list[str]:
    """``[python, train.py, ...]`` as ``[python, -m, torch.distributed.run, ..., train.py, ...]`` with
    ``nproc`` processes (one per visible GPU); unchanged for ``nproc`` 1. ``--standalone`` gives each run
    its own rendezvous on a free port, so several multi-GPU runs can share a machine."""
    if nproc <= 1:
        return list(command)
    python, *rest = command
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *rest]


def open_console_log(run: Run) -> IO[bytes]:
    """The run's console log, opened for appending (a resumed run adds to it), after a line saying
    when this attempt started and with which command."""
    os.makedirs(run.out, exist_ok=True)
    log = open(run.console_log, "ab")
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    log.write(f"### {stamp} {shlex.join(run.command)}\n".encode())
    log.flush()
    return log


def run_logged(run: Run, nproc: int = 1, cwd: str | None = None) -> str:
    """Run ``run`` to its end with its output in its console log; what a cluster job executes.
    Returns the path of ``results.json``; raises ``RuntimeError`` (the job then counts as failed)
    when the command fails."""
    if cwd:
        os.chdir(cwd)  # the command's paths are relative to where the protocol was launched
    if run.finished:
        return os.path.join(run.out, RESULTS_FILE)
    with open_console_log(run) as log:
        code = subprocess.call(with_torchrun(run.command, nproc), stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"exit code {code}; see {os.path.abspath(run.console_log)}")
    return os.path.join(run.out, RESULTS_FILE)
