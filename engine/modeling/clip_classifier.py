"""CLIP as a classifier over class prompts, in one module: what the training step of a CLIP trainer calls."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.modeling import clip_backbone
from engine.modeling.clip_text import PromptLearner


class CLIPClassifier(nn.Module):
    """CLIP's image encoder and class text features in one module (CoOp's ``CustomCLIP``): the module a CLIP
    trainer's training step calls, and under torchrun the one ``DistributedDataParallel`` wraps.

    ``forward(images)`` returns ``(image_features (N, D), text_features (K, D))``, both L2-normalised fp32:

    - the images through ``image_encoder`` (CLIP's visual, or its compiled form), under bf16 autocast when ``bf16``;
      gradients reach it when its parameters require them (the Baseline, PromptEmo); a frozen encoder builds no
      graph (CoOp);
    - the class text features: the prompt learner's prompts through CLIP's frozen ``text_encoder`` (CoOp,
      PromptEmo's positive prompts), or fixed features given as a tensor (the Baseline's ``a photo of {}.``).

    The logits are the trainer's (CLIP's scale, PromptEmo's negative prompts). Nothing of this module is saved as
    such: the trainer registers the parts it trains (image encoder, prompt learner) on their own, so checkpoints
    keep those parts' keys.
    """

    def __init__(self, image_encoder: nn.Module, class_text: torch.Tensor | PromptLearner,
                 text_encoder: nn.Module | None = None, bf16: bool = False) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.bf16 = bf16
        if isinstance(class_text, PromptLearner):
            if text_encoder is None:
                raise ValueError("a prompt learner needs CLIP's text encoder")
            self.prompt_learner, self.text_encoder = class_text, text_encoder
        else:
            self.prompt_learner = self.text_encoder = None
            self.register_buffer("fixed_text_features", class_text.detach(), persistent=False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features ``(N, D)``."""
        return clip_backbone.encode_images(self.image_encoder, images, self.bf16)

    def text_features(self) -> torch.Tensor:
        """``(K, D)`` L2-normalised fp32 class text features (fixed, or the prompts through the text encoder under
        the run's precision, gradients reaching the learned vectors)."""
        if self.prompt_learner is None:
            return self.fixed_text_features
        prompts = self.prompt_learner()
        with torch.autocast(device_type=prompts.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            features = self.text_encoder(prompts, self.prompt_learner.tokenized_prompts)
        return F.normalize(features.float(), dim=-1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(images), self.text_features()
