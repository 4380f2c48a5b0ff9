from engine.optim.lr_scheduler import build_lr_scheduler
from engine.optim.optimizer import build_optimizer

__all__ = ["build_optimizer", "build_lr_scheduler"]
