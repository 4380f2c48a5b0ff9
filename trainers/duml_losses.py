"""DUML's pseudo-labels and losses (Liu et al., ACM MM 2023), one function per equation.

Only DUML's inference code is public (github.com/liuhw01/DUML, ``DUML_inference.py``; the ``:N`` below are its
line numbers). What that code computes is followed here, with the differences said where they are; the training
objective around it is a reconstruction (**ours**, :func:`total_loss` and ``trainers/duml.py``).

Notation: ``M`` source domains, each with its branch ``d``; for a batch of ``N`` target images, ``z_d`` the
logits of branch ``d``'s classifier and ``p_d = softmax(z_d)``, ``D_d`` the softmax of branch ``d``'s domain
discriminator (source ``d`` against the target); ``K`` seen classes. Entropies are in bits (``log2``), as the
original's ``entropy()`` (:309-318) takes them. Everything is vectorised over samples, branches and classes:
no Python loop over samples and no read-back to the host.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

# The original replaces a probability <= 0 by 1e-6 before taking its log (:314-315).
ZERO_PROBABILITY = 1e-6
# Ours: the smallest entropy domain_similarity divides by. The original divides by the entropy as it is; an
# almost one-hot prediction (all other probabilities denormal) would give 1/H = inf there and NaN weights.
ENTROPY_FLOOR = 1e-6


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """``H(p) = -sum_k p_k log2 p_k`` over the last dimension, each ``p_k <= 0`` replaced by 1e-6 first (the
    original's ``entropy()``, :309-318). ``(..., K) -> (...)``."""
    p = p.float()
    p = torch.where(p > 0, p, torch.full_like(p, ZERO_PROBABILITY))
    return -(p * torch.log2(p)).sum(-1)


def prediction_confidence(disc_probs_t: torch.Tensor, reference: float = 0.3010,
                          coefficient: float = 500.0) -> torch.Tensor:
    """conf_d (:365-369): ``P_d = exp(-c (h0 - Hbar_d))``, ``conf_d = P_d / sum_d' P_d'``, where ``Hbar_d`` is
    the mean over the target batch of the entropy of branch ``d``'s discriminator and ``h0 = 0.3010``,
    ``c = 500`` (:319).

    A discriminator that cannot tell the target from source ``d`` (entropy near its maximum, 1 bit) means branch
    ``d`` maps the target close to its source: that branch gets more weight. Computed as
    ``softmax_d(c (Hbar_d - h0))``, the same quotient: in float32 ``exp(500 x)`` overflows past ``x = 0.18``
    (the original computed it in Python's float64). ``h0`` cancels in the quotient; it only kept the
    original's unnormalised ``P_d`` in range, and is a parameter for fidelity.

    ``disc_probs_t``: ``(M, N, 2)`` discriminator probabilities on the target batch; returns ``(M,)``.
    """
    mean_entropy = entropy_bits(disc_probs_t).mean(-1)
    return torch.softmax(coefficient * (mean_entropy - reference), dim=0)


def domain_confidence(counts: torch.Tensor) -> torch.Tensor:
    """Dconf_d (:362-363): ``2 / (1 + exp(-10 n_d / max_d' n_d')) - 1``: close to 1 for the largest source,
    smaller for a source with few images. ``counts``: ``(M,)``, ``n_d`` (which counts, see ``trainers/duml.py``)."""
    counts = counts.float()
    return 2.0 / (1.0 + torch.exp(-10.0 * counts / counts.max().clamp_min(1))) - 1.0


def domain_similarity(class_probs_t: torch.Tensor) -> torch.Tensor:
    """Dsim_d (:371-382): with ``H_dj`` the entropy of ``p_d`` on target image ``j`` and
    ``S_j = sum_d' 1 / H_d'j``, ``s_d = sum_j S_j / (1 / H_dj) = sum_j S_j H_dj`` and ``Dsim_d = s_d / sum_d' s_d'``.

    **Ours:** every entry of row ``j`` divides the row's *original* sum ``S_j``. The original's loop
    (:378-380) overwrites the entries of a row in place, so each later entry divides a sum that already holds
    the earlier entries' new values, and the weights depend on the order of the sources: a bug, not kept.
    As written, the formula gives more weight to the branch whose predictions are *less* certain (``H_dj``
    in the numerator); it is kept as the code has it. Entropies are floored at 1e-6 bits (ours, see
    ``ENTROPY_FLOOR``). ``class_probs_t``: ``(M, N, K)``; returns ``(M,)``.
    """
    entropy = entropy_bits(class_probs_t).clamp_min(ENTROPY_FLOOR)  # (M, N)
    row_sums = (1.0 / entropy).sum(0)  # S_j, (N,)
    s = (row_sums.unsqueeze(0) * entropy).sum(1)
    return s / s.sum()


def pseudo_label_weights(conf: torch.Tensor, dconf: torch.Tensor, dsim: torch.Tensor) -> torch.Tensor:
    """``a_d = conf_d * Dconf_d * Dsim_d`` (:386), one weight per branch for the whole batch."""
    return conf * dconf * dsim


def aggregate_pseudo_labels(class_probs_t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``p~_j = sum_d a_d p_d(x_j) / sum_d a_d`` (:384-390). ``class_probs_t``: ``(M, N, K)``, ``weights``:
    ``(M,)``; returns ``(N, K)``, rows summing to one. Equal branch predictions give that prediction."""
    return torch.einsum("m,mnk->nk", weights, class_probs_t.float()) / weights.sum()


def pseudo_labels(class_logits_t: torch.Tensor, disc_logits_t: torch.Tensor, counts: torch.Tensor,
                  reference: float = 0.3010, coefficient: float = 500.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft pseudo-labels ``p~`` of a target batch and the normalised branch weights ``a_d / sum a``, from
    every branch's class logits ``(M, N, K)`` and discriminator logits ``(M, N, 2)`` on it (:341-390). No
    gradient flows (**ours**: ``p~`` is a target for the losses that use it)."""
    with torch.no_grad():
        class_probs = class_logits_t.float().softmax(-1)
        weights = pseudo_label_weights(prediction_confidence(disc_logits_t.float().softmax(-1), reference, coefficient),
                                       domain_confidence(counts), domain_similarity(class_probs))
        return aggregate_pseudo_labels(class_probs, weights), weights / weights.sum()


def ema_prototypes(prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                   beta: float = 0.5) -> torch.Tensor:
    """The prototypes after one batch (:282-302): ``mu_dk <- beta mu_dk + (1 - beta) m_dk`` for every class
    ``k`` with at least one kept sample in the batch, where ``m_dk`` is the mean feature of branch ``d`` over
    the kept samples labelled ``k``; classes absent from the batch keep their prototype.

    ``prototypes``: ``(M, K, C)``; ``features``: ``(M, N, C)`` (branch ``d``'s features of the same ``N``
    images); ``labels``: ``(N,)``; ``mask``: ``(N,)``, 1 for a kept sample, 0 otherwise. The gradient flows
    through ``m_dk`` into the features, as in the original, whose new prototype is not detached before the
    local loss uses it (:294-306); the caller stores it detached. The original divides by ``count + 1e-5``
    and calls a class present when its mean is not exactly zero; here the division is by the count and
    presence is a count above zero (the same except for those two corner cases).
    """
    num_classes = prototypes.shape[1]
    onehot = F.one_hot(labels.long(), num_classes).float() * mask.float().unsqueeze(1)  # (N, K)
    counts = onehot.sum(0)  # (K,)
    means = torch.einsum("nk,mnc->mkc", onehot, features.float()) / counts.clamp_min(1).view(1, -1, 1)
    present = (counts > 0).view(1, -1, 1)
    return torch.where(present, beta * prototypes + (1.0 - beta) * means, prototypes)


def local_loss(prototypes: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """L_local (:297-306): ``sum_d (1 / |kept|) sum_{j kept} (1 / C) ||f_d(x_j) - mu_d,y_j||^2``, the squared
    distance of each kept sample's feature to its class prototype, averaged over the feature dimensions as the
    original does (``.mean(-1)``) and over the kept samples; summed over the branches (**ours**, as the
    objective sums the other per-branch terms). 0 when no sample is kept. Shapes as :func:`ema_prototypes`."""
    centres = prototypes[:, labels.long()]  # (M, N, C)
    per_sample = (centres - features.float()).pow(2).mean(-1)  # (M, N)
    mask = mask.float()
    return ((per_sample * mask).sum(1) / mask.sum().clamp_min(1)).sum()


def kl_to_pseudo_labels(fusion_logits_t: torch.Tensor, p_tilde: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """The mutual-learning term: ``KL(p~ || softmax(z_fusion / T))`` with ``T = 4`` (:319), averaged over the
    target batch (sum over classes, mean over images).

    **Ours:** the shared docs write ``KL(softmax(z_fusion / 4) || p~)``, the argument order of
    ``nn.KLDivLoss(input, target)``, which the original instantiates (:266) and which computes
    ``KL(target || input)``: ``p~`` is the teacher, the fusion head the student. Its default reduction would
    also divide by ``K``; ``batchmean`` is the divergence itself. Zero when the tempered fusion prediction
    equals ``p~``."""
    log_q = F.log_softmax(fusion_logits_t.float() / temperature, dim=-1)
    return F.kl_div(log_q, p_tilde.float(), reduction="batchmean")


def discriminator_loss(logits_source: torch.Tensor, logits_target: torch.Tensor) -> torch.Tensor:
    """The binary cross-entropy of one branch's two-way domain discriminator (:259, :345-346): source ``d``'s
    images labelled 0, target images 1, each side's mean summed (**ours**: the sides count equally whatever
    their batch sizes, as DANN's source and target terms). The discriminator sits behind the gradient
    reversal layer, so the branch learns to make the two sides alike."""
    zeros = torch.zeros(logits_source.shape[0], dtype=torch.long, device=logits_source.device)
    ones = torch.ones(logits_target.shape[0], dtype=torch.long, device=logits_target.device)
    return F.cross_entropy(logits_source.float(), zeros) + F.cross_entropy(logits_target.float(), ones)


def grl_alpha(progress: float, gamma: float = 10.0) -> float:
    """DANN's reversal strength ``2 / (1 + exp(-gamma p)) - 1`` at training progress ``p`` in [0, 1] (Ganin &
    Lempitsky, 2015). **Ours:** the original's forward takes ``alpha`` as an argument (default 1, :319) and its
    training loop is not public; this is the schedule DANN-style code passes there. A Python float: it only
    scales the reversed gradient."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The reconstructed objective (**ours**; the original's loss is not public):
    ``sum_d CE_d + ArcFace + CE_fusion + sum_d BCE_d + CE_domain + L_local + KL``, each term times its weight
    (all 1 by default, ``TRAINER.DUML.LOSS``). ``terms`` and ``weights`` share their keys."""
    return sum(weights[name] * value for name, value in terms.items())
