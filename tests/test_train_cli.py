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
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_user_mistakes_end_with_one_clear_line(synthetic_root, tmp_path, capsys, extra, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "precious.txt").write_text("earlier results")
    argv = ["--root", synthetic_root, "--dataset-config-file", SYNTH_YAML, "--config-file", ZS_TINY_YAML,
            "--output-dir", out_dir, *SYNTH_OPTS]
    argv += [a.format(tmp=tmp_path) for a in extra]
    code, _, err = _cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert (out_dir / "precious.txt").read_text() == "earlier results"
