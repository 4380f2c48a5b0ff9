"""DUML (trainers/duml.py, trainers/duml_losses.py): the pseudo-label weights, the prototypes and the losses
against numbers computed by hand, the network's wiring, the prototypes through a checkpoint, and one run on
the synthetic domains that must beat chance on ACC-S. Gradient reversal and ArcFace themselves are tested in
tests/test_modeling_blocks.py."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torchvision

from conftest import (CHANCE_ACC_S, LEARNABLE_OPTS, ROOT, SYNTH_OPTS, SYNTH_SOURCES, SYNTH_TARGET,
                      check_fast_path_and_compiled_step, make_method_cfg)
from engine.config import extend_cfg, get_cfg_default, merge_from_file, merge_from_list
from engine.modeling.resnet import ResNetTrunk
from engine.trainer import build_trainer
from engine.utils.errors import UserError
from engine.utils.logger import setup_logger
from trainers import duml_losses as L
from trainers.duml import DUMLNet

CONFIGS = os.path.join(ROOT, "configs", "trainers", "DUML")


def duml_cfg(root: str, output_dir: str, *opts: str, config: str = "tiny.yaml"):
    """A DUML config file on the synthetic test domains (target synth_wild, unseen fear)."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, os.path.join(CONFIGS, config))
    merge_from_list(cfg, [
        "DATASET.NAME", "MOFER", "DATASET.ROOT", root, "OUTPUT_DIR", output_dir,
        "DATASET.SOURCE_DOMAINS", ",".join(SYNTH_SOURCES), "DATASET.TARGET_DOMAINS", SYNTH_TARGET,
        "DATASET.UNSEEN_CLASSES", "fear", "VERBOSE", "False", *SYNTH_OPTS, *opts])
    cfg.freeze()
    return cfg


# ------------------------------------------------------------------------------------------------ pseudo-labels
def test_entropy_is_in_bits_and_replaces_zero_probabilities_as_the_original():
    assert L.entropy_bits(torch.tensor([0.5, 0.5])).item() == pytest.approx(1.0)
    # p = 0 is replaced by 1e-6: -(1 log2 1) - 1e-6 log2 1e-6 = 1.9932e-5 bits
    assert L.entropy_bits(torch.tensor([1.0, 0.0])).item() == pytest.approx(1.9932e-5, rel=1e-3)


def test_equal_branch_outputs_give_that_prediction_as_pseudo_label():
    torch.manual_seed(0)
    logits = torch.randn(5, 6)
    class_logits = logits.expand(3, 5, 6)  # three branches, the same prediction
    disc_logits = torch.randn(3, 5, 2)  # whatever the discriminators say
    p_tilde, weights = L.pseudo_labels(class_logits, disc_logits, torch.tensor([40, 20, 10]))
    assert torch.allclose(p_tilde, logits.softmax(-1), atol=1e-6)
    assert weights.sum().item() == pytest.approx(1.0) and (weights > 0).all()


def test_pseudo_labels_weight_the_branches_by_a():
    # Two branches, one image: p~ = (a_0 p_0 + a_1 p_1) / (a_0 + a_1) with a = (3, 1): (0.75 * 0.2 + 0.25 * 0.6)
    probs = torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]])
    p_tilde = L.aggregate_pseudo_labels(probs, torch.tensor([3.0, 1.0]))
    assert p_tilde.tolist()[0] == pytest.approx([0.3, 0.7])


def test_domain_confidence_by_hand():
    # 2 / (1 + exp(-10 n_d / max n)) - 1 with n = (100, 50, 25): exp(-10), exp(-5), exp(-2.5)
    expected = [2 / (1 + math.exp(-10.0)) - 1, 2 / (1 + math.exp(-5.0)) - 1, 2 / (1 + math.exp(-2.5)) - 1]
    assert expected == pytest.approx([0.999909, 0.986614, 0.848284], abs=1e-6)
    assert L.domain_confidence(torch.tensor([100, 50, 25])).tolist() == pytest.approx(expected, abs=1e-6)


