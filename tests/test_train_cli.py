"""train.py end to end (zero-shot CLIP on the synthetic domains) and its answers to user mistakes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import cli as train
from conftest import ROOT, SYNTH_OPTS

SYNTH_YAML = os.path.join(ROOT, "configs", "datasets", "synthetic.yaml")
ZS_TINY_YAML = os.path.join(ROOT, "configs", "trainers", "ZSCLIP", "tiny.yaml")


def test_fresh_root_generates_domains_and_writes_results(tmp_path, tiny_clip_file):
    """The command a new user runs: nothing prepared, the synthetic domains appear under --root."""
    root, out = tmp_path / "fresh" / "data", tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--root", str(root), "--dataset-config-file", SYNTH_YAML,
           "--config-file", ZS_TINY_YAML, "--output-dir", str(out), "--seed", "0",
           "--backbone", tiny_clip_file, *SYNTH_OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(root)) == ["synth_color", "synth_gray", "synth_lab", "synth_wild"]
    results = json.load(open(out / "results.json"))
    assert results["trainer"] == "ZSCLIP" and results["seed"] == 0 and results["target_domain"] == "synth_wild"
    assert results["unseen_classes"] == ["fear"] and results["backbone"] == tiny_clip_file
    metrics = results["metrics"]
    for key in ("auc_u", "acc_s", "mcr", "h_best", "h_mean", "acc_s_at_best", "unseen_recall_at_best", "fpr95",
                "aupr_u", "oscr", "acc_surprise", "acc_neutral"):
        assert key in metrics
    assert 0 <= metrics["auc_u"] <= 100 and 0 <= metrics["acc_s"] <= 100
    assert "auc_u" in proc.stdout and "* results:" in proc.stdout  # the printed table and summary
    assert json.load(open(out / "splits.json"))["target_test"]["fear"] == 4
    assert os.path.isfile(out / "log.txt") and os.path.isfile(out / "config.yaml")


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = train.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_train_prints_split_without_a_model(synthetic_root, tmp_path, capsys):
    code, out, err = _cli(capsys, "--root", synthetic_root, "--dataset-config-file", SYNTH_YAML, "--trainer", "ZSCLIP",
                          "--backbone", str(tmp_path / "no-such-weights.pt"), "--output-dir", tmp_path / "o",
                          "--no-train", *SYNTH_OPTS)
    assert code == 0, err
    assert "target test" in out and "Fea.*" in out
    assert not os.path.exists(tmp_path / "o")  # inspecting writes nothing


def test_eval_only_without_model_dir_evaluates_zero_shot(synthetic_root, tmp_path, capsys):
    code, out, err = _cli(capsys, "--root", synthetic_root, "--dataset-config-file", SYNTH_YAML, "--config-file",
                          ZS_TINY_YAML, "--output-dir", tmp_path / "o", "--eval-only", *SYNTH_OPTS)
    assert code == 0, err
    assert json.load(open(tmp_path / "o" / "results.json"))["epochs_trained"] == 0


BAD_INPUTS = [
    # (extra argv, expected fragment of the one-line error)
    (["--root", "{tmp}/missing", "--source-domains", "myfaces", "synth_gray"], "dataset root not found"),
    (["--source-domains", "synth_color", "rafdbb"], "unknown domain 'rafdbb'"),
    (["--source-domains", "synth_color", "synth_wild"], "both a source and the target"),
    (["DATASET.UNSEEN_CLASSES", "feer"], "unknown expression class 'feer'"),
    (["OPTIM.MAX_EPOH", "3"], "unknown config key OPTIM.MAX_EPOH"),
    (["--trainer", "PromptEmoo"], "'PromptEmoo' is not a registered trainer"),
    (["--backbone", "{tmp}/ViT-B-32.pt"], "CLIP weights file not found"),
    (["--config-file", "{tmp}/nope.yaml"], "config file not found"),
    # numeric keys out of range: one line naming the key, the range and the value (engine/config/checks.py)
    (["OPTIM.MAX_EPOCH", "-2"], "OPTIM.MAX_EPOCH must be an integer >= 0, got -2"),
    (["DATALOADER.TEST.BATCH_SIZE", "-1"], "DATALOADER.TEST.BATCH_SIZE must be an integer >= 1, got -1"),
    (["OPTIM.LR", "-0.1"], "OPTIM.LR must be >= 0, got -0.1"),
    (["DATALOADER.NUM_WORKERS", "-1"], "DATALOADER.NUM_WORKERS must be an integer >= 0, got -1"),
    (["INPUT.SIZE", "(0, 32)"], "INPUT.SIZE must be 2 values, each an integer >= 1, got (0, 32)"),
    (["DATASET.FOLDER.TEST_FRACTION", "1.5"], "DATASET.FOLDER.TEST_FRACTION must be in [0, 1], got 1.5"),
    (["--config-file", "{tmp}/nan_lr.yaml"], "OPTIM.LR must be a finite number, got nan"),
    # --resume of a folder that does not exist (it used to train from scratch without a word)
    (["--resume", "{tmp}/no-such-run"], "--resume folder not found: {tmp}/no-such-run"),
    # argparse's mistakes: one line and a hint, not the usage block
    (["--seed", "abc"], "argument --seed: invalid int value: 'abc' (python "),
    (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    # config files that are not YAML mappings
    (["--config-file", "{tmp}"], "is a folder; expected a YAML file"),
    (["--config-file", "{tmp}/list.yaml"], "holds a YAML list at the top level; expected KEY: value lines"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_user_mistakes_end_with_one_clear_line(synthetic_root, tmp_path, capsys, extra, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "precious.txt").write_text("earlier results")
    (out_dir / "results.json").write_text('{"metrics": {"auc_u": 81.25}}')
    (tmp_path / "nan_lr.yaml").write_text(f"_BASE_: {ZS_TINY_YAML}\nOPTIM:\n  LR: .nan\n")
    (tmp_path / "list.yaml").write_text("- OPTIM.MAX_EPOCH\n- 3\n")
    argv = ["--root", synthetic_root, "--dataset-config-file", SYNTH_YAML, "--config-file", ZS_TINY_YAML,
            "--output-dir", out_dir, *SYNTH_OPTS]
    argv += [a.format(tmp=tmp_path) for a in extra]
    code, _, err = _cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(tmp=tmp_path) in lines[0], err
    assert "Traceback" not in err
    assert (out_dir / "precious.txt").read_text() == "earlier results"
    assert (out_dir / "results.json").read_text() == '{"metrics": {"auc_u": 81.25}}'  # no untrained evaluation
    assert not (out_dir / "config.yaml").exists()


def _root_with_folder_domain(synthetic_root: str, tmp_path, name: str, classes: tuple[str, ...] | None = None) -> str:
    """A root holding the synthetic sources (links) and ``name``, a generic folder domain copied from the
    synthetic target's images (only ``classes`` of them when given)."""
    import shutil

    root = tmp_path / "data"
    root.mkdir()
    for domain in ("synth_color", "synth_gray", "synth_lab"):
        os.symlink(os.path.join(synthetic_root, domain), root / domain)
    for split in ("train", "test"):
        for cls in sorted(os.listdir(os.path.join(synthetic_root, "synth_wild", split))):
            if classes is None or cls in classes:
                shutil.copytree(os.path.join(synthetic_root, "synth_wild", split, cls), root / name / split / cls)
    return str(root)


