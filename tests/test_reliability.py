"""Reliability: exact resume after a kill (in-process and with SIGKILL), truncated checkpoints,
non-finite losses, unwritable output folders and full disks, eval-only on any checkpoint."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, SYNTH_OPTS, make_cfg
from engine.trainer import TRAINER_REGISTRY, build_trainer
from engine.utils import checkpoint as ckpt_utils
from engine.utils.errors import NonFiniteLossError, UserError
from test_engine_trainer import OPTS, ToyXU


class Interrupted(Exception):
    """Stands in for a kill: raised inside a training step, after the checkpoints written so far."""


@TRAINER_REGISTRY.register(force=True)
class FragileXU(ToyXU):
    """ToyXU that dies at step ``DIE_AT`` (global, 1-based) or produces a NaN loss at ``NAN_AT``."""

    DIE_AT = None
    NAN_AT = None

    def forward_backward(self, batch_x, batch_u):
        step = self.epoch * self.num_batches + self.batch_idx + 1
        if step == FragileXU.DIE_AT:
            raise Interrupted(step)
        if step == FragileXU.NAN_AT:
            batch_x = {**batch_x, "img": batch_x["img"] * float("nan")}
        return super().forward_backward(batch_x, batch_u)


def _cfg(root, out, *opts):
    return make_cfg(root, out, *OPTS, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_STEPS", "2", *opts,
                    "TRAINER.NAME", "FragileXU")


def _train(root, out, *opts):
    t = build_trainer(_cfg(root, out, *opts))
    t.train()
    return t


@pytest.fixture(autouse=True)
def _reset_fragile():
    yield
    FragileXU.DIE_AT = FragileXU.NAN_AT = None


def test_interrupted_mid_epoch_then_resumed_equals_unbroken_run(synthetic_root, tmp_path):
    straight = _train(synthetic_root, str(tmp_path / "straight"))
    for die_at in (5, 9):  # mid-epoch 1 (after the step-4 checkpoint) and mid-epoch 2
        out = str(tmp_path / f"killed{die_at}")
        FragileXU.DIE_AT = die_at
        with pytest.raises(Interrupted):
            _train(synthetic_root, out)
        FragileXU.DIE_AT = None
        resumed = build_trainer(_cfg(synthetic_root, out))
        resumed.train()
        assert resumed.test_results == straight.test_results  # augmentation and order replayed exactly
        for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
            assert torch.equal(a, b)
        assert resumed.steps == 12 - (die_at - 1) // 2 * 2  # only the steps after the last checkpoint ran
        # mid-epoch checkpoints are pruned to the two newest; epoch checkpoints stay
        names = sorted(os.listdir(os.path.join(out, "model")))
        assert "model.pth.tar-2" in names and sum("-step" in n for n in names) <= 2


def test_truncated_newest_checkpoint_falls_back_to_the_previous(synthetic_root, tmp_path, caplog):
    out = tmp_path / "run"
    FragileXU.DIE_AT = 8
    with pytest.raises(Interrupted):
        _train(synthetic_root, str(out))
    FragileXU.DIE_AT = None
    model_dir = out / "model"
    newest = model_dir / open(model_dir / "checkpoint").read().strip()
    assert newest.name == "model.pth.tar-1-step6"  # died in epoch 2 before its first checkpoint
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])
    t = build_trainer(_cfg(synthetic_root, str(out)))
    start = t.resume_model_if_exist(str(out))
    assert "Skipping checkpoint" in caplog.text and newest.name in caplog.text
    assert (start, t.resume_step) == (0, 4)  # the step-4 checkpoint of epoch 1, the one before it


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    out = tmp_path / "run"
    FragileXU.NAN_AT = 3
    t = build_trainer(_cfg(synthetic_root, str(out), "TRAIN.PRINT_FREQ", "100"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 3 \(loss=nan") as e:
        t.train()
    assert "model.pth.tar-1-step2" in str(e.value)  # the last good checkpoint, named
    assert sorted(os.listdir(out / "model")) == ["checkpoint", "model.pth.tar-1-step2"]  # nothing saved after


def test_nonfinite_steps_can_be_skipped(synthetic_root, tmp_path):
    FragileXU.NAN_AT = 3
    t = _train(synthetic_root, str(tmp_path / "run"), "TRAIN.ON_NONFINITE", "skip")
    assert t.skipped_steps == 1 and all(torch.isfinite(p).all() for p in t.model.parameters())
    assert json.load(open(tmp_path / "run" / "results.json"))["epochs_trained"] == 2


def test_full_disk_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(synthetic_root, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "run"
    t = build_trainer(_cfg(synthetic_root, str(out)))
    real = ckpt_utils.atomic_write_bytes
    calls = {"n": 0}

    def full_after_one(path, data):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint and its index go through, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt_utils, "atomic_write_bytes", full_after_one)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*model.pth.tar-1-step4: No space left on device; "
                                        r"the checkpoints already in .* are intact"):
        t.train()
    monkeypatch.undo()
    first = out / "model" / "model.pth.tar-1-step2"
    assert torch.load(first, weights_only=True)["step_in_epoch"] == 2  # intact and readable
    assert not [f for f in os.listdir(out / "model") if f.endswith(".tmp")]  # no temporary left behind


def test_unwritable_output_folder_is_reported_before_training(synthetic_root, tmp_path, capsys):
    from engine import cli as train

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = train.cli(["--root", synthetic_root, "--dataset-config-file",
                      os.path.join(ROOT, "configs", "datasets", "synthetic.yaml"), "--config-file",
                      os.path.join(ROOT, "configs", "trainers", "ZSCLIP", "tiny.yaml"),
                      "--output-dir", str(blocker / "out"), *SYNTH_OPTS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: output folder") and "is not writable" in err


def test_eval_only_on_last_best_and_given_epoch(synthetic_root, tmp_path):
    out = tmp_path / "run"
    _train(synthetic_root, str(out), "TRAIN.CHECKPOINT_FREQ", "1")
    for epoch, expected in ((None, 2), (1, 1), (2, 2)):
        t = build_trainer(_cfg(synthetic_root, str(tmp_path / f"eval{epoch}")))
        t.load_model(str(out), epoch=epoch)
        t.test()  # Dassl's eval-only sequence: load_model then test writes results.json
        assert json.load(open(tmp_path / f"eval{epoch}" / "results.json"))["epochs_trained"] == expected
    t = build_trainer(_cfg(synthetic_root, str(tmp_path / "evalbest")))
    with pytest.raises(UserError, match="no best-model checkpoint"):
        t.load_model(str(out), epoch="best")
    # another class count: a clear error naming the checkpoint
    other = build_trainer(make_cfg(synthetic_root, str(tmp_path / "other"), *OPTS, "DATASET.UNSEEN_CLASSES",
                                   "['fear','anger']", "TRAINER.NAME", "FragileXU"))
    with pytest.raises(UserError, match="does not fit model 'model'"):
        other.load_model(str(out))


def _kill_and_resume_cmd(root: str, out: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), "--root", root, "--dataset-config-file",
            os.path.join(ROOT, "configs", "datasets", "synthetic.yaml"), "--config-file",
            os.path.join(ROOT, "configs", "trainers", "PromptEmo", "tiny.yaml"), "--output-dir", out, "--seed", "5",
            "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_STEPS", "1", "TRAIN.PRINT_FREQ", "1",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "24", *SYNTH_OPTS]


def test_sigkill_at_a_random_step_then_rerun_gives_the_same_results(synthetic_root, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_kill_and_resume_cmd(synthetic_root, str(straight)), check=True, capture_output=True, env=env,
                   timeout=300)
    killed = tmp_path / "killed"
    step = random.Random(os.getpid()).randint(2, 11)  # any step of the 12
    marker = f"epoch [{(step - 1) // 6 + 1}/2] batch [{(step - 1) % 6 + 1}/6]"
    proc = subprocess.Popen(_kill_and_resume_cmd(synthetic_root, str(killed)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline:
        log = killed / "log.txt"
        if log.exists() and marker in log.read_text():
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    rerun = subprocess.run(_kill_and_resume_cmd(synthetic_root, str(killed)), capture_output=True, text=True,
                           env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    log = (killed / "log.txt").read_text()
    assert "will resume training" in log
    # the killed run's lock did not block the rerun, and nothing it left half-written remains
    assert f"removed a stale lock of pid {proc.pid}" in log
    assert not list(killed.rglob("*.tmp")) and not (killed / ".lock").exists()
    a = json.load(open(straight / "results.json"))["metrics"]
    b = json.load(open(killed / "results.json"))["metrics"]
    assert a == b, f"killed at step {step}"
