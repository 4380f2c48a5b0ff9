"""Optimiser builder (Dassl's ``build_optimizer``): ``sgd``, ``adam``, ``adamw``."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from engine.utils.errors import UserError

AVAILABLE_OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(model: nn.Module | Iterable, optim_cfg, param_groups: list[dict] | None = None
                    ) -> torch.optim.Optimizer:
    """Build the optimiser named ``optim_cfg.NAME``.

    ``param_groups`` (list of dicts with ``params`` and optionally ``lr``, ``weight_decay``) gives
    parts of a model their own learning rates, e.g. PromptEmo's image encoder at 1e-5 and prompt
    vectors at 1e-3; otherwise every trainable parameter of ``model`` shares ``optim_cfg.LR``.
    With ``OPTIM.FUSED`` and every parameter on a GPU, the fused (single-kernel) implementation is used.
    """
    name = optim_cfg.NAME
    if name not in AVAILABLE_OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}' (OPTIM.NAME); choose from {', '.join(AVAILABLE_OPTIMIZERS)}")
    if param_groups is not None:
        params = [{**group, "params": list(group["params"])} for group in param_groups]
    elif isinstance(model, nn.Module):
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = list(model)
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    extra = {"fused": True} if optim_cfg.FUSED and _all_on_gpu(params) else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV, **extra)
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, **extra)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas, **extra)


def _all_on_gpu(params) -> bool:
    # Fused kernels take CUDA tensors only; one CPU parameter would make the optimiser refuse.
    tensors = [p for group in params for p in group["params"]] if params and isinstance(params[0], dict) else params
    tensors = list(tensors)
    return bool(tensors) and all(t.is_cuda for t in tensors)
