"""PromptEmo's predictions and losses, one function per equation of the paper.

Notation (the paper's): ``f`` image features, ``h_p`` positive and ``h_n`` negative prompt features,
all L2-normalised; ``s`` is CLIP's logit scale (100). Functions return *logits*; the paper's
probabilities are their softmax. Source batches mix the M sources: ``domains`` gives each sample's
source index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from engine.modeling.mmd import DEFAULT_MULTIPLIERS, multi_source_mmd_by_domain


def positive_logits(f: torch.Tensor, h_p: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 5: ``P_P = softmax(s * cos(f, h_P))``. Higher similarity to the positive prompt of class
    k means more likely k. Returns ``s * cos``."""
    return scale * f @ h_p.t()


def negative_logits(f: torch.Tensor, h_n: torch.Tensor, neg_scale: float) -> torch.Tensor:
    """Eq. 6: ``P_N = softmax(s_N * dis(f, h_N))`` with ``dis`` the squared Euclidean distance between
    normalised vectors. The sign is the paper's dual negation: the *farther* a feature is from
    "This expression is not k", the more likely it is k. As ``dis = 2 - 2 cos``, with
    ``s_N = s / 2`` this is ``softmax(-s * cos(f, h_N))``. Returns ``s_N * dis``."""
    return neg_scale * (2.0 - 2.0 * (f @ h_n.t()))


def ess_loss(h_p: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
    """Eq. 3, Explicit Semantic Separation: ``mean_k (1 - ||h_P(k) - h_N(k)||_2)``.

    Pairs each seen class's positive prompt with its own negative and pushes them apart; with a frozen
    text encoder only the learnable vectors delta_k receive its gradient."""
    return (1.0 - (h_p - h_n).norm(dim=-1)).mean()


def lda_loss(features: torch.Tensor, domains: torch.Tensor, target_features: torch.Tensor, num_sources: int,
             multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """Eq. 4, Latent Domain Alignment: ``sum_m MMD^2(S_m, T)`` in a multi-Gaussian RKHS between each
    source's part of the batch and the target batch (kernel in :mod:`engine.modeling.mmd`)."""
    return multi_source_mmd_by_domain(features, domains, target_features, num_sources, multipliers)


def _source_ce(logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, num_sources: int) -> torch.Tensor:
    # Eq. 11 sums the per-source losses: mean cross-entropy within each source's part, summed over m.
    # Per-source sums via a one-hot matrix rather than row selection: no host-device synchronisation.
    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    membership = F.one_hot(domains.long(), num_sources).float()  # (B, M)
    sums, counts = membership.t() @ per_sample, membership.sum(0)
    return (sums / counts.clamp_min(1)).sum()  # an absent source adds 0


def ps_loss(pos_logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, num_sources: int) -> torch.Tensor:
    """Eq. 7 summed over sources (eq. 11): ``sum_m mean_{i in B^{S_m}} CE(P_P,i, y_i)``."""
    return _source_ce(pos_logits, labels, domains, num_sources)


def ns_loss(neg_logits: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, num_sources: int) -> torch.Tensor:
    """Eq. 9 summed over sources (eq. 11): ``sum_m mean_{i in B^{S_m}} CE(P_N,i, y_i)``."""
    return _source_ce(neg_logits, labels, domains, num_sources)


def _pseudo_label_ce(logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    # The pseudo-label is the argmax, kept where the max probability exceeds tau; no gradient flows
    # through it. Eq. 8/10 divide by the whole batch size: rejected samples count as zero.
    logits = logits.float()
    with torch.no_grad():
        conf, pseudo = logits.softmax(dim=-1).max(dim=-1)
        mask = (conf > tau).float()
    loss = (F.cross_entropy(logits, pseudo, reduction="none") * mask).sum() / logits.shape[0]
    return loss, mask.mean()


def pt_loss(pos_logits_t: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: ``1/|B^T| sum_i 1[max P_P,i > tau] CE(P_P,i, argmax P_P,i)`` on target images.
    Returns the loss and the share of target samples that received a pseudo-label."""
    return _pseudo_label_ce(pos_logits_t, tau)


def nt_loss(neg_logits_t: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: as eq. 8 on the negative-oriented prediction ``P_N`` (its own pseudo-labels)."""
    return _pseudo_label_ce(neg_logits_t, tau)


def total_loss(l_ps: torch.Tensor, l_ns: torch.Tensor, l_pt: torch.Tensor, l_nt: torch.Tensor, l_ess: torch.Tensor,
               l_lda: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Eq. 11-12: ``L = [L_S + alpha L_T] + [beta L_ESS + gamma L_LDA]`` with
    ``L_S = sum_m (L_PS + L_NS)`` (the sum over sources is inside ``ps_loss``/``ns_loss``) and
    ``L_T = L_PT + L_NT``."""
    return (l_ps + l_ns) + alpha * (l_pt + l_nt) + beta * l_ess + gamma * l_lda


def inference_probs(pos_logits: torch.Tensor, neg_logits: torch.Tensor | None) -> torch.Tensor:
    """Inference: ``P = (P_P + P_N) / 2`` (``P_P`` alone without the negative branch); the unseen
    score is ``1 - max P``."""
    p = pos_logits.softmax(dim=-1)
    return p if neg_logits is None else (p + neg_logits.softmax(dim=-1)) / 2


@dataclass(frozen=True)
class LossSettings:
    """What :func:`step_losses` reads from ``TRAINER.PROMPTEMO``, as plain Python values (so that
    ``torch.compile`` guards on constants, not on config lookups)."""

    num_sources: int
    logit_scale: float
    neg_scale: float
    tau: float
    alpha: float
    beta: float
    gamma: float
    mmd_multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    use_neg: bool = True
    use_target: bool = True
    use_ess: bool = True
    use_lda: bool = True


def step_losses(f_s: torch.Tensor, f_t: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                h_p: torch.Tensor, h_n: torch.Tensor, settings: LossSettings) -> dict[str, torch.Tensor]:
    """Every loss of one training step (eq. 3, 4, 7-12) from the normalised source features ``f_s``
    (with their ``labels`` and source ``domains``), target features ``f_t`` and prompt features.
    A switched-off term is 0. ``loss`` is eq. 12; ``pseudo_share_p/n`` are the shares of target images
    that received a pseudo-label (0 without target terms)."""
    s = settings
    zero = f_s.new_zeros(())
    l_ps = ps_loss(positive_logits(f_s, h_p, s.logit_scale), labels, domains, s.num_sources)
    l_ns = l_pt = l_nt = l_ess = l_lda = share_p = share_n = zero
    if s.use_neg:
        l_ns = ns_loss(negative_logits(f_s, h_n, s.neg_scale), labels, domains, s.num_sources)
    if s.use_target:
        l_pt, share_p = pt_loss(positive_logits(f_t, h_p, s.logit_scale), s.tau)
        if s.use_neg:
            l_nt, share_n = nt_loss(negative_logits(f_t, h_n, s.neg_scale), s.tau)
    if s.use_ess:
        l_ess = ess_loss(h_p, h_n)
    if s.use_lda:
        l_lda = lda_loss(f_s, domains, f_t, s.num_sources, s.mmd_multipliers)
    loss = total_loss(l_ps, l_ns, l_pt, l_nt, l_ess, l_lda, s.alpha, s.beta, s.gamma)
    return {"loss": loss, "loss_ps": l_ps, "loss_ns": l_ns, "loss_pt": l_pt, "loss_nt": l_nt, "loss_ess": l_ess,
            "loss_lda": l_lda, "pseudo_share_p": share_p, "pseudo_share_n": share_n}