def _folder_target_argv(root: str, out, target: str, *extra) -> list:
    return ["--root", root, "--dataset-config-file", SYNTH_YAML, "--config-file", ZS_TINY_YAML, "--output-dir", out,
            "--target-domains", target, *SYNTH_OPTS, *extra]


def test_folder_domain_honours_verify_and_skip_images(synthetic_root, tmp_path, capsys):
    """A truncated JPEG in a folder domain: found up front with DATASET.VERIFY_IMAGES, skipped with a warning
    with DATASET.SKIP_MISSING_IMAGES as well (both used to be ignored by the folder reader)."""
    from PIL import Image

    root = _root_with_folder_domain(synthetic_root, tmp_path, "my_faces")
    folder = os.path.join(root, "my_faces", "test", "happiness")
    png = os.path.join(folder, sorted(os.listdir(folder))[0])
    bad = png[:-4] + ".jpg"
    Image.open(png).convert("RGB").save(bad, quality=95)
    os.remove(png)
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    code, _, err = _cli(capsys, *_folder_target_argv(root, tmp_path / "a", "my_faces", "DATASET.VERIFY_IMAGES", "True"))
    assert code == 2 and f"cannot read image {bad} of domain 'my_faces'" in err and "SKIP_MISSING_IMAGES" in err, err
    code, out, err = _cli(capsys, *_folder_target_argv(root, tmp_path / "b", "my_faces", "DATASET.VERIFY_IMAGES",
                                                     "True", "DATASET.SKIP_MISSING_IMAGES", "True"))
    assert code == 0, err
    assert "Domain 'my_faces': skipping 1 unreadable image(s)" in out
    assert json.load(open(tmp_path / "b" / "results.json"))["num_test_images"] == 7 * 4 - 1


