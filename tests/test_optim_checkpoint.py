"""Optimisers, schedulers (with warm-up) and checkpoints that load with weights_only=True."""
from __future__ import annotations

import math
import os

import pytest
import torch

from engine.config import get_cfg_default
from engine.optim import build_lr_scheduler, build_optimizer
from engine.utils.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from engine.utils.errors import UserError


def _lrs(optim_overrides: dict, epochs: int) -> list[float]:
    cfg = get_cfg_default()
    cfg.OPTIM.LR = 1.0
    for k, v in optim_overrides.items():
        setattr(cfg.OPTIM, k, v)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg.OPTIM)
    sched = build_lr_scheduler(opt, cfg.OPTIM)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules():
    assert _lrs({"LR_SCHEDULER": "multi_step", "STEPSIZE": (2, 4)}, 6) == pytest.approx([1, 1, .1, .1, .01, .01])
    assert _lrs({"LR_SCHEDULER": "single_step", "STEPSIZE": (3,)}, 6) == pytest.approx([1, 1, 1, .1, .1, .1])
    cos = _lrs({"LR_SCHEDULER": "cosine", "MAX_EPOCH": 4}, 4)
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


def test_warmup_linear_then_constant_recount():
    # Dassl semantics: linear warm-up from MIN_LR over 2 epochs, then the successor from its epoch 0
    lrs = _lrs({"LR_SCHEDULER": "multi_step", "STEPSIZE": (2,), "WARMUP_EPOCH": 2, "WARMUP_MIN_LR": 0.01}, 6)
    assert lrs == pytest.approx([0.01, 0.5, 1, 1, .1, .1])
    lrs = _lrs({"LR_SCHEDULER": "single_step", "STEPSIZE": (10,), "WARMUP_EPOCH": 1, "WARMUP_TYPE": "constant",
                "WARMUP_CONS_LR": 0.05}, 3)
    assert lrs == pytest.approx([0.05, 1, 1])


def test_param_groups_keep_their_own_learning_rates():
    cfg = get_cfg_default()
    cfg.OPTIM.NAME, cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.STEPSIZE = "adamw", "multi_step", (1,)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = build_optimizer(None, cfg.OPTIM, param_groups=[{"params": a.parameters(), "lr": 1e-5},
                                                         {"params": b.parameters(), "lr": 1e-3}])
    sched = build_lr_scheduler(opt, cfg.OPTIM)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-6, 1e-4])


def test_unknown_names_are_user_errors():
    cfg = get_cfg_default()
    cfg.OPTIM.NAME = "adamax"
    with pytest.raises(UserError, match="unknown optimizer 'adamax'"):
        build_optimizer(torch.nn.Linear(1, 1), cfg.OPTIM)
    cfg.OPTIM.NAME, cfg.OPTIM.LR_SCHEDULER = "sgd", "poly"
    with pytest.raises(UserError, match="unknown lr scheduler 'poly'"):
        build_lr_scheduler(build_optimizer(torch.nn.Linear(1, 1), cfg.OPTIM), cfg.OPTIM)


def test_checkpoint_layout_atomic_and_weights_only(tmp_path):
    cfg = get_cfg_default()
    cfg.OPTIM.NAME, cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.STEPSIZE, cfg.OPTIM.WARMUP_EPOCH = "adamw", "multi_step", (2,), 1
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, cfg.OPTIM)
    sched = build_lr_scheduler(opt, cfg.OPTIM)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    d = str(tmp_path / "model")
    path = save_checkpoint({"state_dict": model.state_dict(), "epoch": 1, "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "val_result": None}, d)
    assert os.path.basename(path) == "model.pth.tar-1"
    assert sorted(os.listdir(d)) == ["checkpoint", "model.pth.tar-1"]  # no temp files left behind
    assert latest_checkpoint(d) == path
    ckpt = torch.load(path, weights_only=True)  # plain types and tensors only
    assert ckpt["epoch"] == 1 and ckpt["val_result"] is None
    sched2 = build_lr_scheduler(build_optimizer(torch.nn.Linear(3, 2), cfg.OPTIM), cfg.OPTIM)
    sched2.load_state_dict(ckpt["scheduler"])
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    d = str(tmp_path)
    path = save_checkpoint({"state_dict": torch.nn.Linear(3, 2).state_dict(), "epoch": 2}, d)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="cannot read checkpoint .*model.pth.tar-2"):
        load_checkpoint(path)
