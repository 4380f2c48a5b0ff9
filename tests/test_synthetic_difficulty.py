"""scripts/synthetic_difficulty.py: the CNN reference on the synthetic domains."""
from __future__ import annotations

import subprocess
import sys

import torch

from conftest import ROOT, load_script

synthetic_difficulty = load_script("synthetic_difficulty")


def test_training_learns_a_separable_problem_and_scores_each_domain_apart():
    # Class k = a constant image of brightness k; the sources are separable, the target is the same
    # problem with flipped brightness order, so a correct loop scores 100% on sources and ~0 on target.
    torch.manual_seed(0)

    def images(order):
        y = torch.arange(7).repeat_interleave(10)
        x = order[y].float().view(-1, 1, 1, 1).expand(-1, 3, 16, 16) / 3.0 - 1.0
        return x + 0.01 * torch.randn_like(x), y

    forward, backward = torch.arange(7), torch.arange(6, -1, -1)
    data = {d: {"train": images(forward), "test": images(forward)} for d in ("a", "b", "c")}
    data["t"] = {"train": images(backward), "test": images(backward)}
    acc = synthetic_difficulty.train_and_test(data, "t", epochs=25, seed=0)
    assert acc["sources"] == 100.0
    assert acc["target"] < 30.0  # only the middle class (3) keeps its brightness


def test_cli_prints_one_row_per_target(synthetic_root):
    out = subprocess.run(
        [sys.executable, "scripts/synthetic_difficulty.py", "--root", synthetic_root, "--targets", "synth_lab",
         "--epochs", "1", "--n-train", "8", "--n-test", "4", "--image-size", "32", "--size", "32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = [ln for ln in out.stdout.splitlines() if ln.startswith("synth_lab")]
    assert len(row) == 1
    src_acc, tgt_acc = (float(v) for v in row[0].split()[1:3])
    assert 0.0 <= src_acc <= 100.0 and 0.0 <= tgt_acc <= 100.0


def test_cli_refuses_to_overwrite_user_data(tmp_path):
    (tmp_path / "synth_color" / "train").mkdir(parents=True)  # a folder that the generator did not write
    out = subprocess.run([sys.executable, "scripts/synthetic_difficulty.py", "--root", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "synth_color" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "synth_color" / "train").is_dir()
