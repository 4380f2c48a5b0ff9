"""DUML (Liu et al., "Learning from More: Combating Uncertainty Cross-multidomain for Facial Expression
Recognition", ACM MM 2023) as a comparison method for MO-FER.

Only the inference code of the original is public (github.com/liuhw01/DUML: ``DUML_inference.py``, the ``:N``
below; ``inference.py``, ``util.py`` and training logs). The network and the pseudo-labels follow that code;
the training step is a reconstruction (**ours** where marked).

Network (:222-264, :319-397), channels at torchvision's width 64 (``MODEL.BACKBONE.WIDTH`` scales them all):

- stem: ResNet-34's ``conv1, bn1, relu, maxpool, layer1, layer2`` (torchvision keys, ``MODEL.BACKBONE.WEIGHTS``),
  a 128-channel map (28 x 28 at 224 px);
- per source ``d``: six attention blocks to 256 channels and three to 512 (both striding), average pooling,
  a ``Linear(512, K)`` classifier and a ``Linear(512, 2)`` domain discriminator (source ``d`` vs target) behind
  a gradient-reversal layer;
- a domain classifier ``Linear(128, M)`` on the average-pooled stem map (:250, :359-361; no reversal there);
- a fusion branch: each quadrant of the stem map through two attention blocks to 256 channels, pooled,
  concatenated to 1024, ``Linear(1024, K)`` (:118-160, :392-393). The original declares four quadrant
  branches but its forward runs the left quadrants through the first and the right ones through the second
  (:147-150; the other two never run): ``TRAINER.DUML.QUADRANT_BRANCHES 2`` does what the forward does,
  ``4`` gives each quadrant its own;
- an ArcFace head (``s = 30, m = 0.5``) on 512-d features (``ArcFaceLoss(nfeat=512, K)``, :264). The only
  512-d features are the branches', so ArcFace trains the branch features of each source's images, one head
  shared by the branches as in the original; it is a loss, not a classifier: the original's forward never
  calls it, the pseudo-labels use the Linear classifiers and the logits reported at inference are the fusion
  head's.

Pseudo-labels of a target batch (``trainers/duml_losses.py``): ``p~ = sum_d a_d softmax(z_d) / sum_d a_d`` with
``a_d = conf_d Dconf_d Dsim_d`` (discriminator entropies, source sizes, prediction entropies). ``n_d`` of
``Dconf_d`` (**ours**; the released code leaves them at one): the number of training images of source ``d``,
counted once from the training split and kept as a buffer.

Training step (**ours**, reconstructed; the original's loss and weights are not public), every weight 1
(``TRAINER.DUML.LOSS``):

- ``sum_d CE_d``: each branch's classifier on its own source's images (mean within the source, summed);
- ``ArcFace``: the same images' branch features through the shared ArcFace head, summed over sources. Not in
  the shared docs' list of terms; included because the head is part of the network and trained by nothing
  else. The first logged loss of the original (about 5.5 at step 0 in ``recoder_pre``) is close to the other
  terms at initialisation, below the ~16 an ``s = 30, m = 0.5`` ArcFace term starts at, so the original may
  have weighted or scheduled it otherwise: ``LOSS.ARCFACE 0`` switches it off;
- ``CE_fusion``: the fusion head on every source image;
- ``sum_d BCE_d``: each discriminator on source ``d``'s and the target's features of branch ``d``, reversal
  strength ``GRL_ALPHA * (2 / (1 + exp(-GRL_GAMMA p)) - 1)`` at training progress ``p`` (DANN's schedule; the
  original's forward takes ``alpha`` as an argument, default 1);
- ``CE_domain``: the domain classifier on the source images, labels their source;
- ``L_local``: target images whose ``max p~ >= 0.4`` (``CONFIDENCE``), by their pseudo-label ``argmax p~``,
  pulled towards the EMA prototypes (``beta = 0.5``) of every branch; prototypes are buffers, saved in
  checkpoints and restored on resume;
- ``KL(p~ || softmax(z_fusion / 4))`` on every target image (``TEMPERATURE``).

Each branch sees its own source's images and the target batch in one pass (so its batch-norm statistics
mix the two, as DANN's); the stem and the fusion branch see the whole batch. Source batches are balanced by
domain (``RandomDomainSampler`` in the configs); a source absent from a batch adds nothing to it.

Inference: MSP of the fusion head, the DAML grid (the engine's evaluator). Model selection: the original
keeps the epoch best on the target's test set (an oracle); here, as for every method, the last epoch.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.modeling.blocks import ArcFace, GradientReversal, QuadrantBranches, attention_stage
from engine.modeling.resnet import ResNetTrunk, build_resnet_trunk, scaled, width_scale
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, TrainerXU
from engine.utils import distributed
from engine.utils.distributed import gather_rows
from engine.utils.errors import UserError
from engine.utils.tools import compiled
from trainers import duml_losses as L

LOSS_TERMS = ("CE", "ARCFACE", "FUSION", "DISCRIMINATOR", "DOMAIN", "LOCAL", "KL")
# The stem divides the input side by 8 and the fusion branch splits its map in four: below 16 px a quadrant
# would be empty.
MIN_INPUT_SIDE = 16


@register_config_hook
def add_duml_config(cfg) -> None:
    cfg.TRAINER.DUML = CN()
    c = cfg.TRAINER.DUML
    c.ARCFACE_S = 30.0
    c.ARCFACE_M = 0.5
    c.CONFIDENCE = 0.4  # target images with max p~ >= this enter L_local (:319)
    c.TEMPERATURE = 4.0  # of the fusion logits in the KL term (:319)
    c.EMA_BETA = 0.5  # prototype momentum (:229)
    c.ENTROPY_REF = 0.3010  # h0 of conf_d (:319, "nask")
    c.ENTROPY_COEF = 500.0  # c of conf_d (:319, "Coefficient")
    c.GRL_ALPHA = 1.0  # largest gradient-reversal strength, reached as training ends
    c.GRL_GAMMA = 10.0  # DANN's schedule 2 / (1 + exp(-gamma p)) - 1 over training progress p
    c.QUADRANT_BRANCHES = 2  # 2: the original's forward (left/right quadrants share one); 4: one per quadrant
    c.LOSS = CN()  # weight of each term of the reconstructed objective
    for term in LOSS_TERMS:
        setattr(c.LOSS, term, 1.0)


class DUMLNet(nn.Module):
    """Everything DUML trains and saves: stem, per-source branches with their classifiers and discriminators,
    the domain classifier, the fusion branch, the ArcFace head, and as buffers the EMA prototypes ``(M, K, C)``
    of the target features of every branch and the source sizes ``n_d``."""

    def __init__(self, stem: ResNetTrunk, num_sources: int, num_classes: int, scale: float,
                 domain_counts: torch.Tensor, arcface_s: float = 30.0, arcface_m: float = 0.5,
                 quadrant_branches: int = 2) -> None:
        super().__init__()
        c_stem, c_mid, c_out, c_quad = stem.out_channels, scaled(256, scale), scaled(512, scale), scaled(256, scale)
        self.stem = stem
        self.branches = nn.ModuleList([
            nn.Sequential(attention_stage(c_stem, c_mid, 6, stride=2), attention_stage(c_mid, c_out, 3, stride=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            for _ in range(num_sources)])
        self.classifiers = nn.ModuleList([nn.Linear(c_out, num_classes) for _ in range(num_sources)])
        self.discriminators = nn.ModuleList([nn.Linear(c_out, 2) for _ in range(num_sources)])
        self.grl = GradientReversal(1.0)
        self.domain_classifier = nn.Linear(c_stem, num_sources)
        self.fusion = QuadrantBranches(c_stem, c_quad, blocks=2, branches=quadrant_branches)
        self.fusion_classifier = nn.Linear(self.fusion.out_features, num_classes)
        self.arcface = ArcFace(c_out, num_classes, s=arcface_s, m=arcface_m)
        self.register_buffer("prototypes", torch.zeros(num_sources, num_classes, c_out))
        self.register_buffer("domain_counts", domain_counts.float().clone())

    def fusion_logits(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fusion_classifier(self.fusion(maps))

    def domain_logits(self, maps: torch.Tensor) -> torch.Tensor:
        return self.domain_classifier(F.adaptive_avg_pool2d(maps, 1).flatten(1))

    def branch(self, d: int, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Branch ``d``'s features, class logits and (through the gradient reversal) discriminator logits."""
        features = self.branches[d](maps)
        return features, self.classifiers[d](features), self.discriminators[d](self.grl(features))


