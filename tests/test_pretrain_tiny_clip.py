"""scripts/pretrain_tiny_clip.py: the synthetic stand-in for CLIP's web pre-training, the shipped file it
made (assets/tiny-clip-synthetic.pt.gz), and every CLIP trainer on the checkpoint it writes (a CLIP ResNet,
loaded through the same path as ViT-B-32.pt). The script's own runs here are a fast variant (28 faces,
two steps); the full pre-training is the command in its docstring."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from clip.model import CLIP

from conftest import ROOT, load_script, make_cfg
from datasets.classes import CANONICAL_CLASSES
from engine.modeling.clip_backbone import load_clip, tokenize
from engine.trainer import build_trainer
from engine.utils.errors import UserError

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


def test_compact_state_dict_by_hand():
    # fp16 everywhere, and the token rows training never reached (1 and 3) zero; the others as trained.
    model = torch.nn.Module()
    model.token_embedding = torch.nn.Embedding(4, 2)
    model.proj = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.token_embedding.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]))
    state = P.compact_state_dict(model, torch.tensor([True, False, True, False]))
    assert all(v.dtype == torch.float16 for v in state.values())
    assert state["token_embedding.weight"].tolist() == [[1.0, 2.0], [0.0, 0.0], [5.0, 6.0], [0.0, 0.0]]
    assert torch.equal(state["proj.weight"], model.proj.weight.detach().half())
    assert model.token_embedding.weight[1].tolist() == [3.0, 4.0]  # the model itself is left alone


def _state_dict(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), weights_only=True)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def pretrained_gz(tmp_path_factory) -> str:
    """The script's fast variant, written in the shipped format (a .gz and its checksum file)."""
    out = str(tmp_path_factory.mktemp("pretrained") / "tiny-clip-synthetic.pt.gz")
    run = subprocess.run([sys.executable, "scripts/pretrain_tiny_clip.py", "--out", out, "--per-class", "4",
                          "--epochs", "1", "--batch-size", "14"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def pretrained_file(pretrained_gz) -> str:
    """The fast variant's checkpoint unpacked by the CLI, as the demo unpacks the shipped one."""
    out = pretrained_gz[:-len(".gz")]
    run = subprocess.run([sys.executable, "scripts/pretrain_tiny_clip.py", "--unpack", pretrained_gz, "--out", out],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "wrote" in run.stdout, run.stderr
    return out


def test_the_script_still_writes_the_shipped_files_format_and_architecture(pretrained_gz, pretrained_file):
    # Not the same bytes (the full pre-training takes minutes): the same format, keys, shapes and dtypes.
    with open(pretrained_gz, "rb") as f:
        packed = f.read()
    with open(pretrained_gz + ".sha256") as f:
        assert f.read() == f"{hashlib.sha256(packed).hexdigest()}  tiny-clip-synthetic.pt.gz\n"
    with open(pretrained_file, "rb") as f:
        assert f.read() == gzip.decompress(packed)  # --unpack writes the checkpoint inside, byte for byte
    made, shipped = _state_dict(gzip.decompress(packed)), _state_dict(P.read_shipped())
    assert _shapes(made) == _shapes(shipped) == _shapes(CLIP(**P.PRETRAINED_ARCH).state_dict())
    assert {k: v.dtype for k, v in made.items()} == {k: v.dtype for k, v in shipped.items()}
    assert all(v.dtype == torch.float16 for v in made.values() if v.is_floating_point())
    # two steps of a few captions reach a few dozen tokens, the start and end tokens among them
    trained = made["token_embedding.weight"].ne(0).any(1)
    assert trained[49406] and trained[49407] and 2 < int(trained.sum()) < 200


def test_the_shipped_file_matches_its_checksum_and_is_a_pretrained_clip(tmp_path):
    assert os.path.getsize(P.SHIPPED) < 4_000_000  # small enough to live in git
    out = str(tmp_path / "tiny-clip-synthetic.pt")
    P.unpack(out)  # checks the sha256
    model = load_clip(out)
    assert model.visual.input_resolution == 64
    embedding = model.token_embedding.weight
    # the caption words are trained, a word no caption has is zero
    assert all(embedding[t].ne(0).any() for t in tokenize(["a photo of a happy person."])[0, :8])
    assert embedding[tokenize(["banana"])[0, 1]].eq(0).all()
    # pre-trained, not random: its zero-shot accuracy on 20 faces per class of each benchmark domain is well
    # above chance (1/7; measured 32.5%, 29-35% per domain)
    from datasets.synthetic import DOMAIN_STYLES, DOMAINS, render_face
    from engine.config.defaults import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

    labels = [label for _ in DOMAINS for label in range(7) for _ in range(20)]
    faces = [np.asarray(render_face(label, DOMAIN_STYLES[domain], np.random.default_rng([label, i]), size=64))
             for domain in DOMAINS for label in range(7) for i in range(20)]
    pixels = torch.tensor(np.stack(faces)).permute(0, 3, 1, 2).float() / 255
    pixels = (pixels - torch.tensor(CLIP_PIXEL_MEAN)[:, None, None]) / torch.tensor(CLIP_PIXEL_STD)[:, None, None]
    prompts = tokenize([f"a photo of a face showing {c}." for c in CANONICAL_CLASSES])  # ZSCLIP's template
    with torch.no_grad():
        scores = model.encode_image(pixels) @ torch.nn.functional.normalize(model.encode_text(prompts), dim=-1).t()
    accuracy = scores.argmax(1).eq(torch.tensor(labels)).float().mean().item()
    assert accuracy > 0.25


def test_unpack_checks_the_checksum_and_keeps_an_existing_file(pretrained_gz, tmp_path, capsys):
    damaged = str(tmp_path / "damaged.pt.gz")
    shutil.copy(pretrained_gz + ".sha256", damaged + ".sha256")
    with open(pretrained_gz, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 1
    with open(damaged, "wb") as f:
        f.write(data)
    out = str(tmp_path / "out.pt")
    with pytest.raises(UserError, match="does not match its checksum"):
        P.unpack(out, damaged)
    os.remove(damaged + ".sha256")
    with pytest.raises(UserError, match="cannot read the shipped tiny CLIP"):
        P.unpack(out, damaged)
    assert not os.path.exists(out)

    with open(out, "wb") as f:
        f.write(b"another pre-training")
    P.unpack(out, pretrained_gz)
    assert "is not" in capsys.readouterr().out and open(out, "rb").read() == b"another pre-training"
    P.unpack(out, pretrained_gz, force=True)
    assert open(out, "rb").read() == gzip.decompress(open(pretrained_gz, "rb").read())
    capsys.readouterr()
    P.unpack(out, pretrained_gz)
    assert capsys.readouterr().out.strip() == f"{out} exists; nothing to do"


def test_cli_writes_a_clip_checkpoint_that_loads_like_a_released_one(pretrained_file):
    model = load_clip(pretrained_file)
    assert model.visual.input_resolution == 64 and not hasattr(model.visual, "proj")  # CLIP's ResNet
    reference = CLIP(**P.PRETRAINED_ARCH)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert not any(".tmp" in name for name in os.listdir(os.path.dirname(pretrained_file)))


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
