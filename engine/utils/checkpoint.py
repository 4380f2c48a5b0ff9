"""Checkpoints in Dassl's layout, written atomically, loadable with ``weights_only=True``.

Layout: ``<dir>/<model name>/model.pth.tar-<epoch>`` (plus ``model-best.pth.tar``) and a text file
``<dir>/<model name>/checkpoint`` naming the latest file, as Dassl writes them. A checkpoint holds only
tensors and plain Python types (Dassl pickles Python objects, which torch >= 2.6 refuses to load by
default): ``state_dict, epoch, optimizer, scheduler, val_result`` and, for resuming,
``rng_state``, ``loader_state`` and, for a checkpoint written in the middle of an epoch
(``model.pth.tar-<epoch>-step<k>``), ``step_in_epoch``. ``epoch`` always counts completed epochs.
"""
from __future__ import annotations

import io
import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch

from engine.utils.errors import UserError
from engine.utils.tools import atomic_write_bytes, mkdir_if_missing

logger = logging.getLogger(__name__)

CHECKPOINT_INDEX = "checkpoint"
_NAME = re.compile(r"^model\.pth\.tar-(\d+)(?:-step(\d+))?$")


def checkpoint_name(epoch: int) -> str:
    """The checkpoint written when epoch ``epoch`` (1-based) ends, as Dassl names it."""
    return f"model.pth.tar-{epoch}"


def step_checkpoint_name(epoch: int, step: int) -> str:
    """The checkpoint written after ``step`` steps of epoch ``epoch`` (both 1-based)."""
    return f"model.pth.tar-{epoch}-step{step}"


def _position(name: str) -> tuple[int, int] | None:
    """(completed epochs, steps into the next epoch) of a checkpoint file name, or None."""
    m = _NAME.match(name)
    if not m:
        return None
    epoch, step = int(m.group(1)), m.group(2)
    return (epoch, 0) if step is None else (epoch - 1, int(step))


def checkpoint_candidates(model_dir: str) -> list[str]:
    """Every checkpoint in ``model_dir``, newest first: the one the index names, then the others by
    training position. Resuming walks this list until one loads, so a truncated newest file falls
    back to the one before it."""
    if not os.path.isdir(model_dir):
        return []
    found = sorted(((pos, name) for name in os.listdir(model_dir) if (pos := _position(name))), reverse=True)
    paths = [os.path.join(model_dir, name) for _, name in found]
    latest = latest_checkpoint(model_dir)
    if latest in paths:
        paths.remove(latest)
        paths.insert(0, latest)
    return paths


def prune_step_checkpoints(model_dir: str, keep: int = 2) -> None:
    """Remove all but the ``keep`` newest mid-epoch checkpoints (epoch checkpoints are never removed)."""
    steps = sorted(((pos, name) for name in os.listdir(model_dir)
                    if (pos := _position(name)) and "-step" in name), reverse=True)
    for _, name in steps[keep:]:
        try:
            os.remove(os.path.join(model_dir, name))
        except FileNotFoundError:
            pass


def save_checkpoint(state: dict[str, Any], save_dir: str, is_best: bool = False, model_name: str = "") -> str:
    """Atomically save ``state`` to ``save_dir/model_name`` and point the index file at it."""
    try:
        mkdir_if_missing(save_dir)
    except OSError as e:
        raise UserError(f"cannot create checkpoint folder {save_dir}: {e.strerror or e}") from None
    if not model_name:
        model_name = checkpoint_name(state["epoch"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    fpath = os.path.join(save_dir, model_name)
    try:
        atomic_write_bytes(fpath, data)
        atomic_write_bytes(os.path.join(save_dir, CHECKPOINT_INDEX), (model_name + "\n").encode())
        if is_best:
            atomic_write_bytes(os.path.join(save_dir, "model-best.pth.tar"), data)
    except OSError as e:
        # The write goes to a temporary file renamed at the end: earlier checkpoints are untouched.
        raise UserError(f"cannot write checkpoint {fpath}: {e.strerror or e}; "
                        f"the checkpoints already in {save_dir} are intact") from None
    return fpath


def load_checkpoint(fpath: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or unreadable file is a UserError."""
    if not os.path.isfile(fpath):
        raise UserError(f"checkpoint not found: {fpath}")
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read checkpoint {fpath} (truncated or not a checkpoint of this project): "
                        f"{' '.join(str(e).split())[:200]}") from e


def latest_checkpoint(model_dir: str) -> str | None:
    """Path of the checkpoint named by ``model_dir/checkpoint``, or None if there is none."""
    index = os.path.join(model_dir, CHECKPOINT_INDEX)
    if not os.path.isfile(index):
        return None
    with open(index) as f:
        name = f.read().strip()
    path = os.path.join(model_dir, name)
    return path if name and os.path.isfile(path) else None


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as tensors and plain types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    # weights_only loading returns lists where tuples were saved; random.setstate needs tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
