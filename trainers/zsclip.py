"""Zero-shot CLIP: no training; each seen class is scored by the similarity of the image to
hand-written prompts, and the unseen score is 1 - max softmax (MSP)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.modeling.clip_backbone import build_clip_for
from engine.modeling.clip_text import encode_sentences
from engine.trainer import TRAINER_REGISTRY, TrainerX
from engine.utils.tools import compiled
from trainers.text_head import FixedTextHead

logger = logging.getLogger(__name__)


@register_config_hook
def add_zsclip_config(cfg) -> None:
    cfg.TRAINER.ZSCLIP = CN()
    # One or more templates; with several, their normalised features are averaged per class.
    cfg.TRAINER.ZSCLIP.TEMPLATES = ("a photo of a face showing {}.",)


@TRAINER_REGISTRY.register()
class ZSCLIP(FixedTextHead, TrainerX):
    """CLIP as released, prompted with ``TRAINER.ZSCLIP.TEMPLATES`` over the seen classes."""

    def build_model(self) -> None:
        cfg = self.cfg
        self.clip_model = build_clip_for(cfg, self.device).eval()
        self.encoder = compiled(self.clip_model.visual, cfg)
        features = torch.stack([
            encode_sentences(self.clip_model, [t.format(c) for c in self.lab2cname.values()], self.device)
            for t in cfg.TRAINER.ZSCLIP.TEMPLATES
        ]).mean(0)
        self.text_features = F.normalize(features, dim=-1)
        self.logit_scale = self.clip_model.logit_scale.exp().item()

    def train(self) -> None:
        logger.info("ZSCLIP has nothing to train: evaluating")
        self.before_train()
        self.after_train()