def test_prediction_confidence_by_hand():
    # Branch 0's discriminator says 0.5/0.5 on every target image: H = 1 bit. Branch 1's says 0.48/0.52 (or
    # 0.52/0.48): H = 0.48 * 1.058894 + 0.52 * 0.943416 = 0.998846 bits.
    disc = torch.tensor([[[0.5, 0.5], [0.5, 0.5]], [[0.48, 0.52], [0.52, 0.48]]])
    h1 = 0.48 * 1.058894 + 0.52 * 0.943416
    # the original: P_d = exp(-500 (0.3010 - H_d)) in float64, then P_d / sum P (e^349.5 and e^348.9: in range)
    p = [math.exp(-500 * (0.3010 - 1.0)), math.exp(-500 * (0.3010 - h1))]
    expected = [p[0] / sum(p), p[1] / sum(p)]
    assert expected[0] == pytest.approx(1 / (1 + math.exp(-500 * (1.0 - h1))))  # = 1 / (1 + e^-0.577) = 0.6404
    conf = L.prediction_confidence(disc, reference=0.3010, coefficient=500.0)
    assert conf.tolist() == pytest.approx(expected, abs=1e-4)
    assert conf[0].item() == pytest.approx(0.6404, abs=1e-3)
    # in float32 the unnormalised P_d overflows (e^349.5); the quotient does not
    assert torch.isfinite(L.prediction_confidence(torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]]))).all()


def test_domain_similarity_by_hand_and_without_the_in_place_update():
    # Two branches, two target images, entropies H (bits): image 0: branch 0 [0.5, 0.5] -> 1, branch 1
    # [0.8, 0.2] -> h = 0.8 * 0.321928 + 0.2 * 2.321928 = 0.721928; image 1: h for both.
    # S_0 = 1 + 1/h, S_1 = 2/h; s_0 = S_0 * 1 + S_1 * h = 3 + 1/h; s_1 = S_0 * h + S_1 * h = 3 + h.
    h = 0.8 * 0.321928 + 0.2 * 2.321928
    s = [3 + 1 / h, 3 + h]
    probs = torch.tensor([[[0.5, 0.5], [0.8, 0.2]], [[0.8, 0.2], [0.8, 0.2]]])
    sim = L.domain_similarity(probs)
    assert sim.tolist() == pytest.approx([s[0] / sum(s), s[1] / sum(s)], abs=1e-5)  # 0.5409, 0.4591
    # every entry divides the row's original sum: swapping the branches swaps the weights (the original's
    # in-place loop would not)
    assert L.domain_similarity(probs.flip(0)).tolist() == pytest.approx(sim.flip(0).tolist(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ prototypes
def _prototype_example():
    # One branch, K = 3 classes, C = 2. Kept: f0 = (3, 1) and f1 = (1, 3) as class 0, f3 = (0, 2) as class 2;
    # f2 = (4, 4) as class 1 is below the confidence threshold (mask 0).
    prototypes = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, -2.0]]])
    features = torch.tensor([[[3.0, 1.0], [1.0, 3.0], [4.0, 4.0], [0.0, 2.0]]], requires_grad=True)
    labels, mask = torch.tensor([0, 0, 1, 2]), torch.tensor([1.0, 1.0, 0.0, 1.0])
    return prototypes, features, labels, mask


def test_prototypes_move_by_the_ema_rule():
    prototypes, features, labels, mask = _prototype_example()
    new = L.ema_prototypes(prototypes, features, labels, mask, beta=0.5)
    # class 0: 0.5 (1, 1) + 0.5 mean((3, 1), (1, 3)) = 0.5 (1, 1) + 0.5 (2, 2) = (1.5, 1.5)
    # class 1: only a rejected sample: unchanged (0, 0); class 2: 0.5 (2, -2) + 0.5 (0, 2) = (1, 0)
    assert new[0].tolist() == [[1.5, 1.5], [0.0, 0.0], [1.0, 0.0]]
    # the gradient reaches the kept features through the batch mean: d mu_00 / d f_i0 = (1 - beta) / 2
    new[0, 0, 0].backward()
    assert features.grad[0].tolist() == [[0.25, 0.0], [0.25, 0.0], [0.0, 0.0], [0.0, 0.0]]
    # vectorised over branches: a second branch with other prototypes moves by its own features
    two = L.ema_prototypes(torch.cat([prototypes, torch.zeros_like(prototypes)]),
                           torch.cat([features.detach(), 2 * features.detach()]), labels, mask, beta=0.5)
    assert two[1].tolist() == [[2.0, 2.0], [0.0, 0.0], [0.0, 2.0]]  # 0.5 * 0 + 0.5 * 2 * mean


def test_local_loss_by_hand():
    prototypes, features, labels, mask = _prototype_example()
    new = L.ema_prototypes(prototypes, features, labels, mask, beta=0.5)
    # f0 - mu_0 = (1.5, -0.5): mean of squares (2.25 + 0.25) / 2 = 1.25; f1 - mu_0 = (-0.5, 1.5): 1.25;
    # f3 - mu_2 = (-1, 2): (1 + 4) / 2 = 2.5; f2 is not kept. Mean over the three kept: 5 / 3.
    assert L.local_loss(new, features, labels, mask).item() == pytest.approx(5 / 3)
    # summed over branches; nothing kept gives 0
    two = torch.cat([new, new]), torch.cat([features, features])
    assert L.local_loss(*two, labels, mask).item() == pytest.approx(10 / 3)
    assert L.local_loss(new, features, labels, torch.zeros(4)).item() == 0.0


