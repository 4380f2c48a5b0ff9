"""NENO (Li, Yang, Hu, IEEE TCSVT 34(4), 2023; PRICAI 2022): multi-source open-set domain adaptation by
nearest-neighbour classification with a self-supervised vision transformer.

**Re-implemented from the abstract alone.** NENO's code, equations and settings are not public; the abstract
names a self-supervised ViT, supervised contrastive learning, a nearest-neighbour classifier, a simple domain
alignment, an adaptive data-driven threshold and the use of the unlabelled target. Everything below that those
words do not fix is **ours**, and configurable (``TRAINER.NENO.*``):

- backbone: DINO's ViT-S/16 (:mod:`engine.modeling.vit`, DINO's ``dino_deitsmall16_pretrain.pth`` from
  ``MODEL.BACKBONE.WEIGHTS``), selected by ``MODEL.BACKBONE.NAME dino_vits16``; any other name is a CLIP
  (``ViT-B/32``, a CLIP file, ``tiny``) whose image encoder is the backbone instead (the shared CLIP loading,
  :mod:`engine.modeling.clip_backbone`). The feature is the backbone's output, L2-normalised;
- training loss (:mod:`trainers.neno_losses`): the supervised contrastive loss on the normalised source features
  pooled over the source domains (temperature ``TEMPERATURE`` 0.07), plus ``CE_WEIGHT`` (1) times the
  cross-entropy of a linear classifier head on the sources (ours: the abstract names no head; without it, in the
  CPU test's setting, the contrastive loss alone left ACC-S at 20.0 in two seeds, with it 29-37; the head is not
  used at test time), plus ``MMD_WEIGHT`` (1) times the MK-MMD between each
  source domain and the target (``MMD_PER_SOURCE``; False: the pooled sources) on the engine's kernel. No
  projection head: the nearest neighbours are searched in the space the contrastive loss shapes. The backbone
  learns at ``BACKBONE_LR_MULT`` (0.1) times ``OPTIM.LR``;
- inference: a bank of the eval-mode features of every labelled source training image (test transform), built
  once per evaluation on the device, in batches; class similarities ``s_k = max cos(x, bank images of class k)``,
  prediction ``argmax_k s_k``, probabilities ``softmax(s / TEMPERATURE)`` (their argmax is the prediction; the
  open-set metrics do not read them otherwise);
- knownness (the evaluator's unseen score, ``UNSEEN_SCORE``): ``(1 + s) / 2`` with ``s`` the similarity to the
  nearest source image (``KNOWNNESS nn``: ``nn_similarity``), or the mean similarity to the ``KNN_K`` nearest
  (``knn_mean``: ``knn_mean_similarity``); the "adaptive threshold" is the DAML threshold grid on it, as for
  every method here;
- the similarity search never holds more than ``MAX_SIMILARITY_ELEMENTS`` similarities at once: the test batch
  is cut into query chunks and the bank into bank chunks, keeping a running per-class maximum and top-k;
- the last epoch is evaluated (no model selection on the target).

Under torchrun (the README's "same step on many GPUs"): a step calls :class:`NENONet` once, through
``data_parallel``; the contrastive loss, the MMD and, so that every rank holds the same loss terms (a non-finite one
stops or skips every rank alike), the head's cross-entropy take every rank's rows (``gather_rows``); the feature
bank holds every rank's share of the source images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.evaluation import OpenSetPrediction
from engine.modeling import clip_backbone
from engine.modeling.mmd import DEFAULT_MULTIPLIERS
from engine.modeling.vit import build_vit, is_vit_name
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, TrainerXU
from engine.utils import distributed
from engine.utils.distributed import gather_rows
from engine.utils.errors import UserError
from engine.utils.tools import compiled
from trainers import neno_losses as L

# TRAINER.NENO.KNOWNNESS -> the unseen score's name in results.json
KNOWNNESS_SCORES = {"nn": "nn_similarity", "knn_mean": "knn_mean_similarity"}


@register_config_hook
def add_neno_config(cfg) -> None:
    cfg.TRAINER.NENO = CN()
    c = cfg.TRAINER.NENO
    c.TEMPERATURE = 0.07  # supervised contrastive loss; also the temperature of the reported probabilities
    c.CE_WEIGHT = 1.0  # the classifier head's source cross-entropy
    c.MMD_WEIGHT = 1.0  # MK-MMD between the sources and the target
    c.MMD_PER_SOURCE = True  # sum over the source domains of MMD(S_m, T); False: MMD of the pooled sources
    c.MMD_MULTIPLIERS = DEFAULT_MULTIPLIERS
    c.BACKBONE_LR_MULT = 0.1  # the backbone's learning rate relative to OPTIM.LR (the head's)
    c.KNOWNNESS = "nn"  # nn: nearest source image's similarity; knn_mean: mean over the KNN_K nearest
    c.KNN_K = 5
    c.MAX_SIMILARITY_ELEMENTS = 2 ** 25  # most similarities held at once in the nearest-neighbour search


def build_backbone(cfg) -> nn.Module:
    """DINO's ViT when ``MODEL.BACKBONE.NAME`` names one, else the CLIP image encoder ``MODEL.BACKBONE.NAME``; both
    on the CPU with ``output_dim`` set."""
    name = cfg.MODEL.BACKBONE.NAME
    if is_vit_name(name):
        return build_vit(cfg)
    if cfg.MODEL.BACKBONE.WEIGHTS:
        raise UserError(f"MODEL.BACKBONE.WEIGHTS is for DINO's ViT (MODEL.BACKBONE.NAME dino_vits16); the CLIP "
                        f"backbone {name} is loaded from MODEL.BACKBONE.NAME itself: leave WEIGHTS empty")
    return clip_backbone.build_clip_for(cfg, "cpu").visual


class NENONet(nn.Module):
    """Everything NENO trains: the backbone and the classifier head. ``forward`` gives the L2-normalised fp32
    features (the contrastive loss, the alignment and the bank use them) and the head's logits."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.output_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return F.normalize(features.float(), dim=-1), self.head(features).float()


