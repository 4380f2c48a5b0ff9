"""Runs side by side on one machine: one per GPU (``--gpus``), or N at once on CPUs (``--jobs``).

Each run is a child process with its own console log (``<run>/console.log``) and, on GPUs, its own
``CUDA_VISIBLE_DEVICES``: the slot it was given (one GPU id, or a group of ids for a torchrun run). When
a run ends the next one takes its slot. The console gets one line per event (``run``, ``done``,
``failed``) and a progress line: done / running / failed / left and an ETA from the runs that finished.

Decisions:
- a failed run does not stop the others; ``fail_fast`` stops everything at the first failure;
- Ctrl-C (or SIGTERM) interrupts every running child (SIGINT, then SIGTERM, then SIGKILL to its whole
  process group, so torchrun's workers go too) and returns 130; a run that had finished keeps its
  ``results.json``, an interrupted one resumes from its last checkpoint when the protocol runs again;
- children run in their own sessions: a Ctrl-C in the terminal reaches this process only, which stops
  them in order instead of every process at once;
- CPU runs (no GPU slot) get ``OMP_NUM_THREADS = cores / N`` unless it is set: N torch processes with a
  thread per core each would oversubscribe the machine many times over.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Sequence

from engine.utils.errors import UserError, interrupt_on_sigterm
from launch.runs import Run, open_console_log, with_torchrun

STOP_GRACE_S = (10.0, 5.0)  # after SIGINT, after SIGTERM; then SIGKILL


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when it is set, else every GPU
    ``nvidia-smi`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        if not ids:
            raise UserError("--gpus all: CUDA_VISIBLE_DEVICES is empty, so no GPU is visible")
        return ids
    if shutil.which("nvidia-smi") is None:
        raise UserError("--gpus all: no GPU found (nvidia-smi is not on PATH); on a CPU machine use --jobs N")
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                            text=True)
    ids = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    if listed.returncode or not ids:
        raise UserError(f"--gpus all: nvidia-smi lists no GPU ({(listed.stderr or listed.stdout).strip()[:200]})")
    return ids


def gpu_slots(spec: str, per_run: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each slot: ``--gpus`` (``0,1,2,3`` or ``all``) in consecutive groups of
    ``per_run``. An id may be listed twice to run two runs on one GPU."""
    ids = visible_gpus() if spec == "all" else [g.strip() for g in spec.split(",") if g.strip()]
    if not ids:
        raise UserError(f"--gpus takes GPU ids separated by commas (0,1,2,3) or 'all', got '{spec}'")
    if len(ids) % per_run:
        raise UserError(f"--gpus-per-run {per_run} does not divide the {len(ids)} GPUs of --gpus ({','.join(ids)})")
    return [",".join(ids[i:i + per_run]) for i in range(0, len(ids), per_run)]


def duration(seconds: float) -> str:
    """``42s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def eta_seconds(durations: Sequence[float], elapsed_running: Sequence[float], left: int, slots: int) -> float | None:
    """Time until every run has ended, from the mean duration of the runs finished so far: the runs left
    take the mean each, a running run the mean minus what it has run already (at least 0), and
    ``slots`` runs go at once. None before any run has finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = left * mean + sum(max(mean - e, 0.0) for e in elapsed_running)
    return work / max(slots, 1)


@dataclass
class Progress:
    """The counts of the progress line; ``done`` includes the runs finished before this launch."""

    total: int
    done: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)  # runs finished in this launch, successfully

    def line(self, running_elapsed: Sequence[float], slots: int | None) -> str:
        """``slots``: how many runs go at once, for the ETA (None: unknown, no ETA, as on a cluster)."""
        left = self.total - self.done - self.failed - len(running_elapsed)
        text = (f"progress: done {self.done}/{self.total}, running {len(running_elapsed)}, failed {self.failed}, "
                f"left {left}")
        if slots is None:
            return text
        eta = eta_seconds(self.durations, running_elapsed, left, slots)
        return f"{text}, ETA {duration(eta) if eta is not None else 'after the first run ends'}"


