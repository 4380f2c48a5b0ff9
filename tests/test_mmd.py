"""The shared MK-MMD kernel: hand-computed value, zero for identical batches, growth with shift."""
from __future__ import annotations

import math

import pytest
import torch

from engine.modeling.mmd import mk_mmd, multi_source_mmd


def test_mmd_by_hand_on_two_points():
    # points 0 and 3 on a line: squared distance 9, base = mean off-diagonal sq. distance = 9;
    # K(x, x) = 5 (five kernels of value 1), K(0, 3) = sum_m exp(-9 / (9 m)); MMD = K_ss + K_tt - 2 K_st
    off = sum(math.exp(-9 / (9 * m)) for m in (0.25, 0.5, 1, 2, 4))
    assert mk_mmd(torch.tensor([[0.0]]), torch.tensor([[3.0]])).item() == pytest.approx(10 - 2 * off)


def test_identical_batches_give_zero_and_shift_increases_it():
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    assert mk_mmd(x, x.clone()).abs().item() < 1e-6
    values = [mk_mmd(x, torch.randn(40, 8) + shift).item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0]


def test_multi_source_sums_parts_and_has_gradient():
    torch.manual_seed(0)
    t = torch.randn(10, 4)
    parts = [torch.randn(6, 4, requires_grad=True), torch.randn(5, 4) + 1, torch.empty(0, 4)]
    total = multi_source_mmd(parts, t)
    assert total.item() == pytest.approx(mk_mmd(parts[0], t).item() + mk_mmd(parts[1], t).item(), rel=1e-6)
    total.backward()
    assert parts[0].grad is not None and parts[0].grad.abs().sum() > 0


def test_weighted_multi_source_form_equals_selecting_each_source():
    from engine.modeling.mmd import multi_source_mmd_by_domain

    torch.manual_seed(1)
    source, target = torch.randn(13, 6), torch.randn(9, 6) + 0.5
    domains = torch.tensor([0, 2, 2, 0, 1, 0, 2, 1, 0, 0, 2, 1, 0])
    expected = sum(mk_mmd(source[domains == m], target).item() for m in range(3))
    # the pairwise reference: the kernel of each joint batch built from scratch
    def reference(s, t):
        x = torch.cat([s, t])
        d2 = torch.cdist(x, x).pow(2)
        n = len(x)
        base = d2.sum() / (n * n - n)
        k = sum(torch.exp(-d2 / (base * m)) for m in (0.25, 0.5, 1, 2, 4))
        ns = len(s)
        return (k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()).item()
    assert expected == pytest.approx(sum(reference(source[domains == m], target) for m in range(3)), rel=1e-5)
    got = multi_source_mmd_by_domain(source, domains, target, 4)  # source 3 absent: contributes nothing
    assert got.item() == pytest.approx(expected, rel=1e-5)
