"""Small helpers: seeding, folders, atomic file writes, leftovers of dead processes, JSON, optional compilation."""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one owned by another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
