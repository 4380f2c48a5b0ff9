from engine.trainer.base import TrainerBase
from engine.trainer.clip_trainer import CLIPTrainer
from engine.trainer.trainer import TRAINER_REGISTRY, SimpleTrainer, TrainerX, TrainerXU, build_trainer

__all__ = ["TRAINER_REGISTRY", "CLIPTrainer", "SimpleTrainer", "TrainerBase", "TrainerX", "TrainerXU", "build_trainer"]
