"""NENO: the supervised contrastive loss and the alignment against numbers computed by hand, the chunked
nearest-neighbour search against a loop and within its memory bound, DINO's ViT (its key names, its weights files,
the class-token-only last block), and end-to-end runs on the synthetic domains."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import CHANCE_ACC_S, LEARNABLE_OPTS, check_fast_path_and_compiled_step, make_method_cfg
from engine.data import build_data_loader
from engine.modeling.clip_backbone import CLIP, TINY_CLIP_ARCH
from engine.modeling.mmd import mk_mmd, multi_source_mmd
from engine.modeling.vit import ARCHITECTURES, VisionTransformer, load_dino_weights, read_dino_weights
from engine.trainer import build_trainer
from engine.utils.errors import UserError
from engine.utils.logger import setup_logger
from trainers import neno
from trainers import neno_losses as L


# ----------------------------------------------------------------------------------------------- the losses
def test_supervised_contrastive_loss_by_hand():
    e1 = torch.tensor([1.0, 0.0])
    z = torch.stack([e1, e1, -e1])
    # anchors 1 and 2: positive the other (z.z = 1), denominator e^1 + e^-1 -> -log(e / (e + 1/e)) = log(1 + e^-2);
    # anchor 3 has no positive and is skipped
    loss = L.supervised_contrastive_loss(z, torch.tensor([0, 0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    assert loss.item() == pytest.approx(0.1269, abs=1e-4)
    # the temperature divides every similarity: t = 0.5 gives log(1 + e^-4)
    at_half = L.supervised_contrastive_loss(z, torch.tensor([0, 0, 1]), 0.5).item()
    assert at_half == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)
    # two positives each: an e1 anchor sees (e1, e2, -e1) at similarities (1, 0, -1), positives e1 and e2:
    # -(1/2)[log(e/D) + log(1/D)] with D = e + 1 + 1/e; the e2 anchor sees all three at 0: -(1/2) 2 log(1/3);
    # the -e1 anchor has no positive; the mean over the three anchors of class 0
    e2 = torch.tensor([0.0, 1.0])
    z = torch.stack([e1, e1, e2, -e1])
    labels = torch.tensor([0, 0, 0, 1])
    d_e1 = math.e + 1 + 1 / math.e  # an e1 anchor: the other e1, e2, -e1
    d_e2 = 1 + 1 + 1  # the e2 anchor: e1, e1, -e1 all at similarity 0
    a_e1 = -(math.log(math.e / d_e1) + math.log(1 / d_e1)) / 2
    a_e2 = -(math.log(1 / d_e2) * 2) / 2
    expected = (2 * a_e1 + a_e2) / 3
    assert L.supervised_contrastive_loss(z, labels, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_supervised_contrastive_loss_without_positives_is_zero_not_nan():
    z = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    assert L.supervised_contrastive_loss(z, torch.arange(4), 0.07).item() == 0.0
    lone = L.supervised_contrastive_loss(z[:1], torch.tensor([2]), 0.07)
    assert lone.item() == 0.0 and not torch.isnan(lone)


def test_alignment_is_the_engines_mk_mmd():
    torch.manual_seed(0)
    s, t = torch.randn(9, 4), torch.randn(6, 4) + 1
    domains = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    per_source = L.alignment_loss(s, domains, t, 3, per_source=True)
    assert per_source.item() == pytest.approx(multi_source_mmd([s[domains == m] for m in range(3)], t).item(), rel=1e-5)
    assert L.alignment_loss(s, domains, t, 3, per_source=False).item() == pytest.approx(mk_mmd(s, t).item(), rel=1e-6)


def test_step_losses_weigh_their_terms():
    torch.manual_seed(1)
    f_s = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    f_t = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    logits, labels, domains = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    s = L.LossSettings(temperature=0.1, ce_weight=0.5, mmd_weight=2.0, num_sources=2, mmd_per_source=True,
                       mmd_multipliers=(0.5, 1.0, 2.0))
    out = L.step_losses(f_s, logits, labels, domains, f_t, s)
    assert out["loss_ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert out["loss"].item() == pytest.approx(out["loss_supcon"].item() + 0.5 * out["loss_ce"].item()
                                               + 2.0 * out["loss_mmd"].item(), rel=1e-6)


# ------------------------------------------------------------------------------- the nearest-neighbour search
def _brute_force(queries, bank, labels, num_classes, k):
    """Per-query, per-class loops: the definition of s_k and of the k nearest similarities."""
    class_sim = torch.full((len(queries), num_classes), float("-inf"))
    nearest = torch.zeros(len(queries), k)
    for i, q in enumerate(queries):
        sims = [float(q @ b) for b in bank]
        for j, s in enumerate(sims):
            class_sim[i, labels[j]] = max(class_sim[i, labels[j]].item(), s)
        nearest[i] = torch.tensor(sorted(sims, reverse=True)[:k])
    return class_sim, nearest


def test_nearest_neighbour_scores_equal_a_loop_chunked_or_not(monkeypatch):
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(11, 5), dim=-1)
    bank = torch.nn.functional.normalize(torch.randn(23, 5), dim=-1)
    labels = torch.randint(0, 3, (23,))
    labels[labels == 2] = 1  # class 2 absent from the bank, class 3 too (num_classes 4): s = -inf there
    expected_class, expected_nearest = _brute_force(queries, bank, labels, 4, k=3)
    blocks = []
    real_block = neno.cosine_block
    monkeypatch.setattr(neno, "cosine_block", lambda q, b: blocks.append(q.shape[0] * b.shape[0]) or real_block(q, b))
    for bound in (10 ** 6, 40, 11, 7, 1):
        blocks.clear()
        got = neno.nearest_neighbour_scores(queries, bank, labels, 4, k=3, max_elements=bound)
        assert torch.allclose(got.class_similarity, expected_class, atol=1e-6), bound
        assert torch.allclose(got.nearest, expected_nearest, atol=1e-6), bound
        assert max(blocks) <= bound, (bound, max(blocks))  # never a larger similarity block than the bound
        assert sum(blocks) == 11 * 23  # every pair once
    assert len(blocks) == 11 * 23  # bound 1: one similarity at a time
    assert torch.isinf(got.class_similarity[:, 2:]).all()


def test_chunk_sizes_fit_the_bound():
    assert neno.chunk_sizes(256, 2 ** 25) == (256, 2 ** 25 // 256)  # every query, the bank in large chunks
    assert neno.chunk_sizes(256, 100) == (100, 1)  # a bound below the query count: fewer queries, one bank row
    for q in (1, 7, 300):
        for bound in (1, 5, 299, 10 ** 5):
            rows, bank_rows = neno.chunk_sizes(q, bound)
            assert 1 <= rows <= q and rows * bank_rows <= bound


def test_auc_u_ranks_the_nearest_neighbour_similarity():
    """AUC-U equals roc_auc(unseen, -max_k s_k): the knownness (1 + max_k s_k) / 2 is what the metrics rank."""
    from engine.evaluation import open_set_metrics

    torch.manual_seed(3)
    bank = torch.nn.functional.normalize(torch.randn(30, 6), dim=-1)
    labels = torch.arange(30) % 3
    queries = torch.nn.functional.normalize(torch.randn(20, 6), dim=-1)
    scores = neno.nearest_neighbour_scores(queries, bank, labels, 3)
    s_max = scores.class_similarity.max(1).values
    assert torch.allclose(s_max, scores.nearest[:, 0])
    unseen = np.arange(20) % 4 == 0
    probs = (scores.class_similarity / 0.07).softmax(-1).numpy()
    metrics = open_set_metrics(probs, np.where(unseen, 3, probs.argmax(1)), unseen, 10, ((1 + s_max) / 2).numpy())
    assert metrics["auc_u"] == pytest.approx(100 * roc_auc_score(unseen, -s_max.numpy()))


# -------------------------------------------------------------------------------------------- DINO's ViT
def test_vit_small_has_dinos_keys_and_size():
    vit = VisionTransformer(ARCHITECTURES["dino_vits16"], 224)
    keys = vit.state_dict()
    block = {f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                       "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                       "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    assert block <= set(keys) and len(keys) == 4 + 12 * 12 + 2  # cls, pos, patch w/b; 12 blocks; norm w/b
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
            "norm.bias", "blocks.11.mlp.fc2.bias"} <= set(keys)
    assert keys["pos_embed"].shape == (1, 197, 384) and keys["blocks.0.attn.qkv.weight"].shape == (1152, 384)
    # timm's vit_small_patch16_224 without its head: 21,665,664 parameters
    assert sum(p.numel() for p in vit.parameters()) == 21_665_664


def test_class_token_only_last_block_gives_the_same_feature():
    torch.manual_seed(0)
    full = VisionTransformer(ARCHITECTURES["dino_vit_tiny"], 32, class_token_only_last_block=False).eval()
    fast = VisionTransformer(ARCHITECTURES["dino_vit_tiny"], 32, class_token_only_last_block=True).eval()
    fast.load_state_dict(full.state_dict())
    x = torch.randn(3, 3, 32, 32)
    assert full(x).shape == (3, 64) and torch.allclose(full(x), fast(x), atol=1e-5)


def _tiny_vit(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(ARCHITECTURES["dino_vit_tiny"], 32, name="dino_vit_tiny").eval()


def test_dino_backbone_file_and_full_checkpoint_load_strictly(tmp_path):
    teacher, student = _tiny_vit(1), _tiny_vit(2)
    torch.save(teacher.state_dict(), tmp_path / "backbone.pth")
    # a DINO training checkpoint: the student under DDP ('module.backbone.'), the teacher not ('backbone.'),
    # each with its projection head, beside the optimiser, the epoch and the argparse arguments
    full = {"student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                        "module.head.last_layer.weight": torch.zeros(8, 64)},
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()},
                        "head.mlp.0.weight": torch.zeros(8, 64), "head.last_layer.weight_g": torch.ones(8, 1)},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=16), "optimizer": {"state": {}}}
    torch.save(full, tmp_path / "checkpoint.pth")
    x = torch.randn(2, 3, 32, 32)
    for name in ("backbone.pth", "checkpoint.pth"):
        vit = _tiny_vit(0)
        load_dino_weights(vit, str(tmp_path / name))
        assert torch.equal(vit(x), teacher(x)), name  # the teacher, as DINO's evaluation takes
    only_student = {"student": full["student"], "epoch": 1}
    torch.save(only_student, tmp_path / "student.pth")
    assert torch.equal(read_dino_weights(str(tmp_path / "student.pth"))["cls_token"], student.cls_token.detach())


def test_dino_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    state = _tiny_vit(1).state_dict()
    broken = {k: v for k, v in state.items() if k != "norm.weight"}
    broken["head.weight"] = torch.zeros(3, 64)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(UserError) as e:
        load_dino_weights(_tiny_vit(0), str(tmp_path / "broken.pth"))
    msg = str(e.value)
    assert "\n" not in msg and "broken.pth" in msg
    assert "1 missing (norm.weight)" in msg and "1 unexpected (head.weight)" in msg
    torch.save(state, tmp_path / "at32.pth")
    with pytest.raises(UserError, match=r"pos_embed \(1, 65, 64\) \(expected \(1, 17, 64\)\).*INPUT.SIZE \(224, 224\)"):
        load_dino_weights(VisionTransformer(ARCHITECTURES["dino_vit_tiny"], 16, name="dino_vit_tiny"),
                          str(tmp_path / "at32.pth"))
    with pytest.raises(UserError, match="not found: .*nowhere.pth"):
        load_dino_weights(_tiny_vit(0), str(tmp_path / "nowhere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read ViT weights"):
        load_dino_weights(_tiny_vit(0), str(tmp_path / "junk.pth"))


# ----------------------------------------------------------------------------------------------- the trainer
def test_trainer_settings_are_checked(synthetic_root, tmp_path, tiny_clip_file):
    with pytest.raises(UserError, match="KNOWNNESS"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "NENO", "TRAINER.NENO.KNOWNNESS", "entropy"))
    with pytest.raises(UserError, match="WEIGHTS is for DINO"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "NENO", "MODEL.BACKBONE.NAME", tiny_clip_file,
                                      "MODEL.BACKBONE.WEIGHTS", tiny_clip_file))
    with pytest.raises(UserError, match="multiple of its patch size 4"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "NENO", "INPUT.SIZE", "(30, 30)"))


def test_the_tiny_vit_config_runs_with_the_knn_score(synthetic_root, tmp_path):
    """configs/trainers/NENO/tiny.yaml (DINO's ViT at its tiny size, random weights) for one epoch, knownness the
    mean similarity to the 3 nearest source images: the run writes its score's name into results.json."""
    setup_logger(str(tmp_path))
    t = build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "NENO", "OPTIM.MAX_EPOCH", "1",
                                      "TRAINER.NENO.KNOWNNESS", "knn_mean", "TRAINER.NENO.KNN_K", "3"))
    assert isinstance(t.model.backbone, VisionTransformer) and t.model.head.out_features == 6
    with pytest.raises(RuntimeError, match="feature bank"):
        t.model_inference(torch.zeros(1, 3, 32, 32, device=t.device))
    t.train()
    results = json.load(open(tmp_path / "results.json"))
    assert results["unseen_score"] == "knn_mean_similarity" and results["backbone"] == "dino_vit_tiny"
    assert t.feature_bank is None  # built for the evaluation only


