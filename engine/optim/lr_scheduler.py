"""Learning-rate schedulers (Dassl's ``build_lr_scheduler``), stepped once per epoch, or after every
training step with ``OPTIM.LR_UPDATE step`` (the loop does it).

``single_step`` (StepLR), ``multi_step`` (MultiStepLR), ``cosine`` (CosineAnnealingLR over
MAX_EPOCH), ``inverse_decay`` (``lr * (1 + gamma * min(1, t / max_iter)) ** -power`` at step ``t``, the
"inv" policy of Caffe and DANN: ``OPTIM.INVERSE_DECAY.*``, meant for ``LR_UPDATE step``);
``OPTIM.WARMUP_EPOCH > 0`` puts a ``constant`` or ``linear`` warm-up in front.
Every scheduler's ``state_dict`` holds only plain types, so checkpoints load with
``weights_only=True`` (Dassl's warm-up scheduler pickles its successor object).
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, MultiStepLR, StepLR

from engine.utils.errors import UserError

AVAILABLE_LR_SCHEDULERS = ("single_step", "multi_step", "cosine", "inverse_decay")
LR_UPDATES = ("epoch", "step")


class WarmupScheduler(LRScheduler):
    """Warm-up for ``warmup_epoch`` epochs, then hand over to ``successor``.

    ``constant``: every group at ``cons_lr``. ``linear``: from ``min_lr`` towards each group's base
    lr. With ``recount`` (Dassl's default) the successor starts at its epoch 0 when warm-up ends;
    without, it continues as if it had been running since epoch 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int,
                 warmup_type: str = "linear", cons_lr: float = 1e-5, min_lr: float = 1e-5,
                 recount: bool = True) -> None:
        if warmup_type not in ("linear", "constant"):
            raise UserError(f"OPTIM.WARMUP_TYPE must be 'linear' or 'constant', got '{warmup_type}'")
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.warmup_type = warmup_type
        self.cons_lr = cons_lr
        self.min_lr = min_lr
        if not recount:
            successor.last_epoch = warmup_epoch
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.warmup_type == "constant":
            return [self.cons_lr for _ in self.base_lrs]
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= self.warmup_epoch:
            # As Dassl: the warm-up counter stops; the successor counts from here on.
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.successor.load_state_dict(state_dict.pop("successor"))
        self.__dict__.update(state_dict)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> LRScheduler:
    name = optim_cfg.LR_SCHEDULER
    stepsize = list(optim_cfg.STEPSIZE)
    max_epoch = optim_cfg.MAX_EPOCH
    if name == "single_step":
        step = stepsize[-1] if stepsize else -1
        scheduler = StepLR(optimizer, step_size=step if step > 0 else max(max_epoch, 1), gamma=optim_cfg.GAMMA)
    elif name == "multi_step":
        if not stepsize or any(s <= 0 for s in stepsize):
            raise UserError(f"OPTIM.STEPSIZE must list positive milestone epochs for multi_step, got {stepsize}")
        scheduler = MultiStepLR(optimizer, milestones=stepsize, gamma=optim_cfg.GAMMA)
    elif name == "cosine":
        scheduler = CosineAnnealingLR(optimizer, T_max=max(max_epoch, 1))
    elif name == "inverse_decay":
        c = optim_cfg.INVERSE_DECAY
        gamma, power, max_iter = float(c.GAMMA), float(c.POWER), max(int(c.MAX_ITER), 1)
        scheduler = LambdaLR(optimizer, lambda t: (1.0 + gamma * min(1.0, t / max_iter)) ** -power)
    else:
        raise UserError(f"unknown lr scheduler '{name}' (OPTIM.LR_SCHEDULER); "
                        f"choose from {', '.join(AVAILABLE_LR_SCHEDULERS)}")
    if optim_cfg.WARMUP_EPOCH > 0:
        scheduler = WarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_TYPE,
                                    optim_cfg.WARMUP_CONS_LR, optim_cfg.WARMUP_MIN_LR, optim_cfg.WARMUP_RECOUNT)
    return scheduler
