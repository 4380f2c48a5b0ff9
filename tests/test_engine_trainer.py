"""The TrainerXU loop with a small trainer defined here: training, logging, checkpoints in Dassl's
layout, resume (epoch counter, optimiser state, identical results) and the unlabelled-target contract."""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import make_cfg
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, TrainerXU, build_trainer
from engine.utils.checkpoint import load_checkpoint
from engine.utils.logger import setup_logger
from engine.utils.tools import set_cudnn_benchmark


@TRAINER_REGISTRY.register(force=True)
class ToyXU(TrainerXU):
    """Linear classifier on pixels; source cross-entropy plus target entropy minimisation."""

    def build_model(self) -> None:
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, self.num_classes)).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)
        self.target_labels_seen: list[int] = []
        self.steps = 0

    def forward_backward(self, batch_x, batch_u):
        input_x, label_x, input_u = self.parse_batch_train(batch_x, batch_u)
        self.target_labels_seen += batch_u["label"].tolist()
        loss_x = F.cross_entropy(self.model(input_x), label_x)
        p_u = self.model(input_u).softmax(-1)
        loss_u = -(p_u * p_u.clamp_min(1e-8).log()).sum(-1).mean()
        loss = loss_x + 0.1 * loss_u
        self.model_backward_and_update(loss)
        self.steps += 1
        return {"loss": loss, "loss_x": loss_x, "loss_u": loss_u}

    def model_inference(self, input):
        return self.model(input).softmax(-1)


OPTS = ["TRAINER.NAME", "ToyXU", "OPTIM.NAME", "adamw", "OPTIM.LR", "0.001", "OPTIM.LR_SCHEDULER", "multi_step",
        "OPTIM.STEPSIZE", "(1,)", "TRAIN.PRINT_FREQ", "2", "SEED", "0", "DATALOADER.TRAIN_X.SAMPLER",
        "RandomDomainSampler"]


def _run(root: str, out: str, epochs: int) -> ToyXU:
    setup_logger(out)
    trainer = build_trainer(make_cfg(root, out, *OPTS, "OPTIM.MAX_EPOCH", str(epochs), trainer="ToyXU"))
    trainer.train()
    return trainer