@dataclass(frozen=True)
class StepSettings:
    """What :class:`DUMLStep` reads from ``TRAINER.DUML``, as plain values."""

    loss_weights: dict[str, float]
    confidence: float
    temperature: float
    ema_beta: float
    entropy_ref: float
    entropy_coef: float


class DUMLStep(nn.Module):
    """DUML's training step in one module: the network on a step's source and target batch, then the reconstructed
    objective (see the module docstring). ``forward`` returns the loss, its terms, the prototypes after the batch
    (not yet stored: the trainer stores them after the update) and the pseudo-label statistics.

    ``stem`` and ``fusion_head`` are the network's stem and fusion head as called (compiled under MODEL.COMPILE);
    the source branches run eagerly. Under torchrun every term takes every rank's rows (:func:`gather_rows`): the
    per-source means, the pseudo-label weights over the target batch, the prototypes' class means, so that the
    loss and the prototypes are the one-process ones of the global batch. The forward returns the loss, not
    features, so that DDP finds the parameters a step leaves without gradient from it (``find_unused_parameters``).
    """

    def __init__(self, net: DUMLNet, stem: nn.Module, fusion_head: Callable[[torch.Tensor], torch.Tensor],
                 settings: StepSettings, bf16: bool = False) -> None:
        super().__init__()
        self.net = net
        self.stem = stem
        self.fusion_head = fusion_head
        self.settings = settings
        self.bf16 = bf16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def forward(self, input_x: torch.Tensor, label_x: torch.Tensor, domain_x: torch.Tensor, input_u: torch.Tensor,
                rows: list[torch.Tensor], counts: list[list[int]]) -> dict:
        """``rows[d]``: the indices of source ``d``'s rows in ``input_x``; ``counts[r][d]``: rank ``r``'s number of
        them (:func:`engine.utils.distributed.gather_counts`)."""
        s, net, device = self.settings, self.net, input_x.device
        n_s, n_t = input_x.shape[0], input_u.shape[0]
        target_rows = torch.arange(n_s, n_s + n_t, device=device)
        with self.autocast(device):
            maps = self.stem(torch.cat([input_x, input_u]))
            fusion_logits = self.fusion_head(maps).float()
            domain_logits = net.domain_logits(maps[:n_s]).float()
        zero = maps.new_zeros((), dtype=torch.float32)
        l_ce = l_arc = l_disc = zero
        features_t, logits_t, disc_t = [], [], []
        for d, rows_d in enumerate(rows):
            with self.autocast(device):
                features, logits, disc = net.branch(d, maps.index_select(0, torch.cat([rows_d, target_rows])))
            features, logits, disc = features.float(), logits.float(), disc.float()
            k = rows_d.numel()  # a shape, known on the host
            source_counts = [per_rank[d] for per_rank in counts]
            disc_target = gather_rows(disc[k:])
            if sum(source_counts):
                labels_d = gather_rows(label_x.index_select(0, rows_d), source_counts)
                features_d = gather_rows(features[:k], source_counts)
                l_ce = l_ce + F.cross_entropy(gather_rows(logits[:k], source_counts), labels_d)
                l_arc = l_arc + F.cross_entropy(net.arcface(features_d, labels_d), labels_d)
                l_disc = l_disc + L.discriminator_loss(gather_rows(disc[:k], source_counts), disc_target)
            features_t.append(gather_rows(features[k:]))
            logits_t.append(gather_rows(logits[k:]))
            disc_t.append(disc_target)

        features_t = torch.stack(features_t)  # (M, N_t, C)
        p_tilde, branch_weights = L.pseudo_labels(torch.stack(logits_t), torch.stack(disc_t), net.domain_counts,
                                                  s.entropy_ref, s.entropy_coef)
        confidence, pseudo = p_tilde.max(dim=-1)
        keep = (confidence >= s.confidence).float()
        prototypes = L.ema_prototypes(net.prototypes, features_t, pseudo, keep, s.ema_beta)
        terms = {
            "ce": l_ce,
            "arcface": l_arc,
            "fusion": F.cross_entropy(gather_rows(fusion_logits[:n_s]), gather_rows(label_x)),
            "discriminator": l_disc,
            "domain": F.cross_entropy(gather_rows(domain_logits), gather_rows(domain_x)),
            "local": L.local_loss(prototypes, features_t, pseudo, keep),
            "kl": L.kl_to_pseudo_labels(gather_rows(fusion_logits[n_s:]), p_tilde, s.temperature),
        }
        return {"loss": L.total_loss(terms, s.loss_weights), "terms": terms, "prototypes": prototypes,
                "pseudo_share": keep.mean(), "branch_weights": branch_weights}