@pytest.fixture(scope="module")
def conv_clip_file(tmp_path_factory) -> str:
    """A CLIP whose image encoder is CLIP's ResNet (the demo's pre-trained tiny CLIP's architecture) at 32 px,
    random weights: from scratch, a ViT does not learn the synthetic faces within a CPU test's few hundred steps
    (measured: the tiny ViT's source cross-entropy stays at log 6 for 40 epochs of 7 steps), a CNN does."""
    torch.manual_seed(0)
    arch = dict(TINY_CLIP_ARCH, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=16,
                vision_patch_size=None)
    path = tmp_path_factory.mktemp("conv_clip") / "conv-clip.pt"
    torch.save(CLIP(**arch).state_dict(), path)
    return str(path)


def test_learns_end_to_end_and_scores_by_nearest_neighbour(learnable_root, tmp_path, conv_clip_file):
    """tiny.yaml with the CLIP fallback backbone (a CLIP ResNet, random weights), trained on three synthetic
    domains and tested on a twin of one: well above chance on the seen classes; the saved knownness is
    (1 + s) / 2 of the nearest source image's similarity, recomputed here by brute force, and AUC-U ranks it."""
    setup_logger(str(tmp_path))
    cfg = make_method_cfg(learnable_root, str(tmp_path), "NENO", *LEARNABLE_OPTS, "MODEL.BACKBONE.NAME", conv_clip_file,
                          "TEST.SAVE_PREDICTIONS", "True")
    t = build_trainer(cfg)
    t.train()
    results = json.load(open(tmp_path / "results.json"))
    assert results["trainer"] == "NENO" and results["unseen_score"] == "nn_similarity"
    # 120 seen test images: chance is 16.7 +- 3.4; measured 29.2, 36.7, 28.3 (seeds 1-3; 10 epochs: 19-33)
    assert results["metrics"]["acc_s"] > CHANCE_ACC_S + 8

    t.set_model_mode("eval")
    ds = t.dm.dataset

    def features(items):
        loader = build_data_loader(cfg, "SequentialSampler", items, 64, tfm=t.dm.tfm_test, is_train=False)
        return torch.cat([t.image_features(b["img"].to(t.device)) for b in loader]).cpu()

    bank, queries = features(ds.train_x), features(ds.test)
    bank_labels = torch.tensor([item.label for item in ds.train_x])
    class_sim, nearest = _brute_force(queries, bank, bank_labels, 6, k=1)
    saved = np.load(tmp_path / "predictions.npz")
    assert np.allclose(saved["knownness"], ((1 + nearest[:, 0]) / 2).numpy(), atol=1e-5)
    assert np.array_equal(saved["probs"].argmax(1), class_sim.argmax(1).numpy())
    unseen = saved["labels"] == 6
    assert results["metrics"]["auc_u"] == pytest.approx(100 * roc_auc_score(unseen, -nearest[:, 0].numpy()), abs=1e-3)


