"""Zero-shot CLIP: no training; each seen class is scored by the similarity of the image to
hand-written prompts, and the unseen score is 1 - max softmax (MSP)."""
from __future__ import annotations

import logging

from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.trainer import TRAINER_REGISTRY, CLIPTrainer, TrainerX

logger = logging.getLogger(__name__)


@register_config_hook
def add_zsclip_config(cfg) -> None:
    cfg.TRAINER.ZSCLIP = CN()
    # One or more templates; with several, their normalised features are averaged per class.
    cfg.TRAINER.ZSCLIP.TEMPLATES = ("a photo of a face showing {}.",)


@TRAINER_REGISTRY.register()
class ZSCLIP(CLIPTrainer, TrainerX):
    """CLIP as released, prompted with ``TRAINER.ZSCLIP.TEMPLATES`` over the seen classes."""

    def build_model(self) -> None:
        clip_model = self.load_clip()
        self.class_text_features = self.fixed_text_features(clip_model, self.cfg.TRAINER.ZSCLIP.TEMPLATES)

    def train(self) -> None:
        logger.info("ZSCLIP has nothing to train: evaluating")
        self.before_train()
        self.after_train()