# ------------------------------------------------------------------------------------------------ other terms
def test_kl_term_is_zero_when_the_tempered_fusion_prediction_is_the_pseudo_label():
    torch.manual_seed(1)
    v = torch.randn(4, 6)
    assert L.kl_to_pseudo_labels(4.0 * v, v.softmax(-1), temperature=4.0).abs().item() < 1e-6
    # direction: KL(p~ || q) with p~ = (0.5, 0.5), q = softmax(z / 4) = (0.25, 0.75):
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.143841 (KL(q || p~) would be 0.130812)
    z = 4.0 * torch.log(torch.tensor([[0.25, 0.75]]))
    assert L.kl_to_pseudo_labels(z, torch.tensor([[0.5, 0.5]]), 4.0).item() == pytest.approx(0.143841, abs=1e-5)


def test_discriminator_loss_and_reversal_schedule_by_hand():
    # undecided discriminator: ln 2 on each side
    assert L.discriminator_loss(torch.zeros(3, 2), torch.zeros(5, 2)).item() == pytest.approx(2 * math.log(2))
    # source labelled 0, target 1: logits that say so cost little, the reverse a lot
    right = L.discriminator_loss(torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 5.0]]))
    assert right.item() == pytest.approx(2 * math.log(1 + math.exp(-5.0)))
    # DANN: 2 / (1 + exp(-10 p)) - 1
    assert L.grl_alpha(0.0) == 0.0
    assert L.grl_alpha(0.5) == pytest.approx(0.986614, abs=1e-6)
    assert L.grl_alpha(1.0) == pytest.approx(0.999909, abs=1e-6)


# ------------------------------------------------------------------------------------------------ network
def test_network_has_the_originals_shapes_at_224_px():
    net = DUMLNet(ResNetTrunk("resnet34", upto="layer2"), num_sources=3, num_classes=6, scale=1.0,
                  domain_counts=torch.tensor([5, 5, 5]))
    assert [len(stage) for stage in net.branches[0][:2]] == [6, 3]  # attention blocks to 256, then 512
    assert net.branches[0][1][-1].conv2.out_channels == 512 and net.branches[0][0][-1].conv2.out_channels == 256
    assert (net.classifiers[0].in_features, net.classifiers[0].out_features) == (512, 6)
    assert (net.discriminators[2].in_features, net.discriminators[2].out_features) == (512, 2)
    assert (net.domain_classifier.in_features, net.domain_classifier.out_features) == (128, 3)
    assert net.fusion_classifier.in_features == 1024 and len(net.fusion.branches) == 2
    assert net.arcface.weight.shape == (6, 512) and (net.arcface.s, net.arcface.m) == (30.0, 0.5)
    assert net.prototypes.shape == (3, 6, 512)
    net.eval()
    with torch.no_grad():
        maps = net.stem(torch.randn(1, 3, 224, 224))
        assert maps.shape == (1, 128, 28, 28)
        assert net.fusion(maps).shape == (1, 1024)
        assert net.branch(0, maps)[0].shape == (1, 512)


@pytest.mark.parametrize("branches, calls", [(2, [2, 2]), (4, [1, 1, 1, 1])])
def test_quadrants_go_through_the_branches_of_the_originals_forward(branches, calls):
    net = DUMLNet(ResNetTrunk("resnet34", upto="layer2", width=8), 3, 6, 8 / 64, torch.ones(3),
                  quadrant_branches=branches)
    seen = [0] * branches
    for q, branch in enumerate(net.fusion.branches):
        branch.register_forward_hook(lambda *_, q=q: seen.__setitem__(q, seen[q] + 1))
    net.fusion(torch.randn(2, 16, 4, 4))
    assert seen == calls  # 2: top-left and bottom-left share the first (DUML_inference.py:147-150)


