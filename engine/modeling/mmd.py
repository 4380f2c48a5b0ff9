"""Multi-kernel maximum mean discrepancy (MK-MMD), shared by every trainer that aligns domains.

Kernel: a sum of Gaussian kernels ``exp(-||a - b||^2 / (base * m))`` over multipliers
``m in (1/4, 1/2, 1, 2, 4)``, where ``base`` is the mean pairwise squared distance of the joint batch
(source part and target together, diagonal excluded), detached, as in DAN / MFSAN.

Estimate (biased, V-statistic), in the mean-of-blocks form so the two batches may differ in size:

    MMD^2(S, T) = mean(K_SS) + mean(K_TT) - 2 mean(K_ST)

It is exactly 0 for identical batches and grows as their distributions move apart.

For several sources, ``sum_m MMD^2(S_m, T)`` is computed with per-source weight vectors over one
joint distance matrix instead of selecting each source's rows: no data-dependent shapes, hence no
host-device synchronisation inside a training step. The same holds for the sample-weighted estimate
(:func:`weighted_mk_mmd`) and the MMD between every class of the source and every class of the target
(:func:`class_pair_mmd`), which LA-CMFER uses.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_kernels(sq_dist: torch.Tensor, base: torch.Tensor | float, multipliers: Sequence[float]) -> torch.Tensor:
    """``sum_m exp(-sq_dist / (base * m))``: the multi-kernel of every estimate here (``base`` broadcasts)."""
    return sum(torch.exp(-sq_dist / (base * m)) for m in multipliers)


def multi_source_mmd_by_domain(source: torch.Tensor, domains: torch.Tensor, target: torch.Tensor,
                               num_sources: int, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS
                               ) -> torch.Tensor:
    """``sum_m MMD^2(S_m, T)`` where ``S_m`` are the rows of ``source`` with ``domains == m``.

    Sources absent from the batch contribute nothing. Equals :func:`mk_mmd` summed over the parts.
    """
    x = torch.cat([source, target]).float()
    n_s = source.shape[0]
    sq_dist = torch.cdist(x, x).pow(2)
    in_source = torch.nn.functional.one_hot(domains.long(), num_sources).t().float()  # (M, n_s)
    count_s = in_source.sum(1)  # (M,)
    tgt = torch.ones(target.shape[0], device=x.device) / target.shape[0]
    # joint membership of S_m and T, for each source's bandwidth
    joint = torch.cat([in_source, torch.ones(num_sources, target.shape[0], device=x.device)], dim=1)  # (M, N)
    n_joint = joint.sum(1)
    base = ((joint @ sq_dist) * joint).sum(1) / (n_joint * n_joint - n_joint).clamp_min(1)
    base = base.detach().clamp_min(1e-12)  # (M,)
    kernels = gaussian_kernels(sq_dist.unsqueeze(0), base.view(-1, 1, 1), multipliers)  # (M, N, N)
    a = torch.cat([in_source / count_s.clamp_min(1).unsqueeze(1),
                   torch.zeros(num_sources, target.shape[0], device=x.device)], dim=1)  # source means
    b = torch.cat([torch.zeros(n_s, device=x.device), tgt])  # target mean
    k_a = torch.einsum("mij,mj->mi", kernels, a)
    k_b = torch.einsum("mij,j->mi", kernels, b)
    mmd = (a * k_a).sum(1) + (b * k_b).sum(1) - 2 * (a * k_b).sum(1)
    return (mmd * (count_s > 0).float()).sum()


def mk_mmd(source: torch.Tensor, target: torch.Tensor,
           multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """Squared MK-MMD between two batches of features ``(n_s, d)`` and ``(n_t, d)`` (see module doc)."""
    domains = torch.zeros(source.shape[0], dtype=torch.long, device=source.device)
    return multi_source_mmd_by_domain(source, domains, target, 1, multipliers)


def multi_source_mmd(source_parts: Sequence[torch.Tensor], target: torch.Tensor,
                     multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """``sum_m MMD^2(S_m, T)`` over a list of source batches; empty ones are skipped."""
    domains = torch.cat([torch.full((p.shape[0],), m, dtype=torch.long, device=target.device)
                         for m, p in enumerate(source_parts)])
    return multi_source_mmd_by_domain(torch.cat(list(source_parts)), domains, target, len(source_parts), multipliers)


def weighted_mk_mmd(source: torch.Tensor, target: torch.Tensor, source_weights: torch.Tensor,
                    target_weights: torch.Tensor, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """Sample-weighted squared MK-MMD: ``w^T K_SS w + v^T K_TT v - 2 w^T K_ST v`` with weights ``w`` over the
    source rows and ``v`` over the target rows (each summing to one, or all zero), on the kernel of
    :func:`mk_mmd` (bandwidth from the joint batch). Uniform weights ``1/n`` give :func:`mk_mmd`."""
    x = torch.cat([source, target]).float()
    sq_dist = torch.cdist(x, x).pow(2)
    n = x.shape[0]
    base = (sq_dist.sum() / max(n * n - n, 1)).detach().clamp_min(1e-12)
    kernels = gaussian_kernels(sq_dist, base, multipliers)
    w = torch.cat([source_weights.float(), -target_weights.float()])  # w K w = sum K_SS + sum K_TT - 2 sum K_ST
    return w @ kernels @ w


def class_pair_mmd(source: torch.Tensor, target: torch.Tensor, source_labels: torch.Tensor,
                   target_labels: torch.Tensor, source_mask: torch.Tensor, target_mask: torch.Tensor,
                   num_classes: int, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mmd, present)``, both ``(K, K)``: ``mmd[c, d] = MMD^2(S_c, T_d)`` between the source rows of class
    ``c`` and the target rows of class ``d`` (rows with a zero mask left out), each pair with the bandwidth of
    its own joint set as :func:`mk_mmd` would compute it, and ``present[c, d]`` whether both sets are
    non-empty (``mmd`` is 0 where not)."""
    x = torch.cat([source, target]).float()
    n_s, n_t = source.shape[0], target.shape[0]
    sq_dist = torch.cdist(x, x).pow(2)
    a = torch.cat([F.one_hot(source_labels.long(), num_classes).t().float() * source_mask.float(),
                   x.new_zeros(num_classes, n_t)], dim=1)  # (K, N): source class c
    b = torch.cat([x.new_zeros(num_classes, n_s),
                   F.one_hot(target_labels.long(), num_classes).t().float() * target_mask.float()], dim=1)
    count_a, count_b = a.sum(1), b.sum(1)
    present = (count_a[:, None] > 0) & (count_b[None, :] > 0)
    # bandwidth of each pair's joint set: (a + b)^T D (a + b) over the off-diagonal pairs
    d_a, d_b = a @ sq_dist, b @ sq_dist
    within = (d_a * a).sum(1)[:, None] + (d_b * b).sum(1)[None, :] + 2 * d_a @ b.t()
    n_joint = count_a[:, None] + count_b[None, :]
    base = (within / (n_joint * n_joint - n_joint).clamp_min(1)).detach().clamp_min(1e-12)  # (K, K)
    kernels = gaussian_kernels(sq_dist, base[:, :, None, None], multipliers)  # (K, K, N, N)
    mean_a, mean_b = a / count_a.clamp_min(1)[:, None], b / count_b.clamp_min(1)[:, None]
    k_aa = torch.einsum("cn,cdnm,cm->cd", mean_a, kernels, mean_a)
    k_bb = torch.einsum("dn,cdnm,dm->cd", mean_b, kernels, mean_b)
    k_ab = torch.einsum("cn,cdnm,dm->cd", mean_a, kernels, mean_b)
    return (k_aa + k_bb - 2 * k_ab) * present.float(), present
