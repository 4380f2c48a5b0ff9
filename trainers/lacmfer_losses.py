"""LA-CMFER's losses (Yang et al., ACM MM 2024), one function per term, from the released code
(YYX-future/LA-CMFER: ``loss/``, ``pseudo/pseudo.py``, ``train.py:132``), written anew.

Notation: ``z_g``, ``z_l`` the logits of the global and the local head, ``f_g``, ``f_l`` their features;
``s`` source, ``t`` target; ``y`` the source labels; ``K`` seen classes. The total (:func:`total_loss`):

    L = LS(z_g^s, y) + LS(z_l^s, y) + 0.4 (A_g + A_l) + 0.5 MCC(z_g^t, z_l^t) + 0.1 L_pl

with ``A = weighted MK-MMD + 0.02 * class-cluster term`` for each head (:func:`alignment_loss`). Where the
code and its description differ, the code is followed and the docstring says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from engine.modeling.mmd import DEFAULT_MULTIPLIERS, class_pair_mmd, weighted_mk_mmd


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """LS: ``mean_i sum_k -q_ik log p_ik`` with ``q = (1 - eps) onehot(y) + eps / K`` (Szegedy et al.). Zero
    logits give ``log K``."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    q = F.one_hot(labels, logits.shape[-1]).float() * (1.0 - epsilon) + epsilon / logits.shape[-1]
    return -(q * log_p).sum(-1).mean()