def test_the_originals_settings_and_a_torchvision_resnet34_file(synthetic_root, tmp_path):
    weights = str(tmp_path / "resnet34.pth")
    reference = torchvision.models.resnet34().state_dict()
    torch.save(reference, weights)
    # the 224 px config at the test domains' size, batches cut to fit them
    cfg = duml_cfg(synthetic_root, str(tmp_path / "o"), "MODEL.BACKBONE.WEIGHTS", weights, "INPUT.SIZE", "(32, 32)",
                   "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "24", config="resnet34.yaml")
    o = cfg.OPTIM
    assert (o.NAME, o.LR, o.MOMENTUM, o.WEIGHT_DECAY, o.MAX_EPOCH) == ("sgd", 0.01, 0.9, 1e-4, 60)
    assert (o.LR_SCHEDULER, tuple(o.STEPSIZE), o.GAMMA) == ("single_step", (20,), 0.1)  # StepLR(20, 0.1)
    assert cfg.DATALOADER.TRAIN_X.SAMPLER == "RandomDomainSampler" and cfg.DATALOADER.TRAIN_U.BATCH_SIZE == 99
    t = build_trainer(cfg)
    for key, value in t.model.stem.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert t.model.fusion_classifier.in_features == 1024 and t.model.arcface.weight.shape == (6, 512)


def test_bad_settings_are_user_errors(synthetic_root, tmp_path):
    with pytest.raises(UserError, match="at least 16 px"):
        build_trainer(duml_cfg(synthetic_root, str(tmp_path), "INPUT.SIZE", "(8, 8)"))
    with pytest.raises(UserError, match="QUADRANT_BRANCHES must be 2"):
        build_trainer(duml_cfg(synthetic_root, str(tmp_path), "TRAINER.DUML.QUADRANT_BRANCHES", "3"))
    with pytest.raises(UserError, match="negative: KL"):
        build_trainer(duml_cfg(synthetic_root, str(tmp_path), "TRAINER.DUML.LOSS.KL", "-1.0"))


# ------------------------------------------------------------------------------------------------ training
def test_a_step_without_one_source_and_the_prototypes_through_a_checkpoint(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    t = build_trainer(duml_cfg(synthetic_root, out, "SEED", "3", "OPTIM.MAX_EPOCH", "1"))
    assert t.model.domain_counts.tolist() == [48.0, 48.0, 48.0]  # n_d: 8 images x 6 seen classes per source
    t.set_model_mode("train")
    batch_x, batch_u = next(iter(t.train_loader_x)), next(iter(t.train_loader_u))
    partial = {**batch_x, "domain": torch.where(batch_x["domain"] == 2, 1, batch_x["domain"])}  # source 2 absent
    losses = t.forward_backward(partial, batch_u)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    assert {"loss_ce", "loss_arcface", "loss_fusion", "loss_discriminator", "loss_domain", "loss_local", "loss_kl",
            "pseudo_share", "branch_weight_0"} <= set(losses)

    run = build_trainer(duml_cfg(synthetic_root, out, "SEED", "3", "OPTIM.MAX_EPOCH", "1"))
    run.train()
    saved = run.model.prototypes.clone()
    assert saved.abs().sum() > 0  # the prototypes moved during the epoch
    resumed = build_trainer(duml_cfg(synthetic_root, out, "SEED", "3", "OPTIM.MAX_EPOCH", "2"))
    assert resumed.model.prototypes.abs().sum() == 0
    assert resumed.resume_model_if_exist(out) == 1
    assert torch.equal(resumed.model.prototypes, saved)
    probs = resumed.model_inference(next(iter(resumed.test_loader))["img"][:3].to(resumed.device))
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)


def test_end_to_end_the_tiny_config_learns(learnable_root, tmp_path):
    """The tiny config end to end on three synthetic domains, the target a twin of one of them (the method must
    learn, not transfer across styles: on a new 32 px synthetic domain a ResNet stem from scratch stays near
    chance, configs/trainers/DUML/tiny.yaml has the probes), 8 epochs to keep the test short: results.json with
    every metric, every loss term logged finite, and ACC-S well above chance (measured 29-43, seeds 1-3;
    chance 16.7 +- 3.4 on 120 seen test faces)."""
    out = tmp_path / "e2e"
    setup_logger(str(out))
    build_trainer(make_method_cfg(learnable_root, str(out), "DUML", *LEARNABLE_OPTS, "OPTIM.MAX_EPOCH", "8",
                                  "OPTIM.STEPSIZE", "(6,)")).train()
    results = json.load(open(out / "results.json"))
    assert results["trainer"] == "DUML" and results["epochs_trained"] == 8
    logged = [json.loads(line) for line in open(out / "metrics.jsonl")]
    terms = [f"train/loss_{n}" for n in ("ce", "arcface", "fusion", "discriminator", "domain", "local", "kl")]
    assert all(math.isfinite(r[k]) for r in logged if "train/loss" in r for k in terms)
    assert results["metrics"]["acc_s"] > CHANCE_ACC_S + 8


def test_fast_path_and_compiled_step_equal_the_eager_step(synthetic_root, tmp_path, compile_with):
    check_fast_path_and_compiled_step(synthetic_root, tmp_path, "DUML", "resnet34", compile_with)
