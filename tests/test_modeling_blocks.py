"""The building blocks of the ResNet-based methods, each against numbers computed by hand: ResNet trunks
loaded strictly from torchvision files, CBAM, gradient reversal, ArcFace, the quadrant split, the weighted and
class-pair MK-MMD, and the per-step inverse-decay learning rate."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from conftest import make_cfg
from engine.modeling.blocks import CBAM, ArcFace, AttentionBlock, GradientReversal, quadrants
from engine.modeling.mmd import class_pair_mmd, mk_mmd, weighted_mk_mmd
from engine.modeling.resnet import ResNetTrunk, build_resnet_trunk, load_trunk_weights
from engine.optim import build_lr_scheduler, build_optimizer
from engine.utils.errors import UserError


# ---------------------------------------------------------------------------------------------- ResNet trunks
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_trunk_has_torchvision_names_and_loads_a_torchvision_file_strictly(arch, tmp_path):
    reference = getattr(torchvision.models, arch)()
    path = str(tmp_path / f"{arch}.pth")
    torch.save(reference.state_dict(), path)
    trunk = ResNetTrunk(arch, upto="layer2")
    kept = {k for k in reference.state_dict() if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))}
    assert set(trunk.state_dict()) == kept
    load_trunk_weights(trunk, path)
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    x = torch.randn(2, 3, 64, 64)
    reference.eval(), trunk.eval()
    with torch.no_grad():
        expected = reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))
        assert torch.allclose(trunk(x), expected)
    assert trunk.out_channels == expected.shape[1]


def test_trunk_weights_errors_name_the_file_and_the_first_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    trunk = ResNetTrunk("resnet18", upto="layer2")
    missing = dict(state)
    del missing["layer1.0.conv1.weight"], missing["bn1.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"missing.pth \(MODEL.BACKBONE.WEIGHTS\) do not fit resnet18 at width 64: 2 missing \((bn1.weight, "
                                        r"layer1.0.conv1.weight|layer1.0.conv1.weight, bn1.weight)\)"):
        load_trunk_weights(trunk, str(tmp_path / "missing.pth"))
    prefixed = {f"module.{k}": v for k, v in state.items()}  # a DataParallel checkpoint
    torch.save(prefixed, tmp_path / "prefixed.pth")
    with pytest.raises(UserError, match=r"unexpected \(module.conv1.weight, "):
        load_trunk_weights(trunk, str(tmp_path / "prefixed.pth"))
    with pytest.raises(UserError, match=r"of another shape \(conv1.weight \(64, 3, 7, 7\) \(expected \(16, 3, 7, 7\)\)"):
        load_trunk_weights(ResNetTrunk("resnet18", upto="layer2", width=16), _save(state, tmp_path / "full.pth"))
    with pytest.raises(UserError, match="backbone weights file not found: /nowhere/r18.pth"):
        load_trunk_weights(trunk, "/nowhere/r18.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read backbone weights"):
        load_trunk_weights(trunk, str(tmp_path / "broken.pth"))


def _save(state, path) -> str:
    torch.save(state, path)
    return str(path)


def test_trunk_weights_inside_a_state_dict_entry_and_without_batch_counters_load(tmp_path):
    """The MS-Celeb ResNet-18 holds its weights under 'state_dict'; old torchvision files lack
    num_batches_tracked."""
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if "num_batches_tracked" not in k}
    trunk = ResNetTrunk("resnet18")
    load_trunk_weights(trunk, _save({"state_dict": state, "epoch": 40}, tmp_path / "msceleb.pth"))
    assert torch.equal(trunk.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_build_resnet_trunk_says_when_it_starts_from_random_weights(caplog):
    cfg = make_cfg("unused", "unused", "MODEL.BACKBONE.NAME", "resnet34", "MODEL.BACKBONE.WIDTH", "8")
    with caplog.at_level(logging.INFO):
        trunk = build_resnet_trunk(cfg, upto="layer2")
    assert "resnet34 up to layer2 starts from random weights (MODEL.BACKBONE.WEIGHTS is empty)" in caplog.text
    assert trunk.out_channels == 16 and len(trunk.layer1) == 3 and len(trunk.layer2) == 4  # ResNet-34's stages
    with pytest.raises(UserError, match="unknown ResNet 'resnet19'"):
        ResNetTrunk("resnet19")


# ---------------------------------------------------------------------------------------------- blocks
def test_cbam_by_hand_and_its_49_kernel():
    cbam = CBAM(32)
    assert cbam.spatial.kernel_size == (49, 49) and cbam.mlp[0].out_channels == 2  # reduction 16
    for p in cbam.parameters():  # every attention 0.5: x + x * 0.5 * 0.5
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 32, 7, 7)
    assert torch.allclose(cbam(x), 1.25 * x)


def test_attention_block_shapes():
    block = AttentionBlock(16, 32, stride=2)
    assert block(torch.randn(2, 16, 14, 14)).shape == (2, 32, 7, 7)


def test_quadrants_cut_the_map_in_four():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    tl, tr, bl, br = quadrants(x)
    assert tl.flatten().tolist() == [0, 1, 4, 5] and tr.flatten().tolist() == [2, 3, 6, 7]
    assert bl.flatten().tolist() == [8, 9, 12, 13] and br.flatten().tolist() == [10, 11, 14, 15]


def test_gradient_reversal_multiplies_the_gradient_by_minus_alpha():
    x = torch.randn(3, 4, requires_grad=True)
    upstream = torch.randn(3, 4)
    grl = GradientReversal(alpha=0.3)
    y = grl(x)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.3 * upstream)


def test_arcface_without_margin_is_cross_entropy_of_30_cos():
    torch.manual_seed(0)
    head = ArcFace(8, 5, s=30.0, m=0.0)
    f, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    cos = F.normalize(f) @ F.normalize(head.weight).t()
    assert torch.allclose(F.cross_entropy(head(f, y), y), F.cross_entropy(30 * cos, y), atol=1e-6)


def test_arcface_margin_by_hand():
    head = ArcFace(2, 2, s=30.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # angle 0 to class 0; angle pi to class 0
    logits = head(f, torch.tensor([0, 0]))
    assert logits[0].tolist() == pytest.approx([30 * math.cos(0.5), 0.0], abs=1e-5)
    # theta = pi > pi - m: the fallback cos(theta) - m sin(m)
    assert logits[1, 0].item() == pytest.approx(30 * (-1 - 0.5 * math.sin(0.5)), abs=1e-4)
    assert torch.allclose(head(f), 30 * torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # inference: no margin


# ---------------------------------------------------------------------------------------------- MMD
def test_weighted_mmd_with_uniform_weights_is_the_engines_mk_mmd():
    torch.manual_seed(1)
    s, t = torch.randn(12, 5), torch.randn(9, 5) + 0.3
    uniform = weighted_mk_mmd(s, t, torch.full((12,), 1 / 12), torch.full((9,), 1 / 9))
    assert uniform.item() == pytest.approx(mk_mmd(s, t).item(), rel=1e-5)
    assert weighted_mk_mmd(s, t, torch.zeros(12), torch.zeros(9)).item() == 0.0


def test_class_pair_mmd_is_the_mmd_of_each_pair_of_class_sets():
    torch.manual_seed(2)
    s, t = torch.randn(14, 4), torch.randn(10, 4)
    ys, yt = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2, 2]), torch.tensor([1, 1, 0, 0, 2, 2, 1, 0, 2, 1])
    mask_s, mask_t = torch.ones(14), torch.ones(10)
    mask_s[[0, 1, 7, 10]] = 0  # every source sample of class 0 rejected
    mmd, present = class_pair_mmd(s, t, ys, yt, mask_s, mask_t, num_classes=4)
    assert present.tolist() == [[False] * 4, [True, True, True, False], [True, True, True, False], [False] * 4]
    for c in (1, 2):
        for d in (0, 1, 2):
            expected = mk_mmd(s[(ys == c) & (mask_s > 0)], t[yt == d])
            assert mmd[c, d].item() == pytest.approx(expected.item(), rel=1e-5)
    assert mmd[0].abs().sum() == 0 and mmd[:, 3].abs().sum() == 0


# ---------------------------------------------------------------------------------------------- schedule
def test_inverse_decay_follows_its_formula_step_by_step():
    cfg = make_cfg("unused", "unused", "OPTIM.LR_SCHEDULER", "inverse_decay", "OPTIM.LR", "0.01",
                   "OPTIM.INVERSE_DECAY.MAX_ITER", "100")
    optim = build_optimizer(torch.nn.Linear(2, 2), cfg.OPTIM)
    sched = build_lr_scheduler(optim, cfg.OPTIM)
    lrs = []
    for _ in range(201):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    expected = [0.01 * (1 + 10 * min(1.0, t / 100)) ** -0.75 for t in (0, 50, 100, 200)]
    assert [lrs[t] for t in (0, 50, 100, 200)] == pytest.approx(expected)
