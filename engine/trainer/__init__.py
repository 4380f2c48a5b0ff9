from engine.trainer.trainer import (TRAINER_REGISTRY, SimpleTrainer, TrainerBase, TrainerX, TrainerXU,
                                    build_trainer)

__all__ = ["TRAINER_REGISTRY", "SimpleTrainer", "TrainerBase", "TrainerX", "TrainerXU", "build_trainer"]
