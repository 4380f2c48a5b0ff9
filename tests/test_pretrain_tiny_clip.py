"""scripts/pretrain_tiny_clip.py: the synthetic stand-in for CLIP's web pre-training, and every CLIP
trainer on the checkpoint it writes (a CLIP ResNet, loaded through the same path as ViT-B-32.pt)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from clip.model import CLIP

from conftest import ROOT, load_script, make_cfg
from engine.modeling.clip_backbone import load_clip
from engine.trainer import build_trainer

P = load_script("pretrain_tiny_clip")


def test_contrastive_loss_by_hand():
    # Two images, two captions of different meanings, features one-hot: logits = s * I, and each of
    # the four cross-entropies is log(1 + e^-s).
    eye = torch.eye(2)
    loss = P.contrastive_loss(eye, eye, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor(2.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-6)


def test_captions_with_the_same_meaning_are_one_positive():
    # Three images meaning (0, 0, 1) with captions meaning (0, 0, 1): two phrasings of class 0 are both
    # positives of both class-0 images, never negatives. Features one-hot (e1, e1, e2 on both sides), so
    # logits = s * [[1,1,0],[1,1,0],[0,0,1]]. A class-0 row's soft cross-entropy against (1/2, 1/2, 0) is
    # a = log(2 e^s + 1) - s; the class-1 row's is b = log(e^s + 2) - s; both directions are alike.
    s = 3.0
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    features = torch.stack([e1, e1, e2])
    meanings = torch.tensor([0, 0, 1])
    loss = P.contrastive_loss(features, features, meanings, meanings, torch.tensor(s))
    a, b = math.log(2 * math.exp(s) + 1) - s, math.log(math.exp(s) + 2) - s
    assert loss.item() == pytest.approx((2 * a + b) / 3, abs=1e-6)


def test_caption_meanings():
    rng = np.random.default_rng(0)
    for label in range(7):
        caption, meaning = P.caption_for(label, rng, generic_p=0.0, wrong_p=0.0)
        assert meaning == label and caption
        caption, meaning = P.caption_for(label, rng, generic_p=1.0, wrong_p=0.0)
        assert meaning == P.GENERIC and caption in P.GENERIC_CAPTIONS
        caption, meaning = P.caption_for(label, rng, generic_p=0.0, wrong_p=1.0)
        assert meaning != label and meaning != P.GENERIC


def test_pool_is_kept_apart_from_the_benchmark_styles():
    from datasets.synthetic import DOMAIN_STYLES

    assert P.WEB_STYLE not in DOMAIN_STYLES.values() and P.WEB_STYLE.name not in DOMAIN_STYLES


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("pretrained") / "tiny-clip-synthetic.pt")
    run = subprocess.run([sys.executable, "scripts/pretrain_tiny_clip.py", "--out", out, "--per-class", "4",
                          "--epochs", "1", "--batch-size", "14"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out


def test_cli_writes_a_clip_checkpoint_that_loads_like_a_released_one(pretrained_file):
    model = load_clip(pretrained_file)
    assert model.visual.input_resolution == 64 and not hasattr(model.visual, "proj")  # CLIP's ResNet
    reference = CLIP(**P.PRETRAINED_ARCH)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert not any(name.endswith(".tmp") or ".tmp" in name for name in os.listdir(os.path.dirname(pretrained_file)))


def test_cli_keeps_an_existing_file_and_rejects_bad_arguments(pretrained_file, tmp_path):
    before = os.path.getmtime(pretrained_file)
    run = subprocess.run([sys.executable, "scripts/pretrain_tiny_clip.py", "--out", pretrained_file],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "exists" in run.stdout and os.path.getmtime(pretrained_file) == before
    for args, expected in ([["--out", str(tmp_path)], "is a folder"],
                           [["--out", str(tmp_path / "x.pt"), "--per-class", "2"], "fewer than one batch"]):
        run = subprocess.run([sys.executable, "scripts/pretrain_tiny_clip.py", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and expected in run.stderr and "Traceback" not in run.stderr
        assert run.stderr.count("\n") == 1


@pytest.mark.parametrize("trainer", ["PromptEmo", "Baseline", "CoOp", "ZSCLIP"])
def test_every_clip_trainer_runs_on_the_pretrained_backbone(synthetic_root, tmp_path, pretrained_file, trainer):
    cfg = make_cfg(synthetic_root, str(tmp_path), "MODEL.BACKBONE.NAME", pretrained_file, "INPUT.SIZE", "(64, 64)",
                   "OPTIM.MAX_EPOCH", "0" if trainer == "ZSCLIP" else "1", "TRAIN.CHECKPOINT_FREQ", "0",
                   trainer=trainer)
    build_trainer(cfg).train()
    metrics = json.load(open(tmp_path / "results.json"))["metrics"]
    assert 0 <= metrics["acc_s"] <= 100 and 0 <= metrics["auc_u"] <= 100
