"""PromptEmo (Zeng et al.): CLIP with bilateral textual prompts for multi-domain open-set FER.

- Positive prompt of seen class k (eq. 1): ``[SOS] delta_k (N0 learnable vectors) tok(description_k) [EOS]``
  through the frozen text encoder; the description is a facial-behaviour text from
  ``TRAINER.PROMPTEMO.DESCRIPTIONS``.
- Negative prompt (eq. 2): ``This expression is not {class}.``, encoded once (the encoder is frozen).
- The image encoder is fine-tuned (``OPTIM.LR``, paper 1e-5); the prompt vectors have their own
  learning rate (``TRAINER.PROMPTEMO.PROMPT_LR``, paper 1e-3); the logit scale stays at CLIP's value.
- Losses (``trainers/promptemo_losses.py``): L_PS, L_NS on sources, L_PT, L_NT on pseudo-labelled
  target images, L_ESS between positive and negative prompts, L_LDA (MK-MMD, sources vs target).
- Inference: ``(P_P + P_N) / 2``; unseen score ``1 - max``.

Ablations (Tables 3 and 4 of the paper) are config switches, see ``add_promptemo_config`` and
``configs/trainers/PromptEmo/ablations/``.
"""
from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from datasets.classes import CANONICAL_CLASSES, canonical_name
from engine.config import register_config_hook
from engine.modeling.clip_classifier import CLIPClassifier
from engine.modeling.clip_text import PromptLearner, TextEncoder, encode_sentences
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, CLIPTrainer, TrainerXU
from engine.utils.distributed import gather_rows
from engine.utils.errors import UserError
from engine.utils.tools import compiled
from trainers import promptemo_losses as L

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Table 4: (A) and (B) are fixed templates; (C) descriptions alone; (D) descriptions with delta_k.
POSITIVE_PROMPT_KINDS = {"A": "a photo of {}.", "B": "an expression of {}.", "C": None, "D": None}


@register_config_hook
def add_promptemo_config(cfg) -> None:
    cfg.TRAINER.PROMPTEMO = CN()
    c = cfg.TRAINER.PROMPTEMO
    c.N_CTX = 8  # N0, learnable vectors per class (delta_k)
    c.CTX_INIT_STD = 0.02
    c.PROMPT_LR = 1e-3  # delta_k's learning rate; the image encoder uses OPTIM.LR
    c.POS_PROMPT = "D"  # Table 4: A "a photo of {}.", B "an expression of {}.", C descriptions, D + delta_k
    c.DESCRIPTIONS = "configs/descriptions/facs.json"  # {class: description}; relative to cwd or repo
    c.NEG_TEMPLATE = "This expression is not {}."
    c.USE_NEG = True  # negative prompts, L_NS, L_NT and (P_P + P_N)/2 at inference
    c.USE_TARGET = True  # L_PT, L_NT (pseudo-labelled target terms)
    c.USE_ESS = True
    c.USE_LDA = True
    c.ALPHA = 0.1
    c.BETA = 0.3
    c.GAMMA = 0.2
    c.TAU = 0.8
    c.NEG_SCALE = -1.0  # s_N of eq. 6; negative = half CLIP's logit scale (then P_N = softmax(-s cos))
    c.MMD_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
    c.FINETUNE_VISUAL = True


def load_descriptions(path: str, classnames: list[str]) -> list[str]:
    """The description of each class in ``classnames`` from a JSON file ``{class: text}``
    (keys may be aliases; keys starting with ``_`` are comments)."""
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(REPO_ROOT, path)]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise UserError(f"descriptions file not found: {path} (TRAINER.PROMPTEMO.DESCRIPTIONS)")
    try:
        with open(found) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"descriptions file {found} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"descriptions file {found} must hold a JSON object {{class: description}}")
    by_class = {}
    for key, text in raw.items():
        if key.startswith("_"):
            continue
        name = canonical_name(key)
        if name is None:
            raise UserError(f"descriptions file {found}: '{key}' is not an expression class "
                            f"(expected {', '.join(CANONICAL_CLASSES)} or an alias)")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"descriptions file {found}: the description of '{key}' must be a non-empty string, "
                            f"got {json.dumps(text)}")
        by_class[name] = text.strip()
    missing = [c for c in classnames if c not in by_class]
    if missing:
        raise UserError(f"descriptions file {found} has no description of {', '.join(missing)}")
    return [by_class[c] for c in classnames]


class PromptEmoNet(nn.Module):
    """What PromptEmo trains and saves: the CLIP image encoder and the positive prompt learner.
    The frozen text encoder and the negative features live beside it (rebuilt from the backbone); a training step
    calls both trained parts through the trainer's :attr:`~PromptEmo.clip` (image encoder as called, the prompts
    through the text encoder, in one module)."""

    def __init__(self, image_encoder: nn.Module, prompt_learner: PromptLearner) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_learner = prompt_learner