class Console:
    """Event lines (``run``, ``done``, ``failed``..., the word first, as scripts grep them) and the progress
    line. On a terminal the progress line stays below the events and is rewritten in place; elsewhere (a
    log file, a pipe) it is printed when it changes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._progress = ""

    def event(self, line: str) -> None:
        self.stream.write(f"\r\033[K{line}\n" if self.tty else f"{line}\n")
        if self.tty and self._progress:
            self.stream.write(self._progress)
        self.stream.flush()

    def progress(self, line: str) -> None:
        if line == self._progress and not self.tty:
            return
        self._progress = line
        self.stream.write(f"\r\033[K{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._progress:
            self.stream.write("\n")
            self.stream.flush()
        self._progress = ""


@dataclass
class _Active:
    run: Run
    slot: str | None
    process: subprocess.Popen
    log: IO[bytes]
    started: float


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the child leads its own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(processes: Sequence[subprocess.Popen], grace: Sequence[float] = STOP_GRACE_S) -> None:
    """Interrupt every process group and wait for the leaders: SIGINT, then SIGTERM, then SIGKILL to
    whatever is still running after each grace period."""
    for sig, wait_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), (*grace, 5.0)):
        alive = [p for p in processes if p.poll() is None]
        if not alive:
            return
        for p in alive:
            _signal_group(p, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.05)


def cpu_env(jobs: int) -> dict[str, str]:
    """Environment additions for CPU runs, ``jobs`` at once (see the module docstring)."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def run_pool(runs: Sequence[Run], slots: Sequence[str | None], per_run: int = 1, fail_fast: bool = False,
             done_before: int = 0, console: Console | None = None, poll_s: float = 0.2) -> int:
    """Run every run of ``runs`` (all unfinished) with ``len(slots)`` at once; a slot is the
    ``CUDA_VISIBLE_DEVICES`` of its runs, or None on CPUs. ``per_run`` > 1 runs each through torchrun with
    that many processes. Returns 0 when every run succeeded, 1 when any failed, 130 when interrupted."""
    console = console or Console()
    progress = Progress(total=done_before + len(runs), done=done_before)
    pending = deque(runs)
    free = list(slots)
    active: list[_Active] = []
    failed: list[Run] = []
    extra_env = cpu_env(len(slots)) if all(s is None for s in slots) else {}
    restore_sigterm = interrupt_on_sigterm()

    def show_progress() -> None:
        now = time.monotonic()
        console.progress(progress.line([now - a.started for a in active], len(slots)))

    def start(run: Run, slot: str | None) -> None:
        env = {**os.environ, **extra_env, **({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {})}
        log = open_console_log(run)
        try:
            process = subprocess.Popen(with_torchrun(run.command, per_run), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as e:
            log.close()
            raise UserError(f"cannot start {run.command[0]}: {e.strerror or e} (--python)") from None
        active.append(_Active(run, slot, process, log, time.monotonic()))
        where = f"GPU {slot}" if slot is not None else "CPU"
        console.event(f"run  {run.out} ({where}; log {run.console_log})")

    def finish(a: _Active) -> None:
        active.remove(a)
        a.log.close()
        free.append(a.slot)
        took = time.monotonic() - a.started
        code = a.process.returncode
        if code == 0 and a.run.finished:
            progress.done += 1
            progress.durations.append(took)
            console.event(f"done {a.run.out} ({duration(took)})")
        else:
            progress.failed += 1
            failed.append(a.run)
            why = f"exit code {code}" if code else "no results.json written"
            console.event(f"failed {a.run.out} ({why} after {duration(took)}; log {a.run.console_log})")

    try:
        while True:
            ended = [a for a in active if a.process.poll() is not None]
            for a in ended:
                finish(a)
            if fail_fast and failed:
                if active:
                    console.event(f"--fail-fast: stopping {len(active)} running run(s); they resume from their "
                                  f"last checkpoint when the protocol runs again")
                stop_processes([a.process for a in active])
                for a in list(active):
                    a.log.close()
                    active.remove(a)
                show_progress()
                break
            started = bool(pending and free)
            while pending and free:
                start(pending.popleft(), free.pop(0))
            if ended or started:
                show_progress()  # once per change: after the runs that ended and those that took their slots
            if not active:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        console.event(f"interrupted: stopping {len(active)} running run(s); finished runs are kept and the "
                      f"stopped ones resume from their last checkpoint when the protocol runs again")
        stop_processes([a.process for a in active])
        for a in active:
            a.log.close()
        console.close()
        return 130
    except BaseException:  # a run that cannot start (--python): leave nothing running behind
        stop_processes([a.process for a in active])
        raise
    finally:
        restore_sigterm()
    console.close()
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(r.out for r in failed), file=sys.stderr)
        return 1
    return 0
