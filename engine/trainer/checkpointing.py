"""Saving and restoring a trainer's registered models, with their optimisers and schedulers, in Dassl's
layout (the file format is :mod:`engine.utils.checkpoint`'s).

Each registered model ``name`` gets ``<dir>/<name>/model.pth.tar-<epoch>`` files holding its
``state_dict``, optimiser and scheduler states, and the entries every model of a checkpoint shares:
``epoch`` (completed epochs), ``val_result``, ``run_signature`` (what must match to resume: trainer,
backbone, data) and the trainer's extra state (RNG and loader positions; ``step_in_epoch`` for a
checkpoint taken inside an epoch).
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Any, Mapping

import torch.nn as nn

from engine.utils.checkpoint import (checkpoint_candidates, checkpoint_name, latest_checkpoint, load_checkpoint,
                                     prune_step_checkpoints, save_checkpoint)
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)


class ModelCheckpoints:
    """The checkpoint files of the models a trainer registered (it shares the trainer's mappings, so a model
    registered later is saved too)."""

    def __init__(self, models: Mapping[str, nn.Module], optims: Mapping[str, Any], scheds: Mapping[str, Any]) -> None:
        self.models, self.optims, self.scheds = models, optims, scheds

    def save(self, directory: str, shared: dict[str, Any], is_best: bool = False, model_name: str = "",
             inside_epoch: bool = False) -> str | None:
        """Write every model's checkpoint (``shared`` entries added to each); returns the last path written.
        ``model_name`` names the files (default: from ``shared["epoch"]``); checkpoints taken ``inside_epoch``
        are pruned to the two newest."""
        path = None
        for name, model in self.models.items():
            optim, sched = self.optims[name], self.scheds[name]
            state = {"state_dict": model.state_dict(),
                     "optimizer": optim.state_dict() if optim is not None else None,
                     "scheduler": sched.state_dict() if sched is not None else None,
                     **shared}
            path = save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)
            if inside_epoch:
                prune_step_checkpoints(osp.join(directory, name))
        return path

    def resume(self, directory: str, signature: dict[str, Any]) -> dict[str, Any] | None:
        """Restore every model, optimiser and scheduler from the newest readable checkpoint in ``directory``
        and return the first model's checkpoint (its shared entries), or None when there is nothing to resume.

        A checkpoint that cannot be read (a file truncated by a crash) is skipped with a warning and the one
        before it used; one whose ``run_signature`` differs from ``signature`` is refused."""
        names = list(self.models)
        candidates = {name: checkpoint_candidates(osp.join(directory, name)) for name in names}
        if not names or not any(candidates.values()):
            return None
        missing = [n for n, c in candidates.items() if not c]
        if missing:
            raise UserError(f"cannot resume from {directory}: no checkpoint for model(s) {', '.join(missing)}")
        for path in candidates[names[0]]:
            loaded = self._load_all(directory, osp.basename(path))
            if loaded is not None:
                break
        else:
            raise UserError(f"cannot resume from {directory}: no checkpoint there can be read")
        logger.info("Found checkpoint at %s (will resume training)", directory)
        for name, (ckpt_path, ckpt) in loaded.items():
            check_signature(ckpt, ckpt_path, signature)
            self._load_state_dict(name, ckpt["state_dict"], ckpt_path)
            if self.optims[name] is not None and ckpt.get("optimizer") is not None:
                self.optims[name].load_state_dict(ckpt["optimizer"])
            if self.scheds[name] is not None and ckpt.get("scheduler") is not None:
                self.scheds[name].load_state_dict(ckpt["scheduler"])
        path, ckpt = loaded[names[0]]
        step = int(ckpt.get("step_in_epoch") or 0)
        logger.info("Loaded %s (epoch %d%s)", path, ckpt["epoch"],
                    f", step {step} of epoch {ckpt['epoch'] + 1}" if step else "")
        return ckpt

    def load_weights(self, directory: str, epoch: int | str | None = None) -> int | None:
        """Load every model's weights for evaluation: ``model.pth.tar-<epoch>``, ``"best"``
        (``model-best.pth.tar``), or by default the newest checkpoint (the index), else the best.
        Returns the completed epochs of the (last) checkpoint loaded, None when nothing was loaded."""
        if not osp.isdir(directory):
            raise UserError(f"model directory not found: {directory}")
        if not self.models:
            logger.info("This trainer has no trained weights to load from %s", directory)
            return None
        epochs = None
        for name in self.models:
            path = _evaluation_checkpoint(osp.join(directory, name), name, epoch)
            ckpt = load_checkpoint(path)
            self._load_state_dict(name, ckpt["state_dict"], path)
            epochs = int(ckpt.get("epoch") or 0)
            val = ckpt.get("val_result")  # Dassl crashes when this is absent; it is optional here
            logger.info("Loaded model weights from %s (epoch %s%s)", path, ckpt.get("epoch"),
                        f", val_result {val:.2f}" if isinstance(val, (int, float)) else "")
        return epochs

    def _load_all(self, directory: str, filename: str) -> dict[str, tuple[str, dict]] | None:
        """Every model's checkpoint called ``filename``, or None (with a warning) if one is unreadable."""
        loaded = {}
        for name in self.models:
            path = osp.join(directory, name, filename)
            try:
                loaded[name] = (path, load_checkpoint(path))
            except UserError as e:
                logger.warning("Skipping checkpoint %s: %s; trying the one before it", path, e)
                return None
        return loaded

    def _load_state_dict(self, name: str, state_dict: dict, path: str) -> None:
        try:
            self.models[name].load_state_dict(state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = " ".join(first[1:3]).strip() if len(first) > 1 else first[0]
            raise UserError(f"checkpoint {path} does not fit model '{name}' (another backbone or class count?): "
                            f"{' '.join(detail.split())[:240]}") from None


def check_signature(ckpt: dict, path: str, current: dict[str, Any]) -> None:
    """A :class:`UserError` when the checkpoint's ``run_signature`` differs from ``current`` on a shared key."""
    saved = ckpt.get("run_signature") or {}
    diffs = [f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now"
             for k in current if k in saved and saved[k] != current[k]]
    if diffs:
        raise UserError(f"checkpoint {path} belongs to a different run ({'; '.join(diffs)}); "
                        f"use another --output-dir or remove that folder")


def _evaluation_checkpoint(model_dir: str, name: str, epoch: int | str | None) -> str:
    """The file :meth:`ModelCheckpoints.load_weights` reads for model ``name``, or a :class:`UserError`."""
    if epoch == "best":
        path = osp.join(model_dir, "model-best.pth.tar")
        if not osp.isfile(path):
            raise UserError(f"no best-model checkpoint: {path} does not exist "
                            f"(it is written with TEST.FINAL_MODEL best_val)")
    elif epoch is not None:
        path = osp.join(model_dir, checkpoint_name(epoch))
        if not osp.isfile(path):
            raise UserError(f"no checkpoint for epoch {epoch}: {path} does not exist")
    else:
        path = latest_checkpoint(model_dir) or osp.join(model_dir, "model-best.pth.tar")
        if not osp.isfile(path):
            raise UserError(f"no checkpoint of model '{name}' in {model_dir} "
                            f"(expected a 'checkpoint' index or model-best.pth.tar)")
    return path
