"""torchrun with 2 CPU processes (gloo) gives the metrics of 1 process on the same data and seed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SYNTH_OPTS

SYNTH_YAML = os.path.join(ROOT, "configs", "datasets", "synthetic.yaml")
COOP_TINY = os.path.join(ROOT, "configs", "trainers", "CoOp", "tiny.yaml")


def _train(launcher: list[str], root: str, out: str) -> dict:
    # CoOp: a batch-mean loss, so averaging the two halves' gradients gives the whole batch's gradient;
    # no random augmentation, so both runs see identical pixels.
    args = ["--root", root, "--dataset-config-file", SYNTH_YAML, "--config-file", COOP_TINY, "--output-dir", out,
            "--seed", "3", "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0", "OPTIM.LR", "0.05",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "24", "INPUT.TRANSFORMS", "['normalize']", "USE_CUDA", "False",
            *SYNTH_OPTS]
    proc = subprocess.run([*launcher, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(os.path.join(out, "results.json")))


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo rendezvous")
def test_two_gloo_processes_equal_one_process(synthetic_root, tmp_path):
    single = _train([sys.executable], synthetic_root, str(tmp_path / "one"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = _train(torchrun, synthetic_root, str(tmp_path / "two"))
    assert double["num_test_images"] == single["num_test_images"] == 28  # every test image evaluated once
    for key, value in single["metrics"].items():
        assert double["metrics"][key] == pytest.approx(value, abs=1e-3), key
    log = open(tmp_path / "two" / "log.txt").read()
    assert "processes 2" in log and log.count("Command:") == 1  # rank 0 alone writes the log