@TRAINER_REGISTRY.register()
class DUML(TrainerXU):
    """DUML on labelled sources and the unlabelled target; MSP of the fusion head (see module docstring)."""

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        c = cfg.TRAINER.DUML
        if min(cfg.INPUT.SIZE) < MIN_INPUT_SIDE:
            raise UserError(f"DUML needs inputs of at least {MIN_INPUT_SIDE} px (INPUT.SIZE is "
                            f"{tuple(cfg.INPUT.SIZE)}): its fusion branch cuts the stem's map, 1/8 of the input, "
                            f"into four quadrants")
        if c.QUADRANT_BRANCHES not in (2, 4):
            raise UserError(f"TRAINER.DUML.QUADRANT_BRANCHES must be 2 (the original's forward) or 4 (one per "
                            f"quadrant), got {c.QUADRANT_BRANCHES}")
        if not 0.0 <= c.CONFIDENCE <= 1.0:
            raise UserError(f"TRAINER.DUML.CONFIDENCE is a probability threshold in [0, 1], got {c.CONFIDENCE}")
        if not 0.0 <= c.EMA_BETA <= 1.0:
            raise UserError(f"TRAINER.DUML.EMA_BETA is a momentum in [0, 1], got {c.EMA_BETA}")
        if c.TEMPERATURE <= 0:
            raise UserError(f"TRAINER.DUML.TEMPERATURE must be positive, got {c.TEMPERATURE}")
        if c.ARCFACE_S <= 0 or not 0.0 <= c.ARCFACE_M < math.pi:
            raise UserError(f"TRAINER.DUML.ARCFACE_S must be positive and ARCFACE_M an angle in [0, pi), got "
                            f"s {c.ARCFACE_S}, m {c.ARCFACE_M}")
        negative = [term for term in LOSS_TERMS if c.LOSS[term] < 0]
        if negative:
            raise UserError(f"TRAINER.DUML.LOSS weights must be >= 0; negative: {', '.join(negative)}")

    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.DUML
        if self.train_loader_x is None:
            raise UserError("DUML trains on labelled source images, but the sources have no training images")
        counts = torch.bincount(torch.tensor([item.domain for item in self.dm.dataset.train_x]),
                                minlength=self.num_source_domains)[: self.num_source_domains]
        self.model = DUMLNet(build_resnet_trunk(cfg, upto="layer2"), self.num_source_domains, self.num_classes,
                             width_scale(cfg), counts, arcface_s=c.ARCFACE_S, arcface_m=c.ARCFACE_M,
                             quadrant_branches=c.QUADRANT_BRANCHES).to(self.device)
        # MODEL.COMPILE compiles the stem and the fusion head, which see the whole batch (the model is registered
        # and saved as it is: plain checkpoint keys); a source branch sees its own source's rows, a number that
        # changes from batch to batch (read on the host), and runs eagerly
        self.stem = compiled(self.model.stem, cfg)
        self.fusion_head = compiled(self.model.fusion_logits, cfg)
        self.loss_weights = {term.lower(): float(c.LOSS[term]) for term in LOSS_TERMS}
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)
        settings = StepSettings(self.loss_weights, c.CONFIDENCE, c.TEMPERATURE, c.EMA_BETA, c.ENTROPY_REF,
                                c.ENTROPY_COEF)
        # A source absent from a batch leaves its classifier and discriminator without gradient in that step: DDP
        # must look for such parameters, from the loss the step's forward returns.
        self.network = distributed.data_parallel(DUMLStep(self.model, self.stem, self.fusion_head, settings,
                                                          self.use_bf16), self.device, find_unused_parameters=True)

    def training_progress(self) -> float:
        """Share of the training steps done, in [0, 1] (0 outside the epoch loop)."""
        steps = getattr(self, "num_batches", 0) * self.max_epoch
        return (self.epoch * self.num_batches + self.batch_idx) / steps if steps else 0.0

    def source_rows(self, domains: torch.Tensor) -> list[torch.Tensor]:
        """The batch rows of each source, on the device. Read from the batch's domain labels on the host (the
        loader's, so no synchronisation; the cached loader keeps them on the device and this reads them back)."""
        domains = domains.cpu()
        return [self.to_device(torch.nonzero(domains == d).flatten()) for d in range(self.num_source_domains)]

    def forward_backward(self, batch_x: dict, batch_u: dict) -> dict[str, torch.Tensor]:
        c, net = self.cfg.TRAINER.DUML, self.model
        input_x, label_x, input_u = self.parse_batch_train(batch_x, batch_u)
        domain_x = self.to_device(batch_x["domain"])
        rows = self.source_rows(batch_x["domain"])
        counts = distributed.gather_counts([r.numel() for r in rows])  # every rank's rows of each source
        net.grl.alpha = c.GRL_ALPHA * L.grl_alpha(self.training_progress(), c.GRL_GAMMA)
        out = self.network(input_x, label_x, domain_x, input_u, rows, counts)
        loss, terms = out["loss"], out["terms"]
        self.model_backward_and_update(loss)
        with torch.no_grad():
            # A non-finite batch (skipped under TRAIN.ON_NONFINITE skip) must not poison the prototypes for good.
            prototypes = out["prototypes"].detach()
            net.prototypes.copy_(torch.where(torch.isfinite(prototypes).all(), prototypes, net.prototypes))
        summary = {"loss": loss.detach(), **{f"loss_{name}": value.detach() for name, value in terms.items()},
                   "pseudo_share": out["pseudo_share"]}
        summary.update({f"branch_weight_{d}": w for d, w in enumerate(out["branch_weights"])})
        return summary

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        """Seen-class probabilities: softmax of the fusion head (MSP; the unseen score is ``1 - max``)."""
        with self.autocast():
            logits = self.fusion_head(self.stem(images))
        return logits.float().softmax(dim=-1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The fusion branch's features (what the reported classifier sees), L2-normalised."""
        with self.autocast():
            features = self.model.fusion(self.stem(images))
        return F.normalize(features.float(), dim=-1)