def cosine_block(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The similarities of one query chunk to one bank chunk (both normalised): the one place the search
    materialises similarities (its size is what ``MAX_SIMILARITY_ELEMENTS`` bounds)."""
    return queries @ bank.t()


def chunk_sizes(num_queries: int, max_elements: int) -> tuple[int, int]:
    """``(query rows, bank rows)`` per similarity block, their product at most ``max_elements``: every query at
    once with as many bank rows as fit beside them, or (a bound below the query count) fewer queries and one bank
    row at a time."""
    query_rows = max(1, min(num_queries, max_elements))
    return query_rows, max(1, max_elements // query_rows)


@dataclass
class NeighbourScores:
    class_similarity: torch.Tensor  # (Q, K): max similarity to the bank images of each class; -inf for none
    nearest: torch.Tensor  # (Q, k): the k largest similarities over the whole bank, in decreasing order


@torch.no_grad()
def nearest_neighbour_scores(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                             k: int = 1, max_elements: int = 2 ** 25) -> NeighbourScores:
    """Per-class maximum similarity and the ``k`` largest similarities of each query to the bank, computed in
    blocks of at most ``max_elements`` similarities (:func:`chunk_sizes`): a running maximum per class
    (``scatter_reduce``) and a running top-k; a Python loop over blocks only, never over samples."""
    k = min(k, bank.shape[0])
    query_rows, bank_rows = chunk_sizes(queries.shape[0], max_elements)
    class_parts, nearest_parts = [], []
    for q0 in range(0, queries.shape[0], query_rows):
        q = queries[q0:q0 + query_rows]
        class_max = q.new_full((q.shape[0], num_classes), float("-inf"))
        nearest = q.new_full((q.shape[0], k), float("-inf"))
        for b0 in range(0, bank.shape[0], bank_rows):
            sim = cosine_block(q, bank[b0:b0 + bank_rows])
            labels = bank_labels[b0:b0 + bank_rows].expand(q.shape[0], -1)
            class_max = class_max.scatter_reduce(1, labels, sim, reduce="amax")
            block_top = sim.topk(min(k, sim.shape[1]), dim=1).values
            nearest = torch.cat([nearest, block_top], dim=1).topk(k, dim=1).values
        class_parts.append(class_max)
        nearest_parts.append(nearest)
    return NeighbourScores(torch.cat(class_parts), torch.cat(nearest_parts))


@TRAINER_REGISTRY.register()
class NENO(TrainerXU):
    """NENO on MO-FER (see the module docstring)."""

    UNSEEN_SCORE = KNOWNNESS_SCORES["nn"]  # set per run from TRAINER.NENO.KNOWNNESS in build_model

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        c = cfg.TRAINER.NENO
        if c.KNOWNNESS not in KNOWNNESS_SCORES:
            raise UserError(f"TRAINER.NENO.KNOWNNESS must be one of {', '.join(KNOWNNESS_SCORES)}, got '{c.KNOWNNESS}'")
        if int(c.KNN_K) < 1 or int(c.MAX_SIMILARITY_ELEMENTS) < 1 or float(c.TEMPERATURE) <= 0:
            raise UserError(f"TRAINER.NENO.KNN_K ({c.KNN_K}), MAX_SIMILARITY_ELEMENTS "
                            f"({c.MAX_SIMILARITY_ELEMENTS}) and TEMPERATURE ({c.TEMPERATURE}) must be positive")

    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.NENO
        self.UNSEEN_SCORE = KNOWNNESS_SCORES[c.KNOWNNESS]
        self.model = NENONet(build_backbone(cfg), self.num_classes).to(self.device)
        self.net = compiled(self.model, cfg)  # registered and saved as self.model: plain checkpoint keys
        self.network = distributed.data_parallel(self.net, self.device)  # what a step calls
        self.loss_settings = L.LossSettings(
            temperature=float(c.TEMPERATURE), ce_weight=float(c.CE_WEIGHT), mmd_weight=float(c.MMD_WEIGHT),
            num_sources=self.num_source_domains, mmd_per_source=bool(c.MMD_PER_SOURCE),
            mmd_multipliers=tuple(float(m) for m in c.MMD_MULTIPLIERS))
        self.losses = compiled(L.step_losses, cfg)
        groups = [{"params": list(self.model.backbone.parameters()), "lr": cfg.OPTIM.LR * c.BACKBONE_LR_MULT},
                  {"params": list(self.model.head.parameters()), "lr": cfg.OPTIM.LR}]
        self.optim = build_optimizer(None, cfg.OPTIM, param_groups=groups)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)
        self.bank_loader = self.dm.labelled_eval_loader()
        self.feature_bank: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, labels) during test()

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised features and head logits, the network under the run's precision; fp32 out (inference: the
        network itself, outside DistributedDataParallel)."""
        with self.autocast():
            return self.net(images)

    def forward_backward(self, batch_x: dict, batch_u: dict) -> dict[str, torch.Tensor]:
        input_x, label_x, input_u = self.parse_batch_train(batch_x, batch_u)
        domain_x = self.to_device(batch_x["domain"])
        with self.autocast():
            features, logits = self.network(torch.cat([input_x, input_u]))
        n = input_x.shape[0]
        # The contrastive loss (over all source pairs) and the MMD (sources against the target) couple the samples:
        # under torchrun every rank computes them on every rank's rows, as one process does on the global batch; the
        # cross-entropy too, so that every rank holds the same loss terms.
        f_s, z_s, label_x, domain_x, f_t = (gather_rows(t) for t in (features[:n], logits[:n], label_x, domain_x,
                                                                      features[n:]))
        losses = self.losses(f_s, z_s, label_x, domain_x, f_t, self.loss_settings)
        self.model_backward_and_update(losses["loss"])
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        # a copy: under CUDA graphs the compiled network's output is overwritten by its next call
        return self.outputs(images)[0].clone()

    @torch.no_grad()
    def build_feature_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, D), labels (N,))`` of every labelled source training image, eval mode, test transform,
        on the device (each process encodes its share; the shares are gathered)."""
        self.set_model_mode("eval")
        features, labels = [], []
        for batch in self.progress(self.bank_loader, desc="feature bank"):
            features.append(self.image_features(self.to_device(batch["img"])))
            labels.append(self.to_device(batch["label"]))
        return distributed.all_gather_cat(torch.cat(features)), distributed.all_gather_cat(torch.cat(labels))

    @torch.no_grad()
    def test(self, split: str | None = None) -> float:
        """The evaluation with the feature bank of the model as it stands, built once for it."""
        self.feature_bank = self.build_feature_bank()
        try:
            return super().test(split)
        finally:
            self.feature_bank = None

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> OpenSetPrediction:
        if self.feature_bank is None:
            raise RuntimeError("NENO's model_inference needs the feature bank that test() builds")
        c = self.cfg.TRAINER.NENO
        bank, bank_labels = self.feature_bank
        scores = nearest_neighbour_scores(self.image_features(images), bank, bank_labels, self.num_classes,
                                          int(c.KNN_K) if c.KNOWNNESS == "knn_mean" else 1,
                                          int(c.MAX_SIMILARITY_ELEMENTS))
        probs = (scores.class_similarity / float(c.TEMPERATURE)).softmax(dim=-1)
        similarity = scores.nearest[:, 0] if c.KNOWNNESS == "nn" else scores.nearest.mean(dim=1)
        return OpenSetPrediction(probs, (1 + similarity) / 2)
