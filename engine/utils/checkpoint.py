"""Checkpoints in Dassl's layout, written atomically, loadable with ``weights_only=True``.

Layout: ``<dir>/<model name>/model.pth.tar-<epoch>`` (plus ``model-best.pth.tar``) and a text file
``<dir>/<model name>/checkpoint`` naming the latest file, as Dassl writes them. A checkpoint holds only
tensors and plain Python types (Dassl pickles Python objects, which torch >= 2.6 refuses to load by
default): ``state_dict, epoch, optimizer, scheduler, val_result`` and, for resuming,
``rng_state`` and ``sampler_state``.
"""
from __future__ import annotations

import io
import logging
import os
import random
from typing import Any

import numpy as np
import torch

from engine.utils.errors import UserError
from engine.utils.tools import atomic_write_bytes, mkdir_if_missing

logger = logging.getLogger(__name__)

CHECKPOINT_INDEX = "checkpoint"


def checkpoint_name(epoch: int) -> str:
    return f"model.pth.tar-{epoch}"


def save_checkpoint(state: dict[str, Any], save_dir: str, is_best: bool = False, model_name: str = "") -> str:
    """Atomically save ``state`` to ``save_dir/model_name`` and point the index file at it."""
    mkdir_if_missing(save_dir)
    if not model_name:
        model_name = checkpoint_name(state["epoch"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    fpath = os.path.join(save_dir, model_name)
    atomic_write_bytes(fpath, data)
    atomic_write_bytes(os.path.join(save_dir, CHECKPOINT_INDEX), (model_name + "\n").encode())
    if is_best:
        atomic_write_bytes(os.path.join(save_dir, "model-best.pth.tar"), data)
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