def confident_predictions(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(argmax, mask)``: each sample's predicted class and whether its max softmax is ``>= threshold``
    (0.4: which samples the alignment weights count)."""
    conf, pred = logits.float().softmax(-1).max(-1)
    return pred, (conf >= threshold).float()


def _sample_weights(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                    other_labels: torch.Tensor) -> torch.Tensor:
    """``w_i ∝ mask_i * 1[labels_i is among other_labels] * mean_k (z_ik - 1[k = labels_i] max_k z_ik)^2``,
    normalised to sum 1 (all zero when none counts)."""
    z = logits.float()
    peak = F.one_hot(labels, z.shape[-1]).float() * z.max(-1, keepdim=True).values
    matched = (labels[:, None] == other_labels[None, :]).any(1).float()
    w = (z - peak).pow(2).mean(-1) * mask * matched
    return w / w.sum().clamp_min(1e-12)


def alignment_weights(logits_s: torch.Tensor, labels_s: torch.Tensor, mask_s: torch.Tensor,
                      logits_t: torch.Tensor, pseudo_t: torch.Tensor, mask_t: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The detached sample weights of the weighted MMD (``mmd_1.get_weight``): a source sample counts when
    it is confident (``mask_s``) and some target sample is predicted its class; a target sample when it is
    confident and some source sample has its predicted class. Each is weighted by how far its logits are
    from the one-hot of its class scaled to its largest logit, ``mean_k (z_ik - 1[k = y_i] max z_i)^2``.
    Logits ``[2, 0, 1]`` and ``[1, 3, 0]``, both of class 0 and both counted: ``[1/14, 13/14]``."""
    with torch.no_grad():
        return (_sample_weights(logits_s, labels_s, mask_s, pseudo_t),
                _sample_weights(logits_t, pseudo_t, mask_t, labels_s))


def cluster_loss(f_s: torch.Tensor, f_t: torch.Tensor, labels_s: torch.Tensor, pseudo_t: torch.Tensor,
                 mask_s: torch.Tensor, mask_t: torch.Tensor, num_classes: int,
                 multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """Class-cluster term (``mmd_1.get_cluster_loss``): ``mean_c MMD^2(S_c, T_c) - mean_{c != d} MMD^2(S_c, T_d)``
    over the classes present among the confident source samples and the confident pseudo-labelled target
    samples, each pair with its own kernel bandwidth; 0 unless both kinds of pair exist."""
    mmd, present = class_pair_mmd(f_s, f_t, labels_s, pseudo_t, mask_s, mask_t, num_classes, multipliers)
    same = torch.eye(num_classes, dtype=torch.bool, device=mmd.device)
    n_intra, n_inter = (present & same).sum(), (present & ~same).sum()
    intra = (mmd * same).sum() / n_intra.clamp_min(1)
    inter = (mmd * ~same).sum() / n_inter.clamp_min(1)
    return (intra - inter) * ((n_intra > 0) & (n_inter > 0)).float()


def alignment_loss(f_s: torch.Tensor, f_t: torch.Tensor, logits_s: torch.Tensor, logits_t: torch.Tensor,
                   labels_s: torch.Tensor, confidence: float, cluster_weight: float,
                   multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """A of one head: the sample-weighted MK-MMD between source and target features
    (``w^T K_SS w + v^T K_TT v - 2 w^T K_ST v``, :func:`alignment_weights`) plus ``cluster_weight`` (0.02) times
    :func:`cluster_loss`; confidence masks at ``confidence`` (0.4), target classes by pseudo-label."""
    _, mask_s = confident_predictions(logits_s, confidence)
    pseudo_t, mask_t = confident_predictions(logits_t, confidence)
    w_s, w_t = alignment_weights(logits_s, labels_s, mask_s, logits_t, pseudo_t, mask_t)
    weighted = weighted_mk_mmd(f_s, f_t, w_s, w_t, multipliers)
    cluster = cluster_loss(f_s, f_t, labels_s, pseudo_t, mask_s, mask_t, logits_s.shape[-1], multipliers)
    return weighted + cluster_weight * cluster


def mcc_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MCC between the two heads' target predictions (``loss/intra_1.py``): ``C = a^T b``, normalised by its
    rows and by its columns; the mean of the two normalisations' off-diagonal sums, each divided by ``K``.
    ``MCC(I, I) = 0``; uniform predictions give ``(K - 1) / K``. The released code feeds raw logits, which can
    divide by zero (``z_g = z_l = [1, -1]``); the trainer passes probabilities unless asked for logits."""
    k = a.shape[-1]
    cov = a.float().t() @ b.float()
    by_rows = cov / cov.sum(1, keepdim=True)
    by_cols = cov / cov.sum(0, keepdim=True)
    return 0.5 * (by_rows.sum() - by_rows.trace()) / k + 0.5 * (by_cols.sum() - by_cols.trace()) / k


def pseudo_label_loss(logits_g: torch.Tensor, logits_l: torch.Tensor, threshold: float) -> tuple[torch.Tensor, ...]:
    """L_pl (``pseudo.select_pseudo_labels``): target samples where both heads predict the same class and at
    least one of them with probability ``> threshold`` (0.9; the code's "or", where its description says both)
    take that class as pseudo-label; masked cross-entropy of each head, averaged over the kept samples, summed.
    0 when no sample qualifies (the code's NaN turned into 0). Returns the loss and the kept share."""
    logits_g, logits_l = logits_g.float(), logits_l.float()
    with torch.no_grad():
        conf_g, pred_g = logits_g.softmax(-1).max(-1)
        conf_l, pred_l = logits_l.softmax(-1).max(-1)
        keep = ((pred_g == pred_l) & ((conf_g > threshold) | (conf_l > threshold))).float()
    ce = F.cross_entropy(logits_g, pred_g, reduction="none") + F.cross_entropy(logits_l, pred_g, reduction="none")
    return (ce * keep).sum() / keep.sum().clamp_min(1), keep.mean()


@dataclass(frozen=True)
class LossSettings:
    """What :func:`step_losses` reads from ``TRAINER.LACMFER``, as plain values."""

    label_smoothing: float = 0.1
    align_weight: float = 0.4
    cluster_weight: float = 0.02
    mcc_weight: float = 0.5
    pseudo_weight: float = 0.1
    confidence: float = 0.4
    pseudo_threshold: float = 0.9
    mcc_on_logits: bool = False
    mmd_multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS


def step_losses(out_s: dict[str, torch.Tensor], out_t: dict[str, torch.Tensor], labels_s: torch.Tensor,
                settings: LossSettings) -> dict[str, torch.Tensor]:
    """Every term of one step from the network's outputs on the source and the target batch
    (``{"f_g", "z_g", "f_l", "z_l"}`` each); ``loss`` is :func:`total_loss`."""
    s = settings
    ls_g = label_smoothed_ce(out_s["z_g"], labels_s, s.label_smoothing)
    ls_l = label_smoothed_ce(out_s["z_l"], labels_s, s.label_smoothing)
    align_g = alignment_loss(out_s["f_g"], out_t["f_g"], out_s["z_g"], out_t["z_g"], labels_s, s.confidence,
                             s.cluster_weight, s.mmd_multipliers)
    align_l = alignment_loss(out_s["f_l"], out_t["f_l"], out_s["z_l"], out_t["z_l"], labels_s, s.confidence,
                             s.cluster_weight, s.mmd_multipliers)
    heads = (out_t["z_g"], out_t["z_l"]) if s.mcc_on_logits else (out_t["z_g"].float().softmax(-1),
                                                                  out_t["z_l"].float().softmax(-1))
    mcc = mcc_loss(*heads)
    pl, kept = pseudo_label_loss(out_t["z_g"], out_t["z_l"], s.pseudo_threshold)
    loss = total_loss(ls_g, ls_l, align_g, align_l, mcc, pl, s)
    return {"loss": loss, "loss_ls_g": ls_g, "loss_ls_l": ls_l, "loss_align_g": align_g, "loss_align_l": align_l,
            "loss_mcc": mcc, "loss_pl": pl, "pseudo_share": kept}


def total_loss(ls_g: torch.Tensor, ls_l: torch.Tensor, align_g: torch.Tensor, align_l: torch.Tensor,
               mcc: torch.Tensor, pl: torch.Tensor, s: LossSettings) -> torch.Tensor:
    """``train.py:132``: ``LS_g + LS_l + 0.4 (A_g + A_l) + 0.5 MCC + 0.1 L_pl``."""
    return ls_g + ls_l + s.align_weight * (align_g + align_l) + s.mcc_weight * mcc + s.pseudo_weight * pl
