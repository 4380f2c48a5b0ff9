"""Inference shared by the trainers whose classifier is a fixed set of class text features (ZSCLIP,
Baseline): seen-class probabilities = softmax(logit_scale * cos(image, class text)); the evaluator's
unseen score is then 1 - max softmax (MSP)."""
from __future__ import annotations

import torch

from engine.modeling.clip_backbone import encode_images


class FixedTextHead:
    """Mixin for a trainer that sets ``encoder`` (the image encoder), ``text_features`` (C x D,
    L2-normalised), ``logit_scale`` and has the engine's ``use_bf16``."""

    encoder: torch.nn.Module
    text_features: torch.Tensor
    logit_scale: float
    use_bf16: bool

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.encoder, images, self.use_bf16)

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return (self.logit_scale * self.image_features(images) @ self.text_features.t()).softmax(dim=-1)