def test_the_bank_on_the_fast_path_shares_the_training_images(synthetic_root, tmp_path):
    """On the decoded-image cache the bank's loader reads the training loader's arrays (no second copy) and
    gives the PIL path's test-transformed images."""
    cache = ["DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR", str(tmp_path / "cache"),
             "DATALOADER.CACHE.ON_DEVICE", "True"]
    fast = build_trainer(make_method_cfg(synthetic_root, str(tmp_path / "fast"), "NENO", *cache))
    pil = build_trainer(make_method_cfg(synthetic_root, str(tmp_path / "pil"), "NENO"))
    assert fast.bank_loader.images_on_device is fast.train_loader_x.images_on_device
    a, b = next(iter(fast.bank_loader)), next(iter(pil.bank_loader))
    n = fast.cfg.DATALOADER.TEST.BATCH_SIZE
    assert a["label"].tolist() == b["label"].tolist() == [item.label for item in fast.dm.dataset.train_x[:n]]
    assert torch.allclose(a["img"].cpu(), b["img"], atol=1e-5)
    assert sum(len(batch["label"]) for batch in fast.bank_loader) == len(fast.dm.dataset.train_x)


def test_fast_path_and_compiled_step_equal_the_eager_step(synthetic_root, tmp_path, compile_with):
    check_fast_path_and_compiled_step(synthetic_root, tmp_path, "NENO", "vit_s16", compile_with)
