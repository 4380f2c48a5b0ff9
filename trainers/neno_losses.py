"""NENO's equations (:mod:`trainers.neno`), one function each. NENO's paper gives no equation in public: these
are ours, written from its abstract's words (supervised contrastive learning, a simple domain alignment, a
nearest-neighbour classifier with a data-driven threshold).

Every loss that couples samples of a batch takes feature tensors, so that under several processes the
features of every rank can be gathered before it is computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from engine.modeling.mmd import DEFAULT_MULTIPLIERS, mk_mmd, multi_source_mmd_by_domain


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, the "L_out" form) of L2-normalised ``features``
    ``(N, D)`` with class ``labels`` ``(N,)``:

        L = mean_{i in A} -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

    where ``P(i)`` are the other samples of ``i``'s class and ``A`` the anchors with at least one (the others are
    skipped; 0 when no anchor has a positive). Samples of every source domain are pooled, so positives cross
    domains. Computed with masks over the ``N x N`` similarity matrix: no shape depends on the labels."""
    n = features.shape[0]
    logits = features.float() @ features.float().t() / temperature
    not_self = ~torch.eye(n, dtype=torch.bool, device=features.device)
    # log of the denominator over a != i: the diagonal masked out with -inf before the logsumexp
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    positive = (labels[:, None] == labels[None, :]) & not_self
    num_positive = positive.sum(1)
    # masked_fill rather than a product: a lone sample's row is inf (empty denominator), and inf * 0 is NaN
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1) / num_positive.clamp_min(1)
    has_positive = (num_positive > 0).float()
    return (per_anchor * has_positive).sum() / has_positive.sum().clamp_min(1)


def alignment_loss(source: torch.Tensor, source_domains: torch.Tensor, target: torch.Tensor, num_sources: int,
                   per_source: bool, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """The domain alignment: ``sum_m MMD^2(S_m, T)`` over the source domains (``per_source``), or
    ``MMD^2(S, T)`` of the pooled sources, on the engine's MK-MMD kernel (:mod:`engine.modeling.mmd`)."""
    if per_source:
        return multi_source_mmd_by_domain(source, source_domains, target, num_sources, multipliers)
    return mk_mmd(source, target, multipliers)


@dataclass(frozen=True)
class LossSettings:
    temperature: float
    ce_weight: float
    mmd_weight: float
    num_sources: int
    mmd_per_source: bool
    mmd_multipliers: tuple[float, ...]


def step_losses(features_s: torch.Tensor, logits_s: torch.Tensor, labels_s: torch.Tensor, domains_s: torch.Tensor,
                features_t: torch.Tensor, s: LossSettings) -> dict[str, torch.Tensor]:
    """``L = L_supcon(sources) + ce_weight CE(head, sources) + mmd_weight MMD(sources, target)`` with every
    term, for one step."""
    supcon = supervised_contrastive_loss(features_s, labels_s, s.temperature)
    ce = F.cross_entropy(logits_s, labels_s)
    mmd = alignment_loss(features_s, domains_s, features_t, s.num_sources, s.mmd_per_source, s.mmd_multipliers)
    loss = supcon + s.ce_weight * ce + s.mmd_weight * mmd
    return {"loss": loss, "loss_supcon": supcon, "loss_ce": ce, "loss_mmd": mmd}