@TRAINER_REGISTRY.register()
class PromptEmo(CLIPTrainer, TrainerXU):
    """Bilateral prompts, ISO (L_ESS, L_LDA) and CEI (L_PS, L_NS, L_PT, L_NT); see module docstring."""

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        c = cfg.TRAINER.PROMPTEMO
        if c.POS_PROMPT not in POSITIVE_PROMPT_KINDS:
            raise UserError(f"TRAINER.PROMPTEMO.POS_PROMPT must be one of A, B, C, D, got '{c.POS_PROMPT}'")
        if c.USE_ESS and not c.USE_NEG:
            raise UserError("TRAINER.PROMPTEMO.USE_ESS needs the negative prompts (USE_NEG True)")

    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.PROMPTEMO
        classnames = self.classnames
        clip_model = self.load_clip()  # also CLIP's logit scale, frozen (s of eq. 5)

        template = POSITIVE_PROMPT_KINDS[c.POS_PROMPT]
        texts = [template.format(n) for n in classnames] if template else load_descriptions(c.DESCRIPTIONS, classnames)
        n_ctx = c.N_CTX if c.POS_PROMPT == "D" else 0
        prompt_learner = PromptLearner(clip_model, texts, n_ctx=n_ctx, class_specific=True,
                                       init_std=c.CTX_INIT_STD, names=classnames)
        text_encoder = TextEncoder(clip_model).to(self.device).requires_grad_(False)
        self.text_encoder = compiled(text_encoder, cfg)
        self.model = PromptEmoNet(clip_model.visual, prompt_learner).to(self.device)
        self.model.image_encoder.requires_grad_(bool(c.FINETUNE_VISUAL))
        logger.info("Positive prompts (%s): %s", c.POS_PROMPT, texts)

        # Frozen encoder, fixed sentences: h_N is a constant, computed once.
        neg_sentences = [c.NEG_TEMPLATE.format(n) for n in classnames]
        self.neg_features = encode_sentences(clip_model, neg_sentences, self.device)
        positive = prompt_learner
        if not n_ctx:  # fixed positive prompts (Table 4 A-C): h_P is a constant as well
            with torch.no_grad():
                positive = CLIPClassifier(self.encoder, prompt_learner, self.text_encoder,
                                          self.use_bf16).text_features()
        self.neg_scale = c.NEG_SCALE if c.NEG_SCALE > 0 else self.logit_scale / 2
        self.loss_settings = L.LossSettings(
            num_sources=self.num_source_domains, logit_scale=self.logit_scale, neg_scale=self.neg_scale, tau=c.TAU,
            alpha=c.ALPHA, beta=c.BETA, gamma=c.GAMMA, mmd_multipliers=tuple(float(m) for m in c.MMD_MULTIPLIERS),
            use_neg=c.USE_NEG, use_target=c.USE_TARGET, use_ess=c.USE_ESS, use_lda=c.USE_LDA)
        # compiled with MODEL.COMPILE: in eager mode its few hundred tiny operations (forward and backward,
        # on a batch's features) cost more host time to launch than GPU time to run
        self.step_losses = compiled(L.step_losses, cfg)

        groups = []
        if c.FINETUNE_VISUAL:
            groups.append({"params": list(self.model.image_encoder.parameters()), "lr": cfg.OPTIM.LR})
        if n_ctx:
            groups.append({"params": list(prompt_learner.parameters()), "lr": c.PROMPT_LR})
        if not groups:
            raise UserError("PromptEmo has nothing to train: FINETUNE_VISUAL is off and the prompts are fixed")
        self.build_clip_network(positive)  # image encoder and positive prompts in one module
        self.optim = build_optimizer(None, cfg.OPTIM, param_groups=groups)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

    def positive_features(self) -> torch.Tensor:
        """h_P: the positive prompts through the frozen text encoder, normalised (K, D)."""
        return self.clip.text_features()

    def text_features(self) -> torch.Tensor:
        return self.positive_features()

    def parse_batch_train(self, batch_x: dict, batch_u: dict):
        input_x, label_x, input_u = super().parse_batch_train(batch_x, batch_u)
        return input_x, label_x, self.to_device(batch_x["domain"]), input_u

    def forward_backward(self, batch_x: dict, batch_u: dict) -> dict[str, torch.Tensor]:
        input_x, label_x, domain_x, input_u = self.parse_batch_train(batch_x, batch_u)
        features, h_p = self.network(torch.cat([input_x, input_u]))
        f_s, f_t = features[: input_x.shape[0]], features[input_x.shape[0]:]
        # L_LDA, the per-source means of L_PS / L_NS and the target terms' batch mean couple the samples: under
        # torchrun every rank computes them on every rank's rows (the one-process losses of the global batch).
        f_s, f_t, label_x, domain_x = (gather_rows(t) for t in (f_s, f_t, label_x, domain_x))
        losses = self.step_losses(f_s, f_t, label_x, domain_x, h_p, self.neg_features, self.loss_settings)
        self.model_backward_and_update(losses["loss"])
        return {name: value.detach() for name, value in losses.items()}

    def class_probabilities(self, f: torch.Tensor) -> torch.Tensor:
        """Inference: ``(P_P + P_N) / 2`` of the image features ``f`` (``P_P`` alone without negative prompts)."""
        pos = L.positive_logits(f, self.positive_features(), self.logit_scale)
        neg = L.negative_logits(f, self.neg_features, self.neg_scale) if self.cfg.TRAINER.PROMPTEMO.USE_NEG else None
        return L.inference_probs(pos, neg)
