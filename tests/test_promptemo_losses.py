"""PromptEmo's equations against numbers worked out by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainers import promptemo_losses as L


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_positive_logits_are_scaled_cosines():
    f = _unit([1.0, 0.0])
    h_p = _unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    assert L.positive_logits(f, h_p, 100.0)[0].tolist() == pytest.approx([100.0, 0.0, 100 / math.sqrt(2)])


def test_negative_branch_gives_class_k_to_a_feature_far_from_not_k():
    # f is opposite to "not class 0" and orthogonal to "not class 1": dis = 4 and 2
    f = _unit([1.0, 0.0])
    h_n = _unit([-1.0, 0.0], [0.0, 1.0])
    logits = L.negative_logits(f, h_n, neg_scale=50.0)
    assert logits[0].tolist() == pytest.approx([200.0, 100.0])
    assert logits.softmax(-1).argmax().item() == 0
    # s_N = s/2 makes P_N = softmax(-s cos(f, h_N))
    torch.manual_seed(0)
    f, h_n = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    assert torch.allclose(L.negative_logits(f, h_n, 50.0).softmax(-1), (-100.0 * f @ h_n.t()).softmax(-1), atol=1e-6)


def test_ess_pairs_each_class_with_its_own_negative():
    h_p = _unit([1.0, 0.0], [0.0, 1.0])
    h_n = _unit([-1.0, 0.0], [0.0, 1.0])  # class 0: opposite (distance 2); class 1: identical (0)
    assert L.ess_loss(h_p, h_n).item() == pytest.approx(((1 - 2) + (1 - 0)) / 2)
    # swapping the negatives changes the pairing: class 0 vs [0,1] and class 1 vs [-1,0], both sqrt(2)
    assert L.ess_loss(h_p, h_n.flip(0)).item() == pytest.approx(1 - math.sqrt(2))


def test_source_losses_are_summed_over_sources_not_averaged_over_the_batch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    domains = torch.tensor([0, 0, 1])
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)]
    expected = (ce[0] + ce[1]) / 2 + ce[2]  # mean within source 0, plus source 1
    assert L.ps_loss(logits, labels, domains, 2).item() == pytest.approx(expected)
    assert L.ns_loss(logits, labels, domains, 2).item() == pytest.approx(expected)


def test_pseudo_label_loss_masks_at_tau_and_averages_over_the_whole_batch():
    logits = torch.tensor([[3.0, 0.0], [0.0, 0.5], [0.0, 4.0], [1.0, 1.0]], requires_grad=True)
    # max probabilities: 0.953 (kept), 0.622 (dropped), 0.982 (kept), 0.5 (dropped) at tau 0.8
    loss, share = L.pt_loss(logits, tau=0.8)
    kept = math.log(1 + math.exp(-3)) + math.log(1 + math.exp(-4))
    assert loss.item() == pytest.approx(kept / 4)  # divided by |B^T| = 4, not by the 2 kept samples
    assert share.item() == pytest.approx(0.5)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[3].abs().sum() == 0  # masked: no gradient
    # the pseudo-label itself carries no gradient: the loss is plain CE against a constant target
    logits2 = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(logits2[[0, 2]], torch.tensor([0, 1]), reduction="sum").div(4).backward()
    assert torch.allclose(logits.grad, logits2.grad)
    nt, share_n = L.nt_loss(logits.detach(), tau=0.99)
    assert nt.item() == 0 and share_n.item() == 0


def test_total_loss_weights():
    one = torch.tensor(1.0)
    total = L.total_loss(one, 2 * one, 3 * one, 4 * one, 5 * one, 6 * one, alpha=0.1, beta=0.3, gamma=0.2)
    assert total.item() == pytest.approx(1 + 2 + 0.1 * 7 + 0.3 * 5 + 0.2 * 6)


def test_lda_loss_sums_mmd_per_source_part():
    torch.manual_seed(0)
    target = torch.randn(8, 4)
    feats = torch.cat([target.clone(), target.clone() + 3])
    domains = torch.tensor([0] * 8 + [1] * 8)
    both = L.lda_loss(feats, domains, target, 2)
    only_shifted = L.lda_loss(feats[8:], domains[8:] - 1, target, 1)
    assert both.item() == pytest.approx(only_shifted.item(), rel=1e-5)  # the identical part adds ~0
    assert both.item() > 0.5


def test_inference_averages_the_two_branches():
    pos, neg = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    p = L.inference_probs(pos, neg)
    assert p[0].tolist() == pytest.approx([0.5, 0.5])
    assert torch.allclose(L.inference_probs(pos, None), pos.softmax(-1))
