"""Small helpers: seeding, folders, atomic file writes, leftovers of dead processes, JSON, optional compilation."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.utils.processes import pid_alive


def set_random_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices). A negative seed leaves everything random."""
    if seed < 0:
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def set_cudnn_benchmark(cfg, device: torch.device) -> None:
    """On CUDA, ``torch.backends.cudnn.benchmark = CUDNN_BENCHMARK`` (Dassl's tools/train.py sets it True):
    cuDNN times its convolution algorithms for each new input shape and keeps the fastest, instead of
    picking one by heuristics. The flag is process-wide; on a CPU it is left alone."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)


# torch.compile's modes; those that also replay compiled graphs as CUDA graphs map to their twin without
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
WITHOUT_CUDA_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compiled(fn, cfg, cuda_graphs: bool = True, **options):
    """``torch.compile(fn, mode=MODEL.COMPILE_MODE, **options)`` (a module or a function) when
    ``MODEL.COMPILE`` is on, else ``fn``. Trainers call the result but register and save the module itself,
    so checkpoints keep their plain parameter names. Compiling saves GPU time (fused kernels) and host time:
    in eager mode every small operation is a separate launch, and on a fast GPU the host's launches, not the
    kernels, can set the pace.

    With CUDA graphs (modes ``reduce-overhead`` and ``max-autotune`` on a GPU) a whole graph replays in one
    launch, but its outputs live in memory that a later replay overwrites: use them within the step (the
    trainer marks each step's start, :meth:`SimpleTrainer.begin_step`) and ``clone()`` what must outlive it.
    ``cuda_graphs=False`` compiles ``fn`` in the same mode without them, for a function called more than once
    per step whose outputs are all needed at once (the cache's augmentation of the source and target batches)."""
    if not cfg.MODEL.COMPILE:
        return fn
    mode = cfg.MODEL.COMPILE_MODE
    if not cuda_graphs:
        mode = WITHOUT_CUDA_GRAPHS.get(mode, mode)
    if mode != "default":  # only inductor knows modes; tests swap in other backends, which warn about one
        options["mode"] = mode
    return torch.compile(fn, **options)


def uses_cuda_graphs(cfg, device: torch.device) -> bool:
    """Whether :func:`compiled` code replays as CUDA graphs on ``device`` (inductor skips them on CPUs)."""
    return bool(cfg.MODEL.COMPILE) and cfg.MODEL.COMPILE_MODE in WITHOUT_CUDA_GRAPHS and device.type == "cuda"


def mkdir_if_missing(path: str | os.PathLike) -> None:
    os.makedirs(path, exist_ok=True)


HOST = socket.gethostname()
# The output lock's file in an output folder (engine.utils.output_lock)
LOCK_NAME = ".lock"
# Temporary names of interrupted writes: ".<name>.<pid>@<host>.tmp" (atomic_write_bytes, the output lock), and
# ".<name>.<8 characters>.tmp" of tempfile.mkstemp, as earlier versions named them
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[^/]+)\.tmp$")
_MKSTEMP_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def temporary_name(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_write_bytes` writes ``path`` before renaming it: a hidden file beside it naming this
    process and host, so that a leftover of a killed writer can be told from a write in progress."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}@{HOST}.tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half. The file gets
    the mode any new file gets (0666 less the umask), as ``open(path, "wb")`` would give it. One writer of
    ``path`` at a time per process."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # left by a killed process that had this pid
        os.remove(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_write_leftovers(folder: str | os.PathLike, locked: bool = False) -> list[str]:
    """Remove the temporaries of interrupted writes (:func:`temporary_name`) in ``folder`` and its sub-folders
    that no process will finish: those of processes that no longer run on this host and, when the caller holds
    ``folder``'s output lock (``locked``, so that no other run writes there), those of other hosts and the
    ``tempfile.mkstemp`` names of earlier versions. A sub-folder with a lock of its own (another run's output
    folder) only loses leftovers of dead processes of this host. Returns the removed paths."""
    removed = []
    folder = str(folder)
    try:
        subfolders = [os.path.join(folder, e.name) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return removed
    for directory in [folder] + subfolders:
        owned = locked and (directory == folder or not os.path.exists(os.path.join(directory, LOCK_NAME)))
        for name in os.listdir(directory):
            match = _TEMPORARY.match(name)
            if match:
                pid, host = int(match["pid"]), match["host"]
                dead_here = host == HOST and pid != os.getpid() and not pid_alive(pid)
                if not (dead_here or (owned and host != HOST)):
                    continue
            elif not (owned and _MKSTEMP_TEMPORARY.match(name)):
                continue
            path = os.path.join(directory, name)
            try:
                os.remove(path)
            except (FileNotFoundError, IsADirectoryError):
                continue
            removed.append(path)
    return removed


def remove_dead_leftovers(folder: str | os.PathLike, prefix: str) -> list[str]:
    """Remove the entries of ``folder`` named ``<prefix><pid>`` (files or folders) whose process no longer
    runs, or is this one: the temporaries of interrupted writes, which name their writer's pid last. Entries
    of live processes are theirs to finish. Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        pid = name[len(prefix):]
        if not (name.startswith(prefix) and pid.isdigit()):
            continue
        if int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        removed.append(path)
    return removed


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write ``obj`` as indented JSON (NaN written as null, which JSON can parse)."""
    atomic_write_bytes(path, (json.dumps(_nan_to_none(obj), indent=2) + "\n").encode())


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
