"""The comparison trainers (Baseline, CoOp) on the synthetic test domains with the tiny backbone."""
from __future__ import annotations

import json

import torch

from conftest import make_cfg
from engine.trainer import build_trainer


def _trainer(root, out, name, *opts):
    return build_trainer(make_cfg(root, out, "SEED", "0", "OPTIM.MAX_EPOCH", "1", *opts, trainer=name))


def test_coop_trains_only_its_context_and_writes_results(synthetic_root, tmp_path):
    t = _trainer(synthetic_root, str(tmp_path), "CoOp", "OPTIM.NAME", "sgd", "OPTIM.LR", "0.01",
                 "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "True")
    frozen = {k: v.clone() for k, v in {**{f"img.{k}": v for k, v in t.image_encoder.state_dict().items()},
                                        **{f"txt.{k}": v for k, v in t.text_encoder.state_dict().items()}}.items()}
    ctx_before = t.prompt_learner.ctx.detach().clone()
    t.train()
    after = {**{f"img.{k}": v for k, v in t.image_encoder.state_dict().items()},
             **{f"txt.{k}": v for k, v in t.text_encoder.state_dict().items()}}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # encoders untouched
    assert t.prompt_learner.ctx.shape == (6, 4, 64) and not torch.equal(t.prompt_learner.ctx.detach(), ctx_before)
    results = json.load(open(tmp_path / "results.json"))
    assert results["trainer"] == "CoOp" and {"auc_u", "acc_s"} <= set(results["metrics"])
    ckpt = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    assert list(ckpt["state_dict"]) == ["ctx"]  # CoOp saves its context only


def test_baseline_mmd_term_decreases_and_run_writes_results(synthetic_root, tmp_path):
    t = _trainer(synthetic_root, str(tmp_path / "mmd"), "Baseline", "TRAINER.BASELINE.GAMMA", "1.0",
                 "OPTIM.NAME", "adamw", "OPTIM.LR", "0.001", "DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler")
    t.set_model_mode("train")
    batch_x, batch_u = next(iter(t.train_loader_x)), next(iter(t.train_loader_u))
    mmd = [t.forward_backward(batch_x, batch_u)["loss_mmd"].item() for _ in range(12)]
    assert mmd[-1] < 0.7 * mmd[0], mmd

    run = _trainer(synthetic_root, str(tmp_path / "run"), "Baseline", "DATALOADER.TRAIN_X.SAMPLER",
                   "RandomDomainSampler")
    run.train()
    results = json.load(open(tmp_path / "run" / "results.json"))
    assert results["trainer"] == "Baseline" and results["epochs_trained"] == 1
    probs = run.model_inference(next(iter(run.test_loader))["img"][:3].to(run.device))
    assert torch.allclose(probs.sum(-1), torch.ones(3, device=probs.device), atol=1e-5)
