"""Multi-kernel maximum mean discrepancy (MK-MMD), shared by every trainer that aligns domains.

Kernel: a sum of Gaussian kernels ``exp(-||a - b||^2 / (base * m))`` over multipliers
``m in (1/4, 1/2, 1, 2, 4)``, where ``base`` is the mean pairwise squared distance of the joint batch
(source and target together, diagonal excluded), detached, as in DAN / MFSAN.

Estimate (biased, V-statistic), in the mean-of-blocks form so the two batches may differ in size:

    MMD^2(S, T) = mean(K_SS) + mean(K_TT) - 2 mean(K_ST)

It is exactly 0 for identical batches and grows as their distributions move apart.
"""
from __future__ import annotations

from typing import Sequence

import torch

DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def multi_gaussian_kernel(x: torch.Tensor, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """Kernel matrix of the rows of ``x`` (n, d): sum over bandwidths of Gaussian kernels."""
    x = x.float()
    sq_dist = torch.cdist(x, x).pow(2)
    n = x.shape[0]
    base = (sq_dist.sum() / max(n * n - n, 1)).detach().clamp_min(1e-12)
    return sum(torch.exp(-sq_dist / (base * m)) for m in multipliers)


def mk_mmd(source: torch.Tensor, target: torch.Tensor,
           multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """Squared MK-MMD between two batches of features ``(n_s, d)`` and ``(n_t, d)`` (see module doc)."""
    n_s = source.shape[0]
    k = multi_gaussian_kernel(torch.cat([source, target]), multipliers)
    return k[:n_s, :n_s].mean() + k[n_s:, n_s:].mean() - 2 * k[:n_s, n_s:].mean()


def multi_source_mmd(source_parts: Sequence[torch.Tensor], target: torch.Tensor,
                     multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> torch.Tensor:
    """``sum_m MMD^2(S_m, T)`` over the sources' parts of a batch; empty parts are skipped."""
    terms = [mk_mmd(part, target, multipliers) for part in source_parts if part.shape[0] > 0]
    return torch.stack(terms).sum() if terms else target.new_zeros(())
