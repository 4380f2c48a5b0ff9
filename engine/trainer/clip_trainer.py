"""``CLIPTrainer``: what every trainer built on CLIP shares (ZSCLIP, CoOp, the Baseline, PromptEmo).

- :attr:`CLIPTrainer.classnames`: the seen classes' names in label order (prompt ``k`` is class ``k``);
- :meth:`CLIPTrainer.load_clip`: ``MODEL.BACKBONE.NAME`` on the trainer's device, CLIP's logit scale kept as
  a frozen constant (:attr:`logit_scale`, a float) and the image encoder as called (:attr:`encoder`,
  compiled under ``MODEL.COMPILE``);
- :meth:`CLIPTrainer.encode_images` / :meth:`image_features`: L2-normalised fp32 image features under the
  run's precision, with or without autograd;
- class text features: fixed prompts through the frozen text encoder (:meth:`fixed_text_features`) or a
  prompt learner's prompts;
- :meth:`CLIPTrainer.build_clip_network`: the image encoder and the class text features in one module,
  :attr:`clip` (:class:`~engine.modeling.clip_classifier.CLIPClassifier`), and :attr:`network`, the same as
  a training step calls it (under torchrun wrapped in DistributedDataParallel);
- MSP inference: :meth:`model_inference` returns ``softmax(logit_scale * cos(image, class text))`` over the
  seen classes and the evaluator's unseen score is ``1 - max``. A trainer with another classifier
  overrides :meth:`class_probabilities`; one whose text features change as it trains overrides
  :meth:`text_features`.

Combine it with the loop a method needs: ``class CoOp(CLIPTrainer, TrainerX)``,
``class PromptEmo(CLIPTrainer, TrainerXU)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from engine.modeling import clip_backbone
from engine.modeling.clip_backbone import CLIP
from engine.modeling.clip_classifier import CLIPClassifier
from engine.modeling.clip_text import PromptLearner, encode_sentences
from engine.trainer.trainer import SimpleTrainer
from engine.utils import distributed
from engine.utils.tools import compiled


class CLIPTrainer(SimpleTrainer):
    """Shared pieces of CLIP trainers (see the module docstring)."""

    logit_scale: float
    image_encoder: torch.nn.Module
    encoder: Callable[[torch.Tensor], torch.Tensor]
    text_encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # set by trainers that learn prompts
    class_text_features: torch.Tensor  # (K, D), set by trainers whose class prompts are fixed
    clip: CLIPClassifier  # set by build_clip_network
    network: torch.nn.Module  # clip as a training step calls it

    @property
    def classnames(self) -> list[str]:
        """The seen classes' names in label order."""
        return [self.lab2cname[k] for k in sorted(self.lab2cname)]

    def load_clip(self, name: str | None = None, image_encoder: bool = True) -> CLIP:
        """CLIP ``name`` (default ``MODEL.BACKBONE.NAME``) on the trainer's device (fp32). Sets
        :attr:`logit_scale`, CLIP's scale as a constant (never trained here), :attr:`image_encoder`
        (``clip_model.visual``, the module to register and save, so that checkpoint keys stay plain) and
        :attr:`encoder`, the image encoder as the trainer calls it (compiled under ``MODEL.COMPILE``).
        ``image_encoder=False``: a trainer that uses CLIP's text side only (its images go through another
        network); the image encoder is neither checked against ``INPUT.SIZE`` nor kept."""
        if not image_encoder:
            clip_model = clip_backbone.load_clip(name or self.cfg.MODEL.BACKBONE.NAME,
                                                 self.cfg.MODEL.BACKBONE.DOWNLOAD_ROOT or None).to(self.device)
            self.logit_scale = clip_model.logit_scale.exp().item()
            return clip_model
        clip_model = clip_backbone.build_clip_for(self.cfg, self.device, name)
        self.logit_scale = clip_model.logit_scale.exp().item()
        self.image_encoder = clip_model.visual
        self.encoder = compiled(self.image_encoder, self.cfg)
        return clip_model

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features ``(N, D)``, the encoder under bf16 autocast when the run asks
        for it; gradients flow (training)."""
        return clip_backbone.encode_images(self.encoder, images, self.use_bf16)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images)

    def fixed_text_features(self, clip_model: CLIP, templates: Sequence[str]) -> torch.Tensor:
        """``(K, D)`` features of the seen classes' prompts ``template.format(classname)`` through CLIP's text
        encoder, L2-normalised; with several templates, the normalised mean of their features (CLIP's prompt
        ensembling). No gradient: fixed prompts are constants of a run."""
        per_template = [encode_sentences(clip_model, [t.format(c) for c in self.classnames], self.device)
                        for t in templates]
        if len(per_template) == 1:
            return per_template[0]
        return F.normalize(torch.stack(per_template).mean(0), dim=-1)

    def build_clip_network(self, class_text: torch.Tensor | PromptLearner) -> CLIPClassifier:
        """Set :attr:`clip`, the image encoder as called (:attr:`encoder`) and the class text features of
        ``class_text`` (fixed features, or a prompt learner's prompts through :attr:`text_encoder`) in one module,
        and :attr:`network`, that module as a training step calls it: wrapped in DistributedDataParallel under
        torchrun (:func:`engine.utils.distributed.data_parallel`). Call it when the trained parameters are set."""
        self.clip = CLIPClassifier(self.encoder, class_text, getattr(self, "text_encoder", None), self.use_bf16)
        self.network = distributed.data_parallel(self.clip, self.device)
        return self.clip

    def text_features(self) -> torch.Tensor:
        """``(K, D)`` the class text features of the classifier: :attr:`class_text_features` unless overridden."""
        return self.class_text_features

    def class_logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``logit_scale * cos(image, class text)``, ``(N, K)``; the class text features are :meth:`text_features`
        unless given."""
        text_features = self.text_features() if text_features is None else text_features
        return self.logit_scale * image_features @ text_features.t()

    def class_probabilities(self, image_features: torch.Tensor) -> torch.Tensor:
        """Seen-class probabilities ``(N, K)`` of normalised image features."""
        return self.class_logits(image_features).softmax(dim=-1)

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_probabilities(self.image_features(images))
