"""Multi-kernel maximum mean discrepancy (MK-MMD), shared by every trainer that aligns domains.

Kernel: a sum of Gaussian kernels ``exp(-||a - b||^2 / (base * m))`` over multipliers
``m in (1/4, 1/2, 1, 2, 4)``, where ``base`` is the mean pairwise squared distance of the joint batch
(source part and target together, diagonal excluded), detached, as in DAN / MFSAN.

Estimate (biased, V-statistic), in the mean-of-blocks form so the two batches may differ in size:

    MMD^2(S, T) = mean(K_SS) + mean(K_TT) - 2 mean(K_ST)

It is exactly 0 for identical batches and grows as their distributions move apart.

For several sources, ``sum_m MMD^2(S_m, T)`` is computed with per-source weight vectors over one
joint distance matrix instead of selecting each source's rows: no data-dependent shapes, hence no
host-device synchronisation inside a training step.
"""
from __future__ import annotations

from typing import Sequence

import torch

DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


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
    kernels = sum(torch.exp(-sq_dist.unsqueeze(0) / (base.view(-1, 1, 1) * m)) for m in multipliers)  # (M, N, N)
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