def test_train_one_epoch_writes_dassl_layout_logs_and_results(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    trainer = _run(synthetic_root, out, 1)
    # 144 source images in batches of 24 (8 from each source); the 56 target images restart after 2 batches
    assert trainer.steps == 6
    assert set(trainer.target_labels_seen) == {-1}  # target labels never reach a training step
    ckpt_path = os.path.join(out, "model", "model.pth.tar-1")
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["epoch"] == 1 and set(ckpt) >= {"state_dict", "optimizer", "scheduler", "rng_state", "loader_state"}
    assert open(os.path.join(out, "model", "checkpoint")).read().strip() == "model.pth.tar-1"
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["trainer"] == "ToyXU" and results["target_domain"] == "synth_wild"
    assert results["source_domains"] == ["synth_color", "synth_gray", "synth_lab"]
    assert results["unseen_classes"] == ["fear"] and results["seed"] == 0 and results["epochs_trained"] == 1
    assert {"auc_u", "acc_s", "h_best", "oscr", "acc_anger"} <= set(results["metrics"])
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train_records = [r for r in records if "train/loss_x" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6] and all("train/lr" in r for r in train_records)
    assert any("test/auc_u" in r for r in records)
    assert glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    assert "epoch [1/1] batch [2/6]" in open(os.path.join(out, "log.txt")).read()


def test_resume_restores_epoch_optimizer_and_gives_identical_results(synthetic_root, tmp_path):
    out = str(tmp_path / "interrupted")
    _run(synthetic_root, out, 1)  # "killed" after epoch 1 (its checkpoint is the last thing it wrote)
    saved = load_checkpoint(os.path.join(out, "model", "model.pth.tar-1"))

    resumed = build_trainer(make_cfg(synthetic_root, out, *OPTS, "OPTIM.MAX_EPOCH", "2", trainer="ToyXU"))
    assert resumed.resume_model_if_exist(out) == 1
    state = resumed.optim.state_dict()
    assert state["state"][0]["step"] == saved["optimizer"]["state"][0]["step"] == 6
    assert torch.equal(state["state"][0]["exp_avg"].cpu(), saved["optimizer"]["state"][0]["exp_avg"])
    assert resumed.sched.last_epoch == 1 and resumed.get_current_lr() == pytest.approx(1e-4)
    resumed.train()
    assert resumed.start_epoch == 1 and resumed.steps == 6  # only epoch 2 ran
    assert os.path.isfile(os.path.join(out, "model", "model.pth.tar-2"))

    straight = _run(synthetic_root, str(tmp_path / "straight"), 2)
    assert resumed.test_results == straight.test_results  # bit-identical on the same device
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_a_checkpoint_of_another_run(synthetic_root, tmp_path):
    from engine.utils.errors import UserError

    out = str(tmp_path / "run")
    _run(synthetic_root, out, 1)
    other = build_trainer(make_cfg(synthetic_root, out, *OPTS, "OPTIM.MAX_EPOCH", "2", "DATASET.UNSEEN_CLASSES",
                                   "anger", trainer="ToyXU"))
    with pytest.raises(UserError, match="belongs to a different run"):
        other.train()


def test_eval_only_loads_a_given_epoch_without_val_result(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    first = _run(synthetic_root, out, 1)
    fresh = build_trainer(make_cfg(synthetic_root, str(tmp_path / "eval"), *OPTS, trainer="ToyXU"))
    fresh.load_model(out, epoch=1)
    fresh.final_evaluation()
    assert fresh.test_results == first.test_results
    assert json.load(open(tmp_path / "eval" / "results.json"))["epochs_trained"] == 1


@pytest.mark.parametrize("enabled", [True, False])
def test_cudnn_benchmark_follows_the_config_on_cuda_only(monkeypatch, enabled):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not enabled)  # restored after the test
    cfg = make_cfg("unused", "unused", "CUDNN_BENCHMARK", str(enabled))
    set_cudnn_benchmark(cfg, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is (not enabled)  # a CPU run leaves the process-wide flag alone
    set_cudnn_benchmark(cfg, torch.device("cuda"))  # only sets a flag: no GPU needed
    assert torch.backends.cudnn.benchmark is enabled


def test_trainer_turns_cudnn_benchmark_on_for_cuda_runs_as_dassl_does(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    trainer = build_trainer(make_cfg(synthetic_root, str(tmp_path), trainer="ToyXU"))
    assert torch.backends.cudnn.benchmark is (trainer.device.type == "cuda")


def test_checkpoint_format_is_the_one_older_checkpoints_have(synthetic_root, tmp_path):
    """Checkpoints written by earlier versions load and resume only while the entries and the run signature
    keep their names: pinned here, so that a change to them is a decision, not an accident."""
    out = str(tmp_path / "run")
    setup_logger(out)
    trainer = build_trainer(make_cfg(synthetic_root, out, *OPTS, "OPTIM.MAX_EPOCH", "1", "TRAIN.CHECKPOINT_STEPS",
                                     "4", trainer="ToyXU"))
    trainer.train()
    epoch_ckpt = load_checkpoint(os.path.join(out, "model", "model.pth.tar-1"))
    assert set(epoch_ckpt) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result", "run_signature",
                               "rng_state", "loader_state"}
    assert epoch_ckpt["run_signature"] == {
        "trainer": "ToyXU", "backbone": "tiny", "dataset": "MOFER",
        "source_domains": ["synth_color", "synth_gray", "synth_lab"], "target_domains": ["synth_wild"],
        "unseen_classes": ["fear"], "num_classes": 6}
    assert set(epoch_ckpt["rng_state"]) >= {"python", "numpy", "torch"}
    assert set(epoch_ckpt["loader_state"]) == {"train_x", "train_u"}
    assert set(epoch_ckpt["loader_state"]["train_x"]) == {"pass_start", "consumed", "generator"}
    step_ckpt = load_checkpoint(os.path.join(out, "model", "model.pth.tar-1-step4"))
    assert set(step_ckpt) == set(epoch_ckpt) | {"step_in_epoch"}
    assert (step_ckpt["epoch"], step_ckpt["step_in_epoch"], epoch_ckpt["epoch"]) == (0, 4, 1)