def test_a_target_of_the_unseen_class_only_is_said_before_evaluating(synthetic_root, tmp_path, capsys):
    root = _root_with_folder_domain(synthetic_root, tmp_path, "fear_only", classes=("fear",))
    code, out, err = _cli(capsys, *_folder_target_argv(root, tmp_path / "o", "fear_only"))
    assert code == 0, err
    assert "The test split of fear_only holds no images of the seen classes" in out
    assert "every metric will be n/a" in (tmp_path / "o" / "log.txt").read_text()
    assert all(v is None for v in json.load(open(tmp_path / "o" / "results.json"))["metrics"].values())


@pytest.mark.parametrize("content, message", [
    ({"fear": 3}, "the description of 'fear' must be a non-empty string, got 3"),
    ({"fear": "  "}, "the description of 'fear' must be a non-empty string, got \"  \""),
    ({"feer": "wide eyes"}, "'feer' is not an expression class"),
])
def test_descriptions_say_what_is_wrong_with_an_entry(synthetic_root, tmp_path, capsys, content, message):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(content))
    code, _, err = _cli(capsys, "--root", synthetic_root, "--dataset-config-file", SYNTH_YAML, "--config-file",
                        ZS_TINY_YAML, "--trainer", "PromptEmo", "--output-dir", tmp_path / "o", *SYNTH_OPTS,
                        "TRAINER.PROMPTEMO.DESCRIPTIONS", path)
    assert code == 2 and message in err, err


def test_images_are_read_upright_as_their_exif_orientation_says(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view) is read as a
    viewer shows it, on the PIL path and in the decoded-image cache."""
    import numpy as np
    from PIL import Image

    from engine.data.datasets import Datum
    from engine.data.fast.cache import decode_image
    from engine.data.image_io import read_image

    stored = np.zeros((40, 60, 3), np.uint8)  # 60 wide, 40 high as stored; the top-left corner white
    stored[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image's top is the viewed image's right side
    path = str(tmp_path / "phone.jpg")
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    upright = np.asarray(read_image(path))
    assert upright.shape == (60, 40, 3)  # 40 wide, 60 high, as viewed
    assert upright[:10, -10:].mean() > 200 and upright[:10, :10].mean() < 50  # the white corner now top-right
    assert read_image(path, crop=(30, 0, 40, 10)).size == (10, 10)  # crop boxes in upright pixels
    assert np.asarray(read_image(path, crop=(30, 0, 40, 10))).mean() > 200
    cached = decode_image(Datum(path), 20, "bilinear")  # the cache's entry: short side 20, centre square
    assert cached.shape == (20, 20, 3)
