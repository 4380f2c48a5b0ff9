"""The registered OpenSet evaluator: label convention, batching, and class-named per-class keys."""
from __future__ import annotations

import pytest
import torch

from engine.config import get_cfg_default
from engine.evaluation import build_evaluator


def test_openset_evaluator_accumulates_batches_and_names_classes():
    cfg = get_cfg_default()
    ev = build_evaluator(cfg, lab2cname={0: "surprise", 1: "anger"})
    # K = 2 seen classes; label 2 (= K) marks unseen samples
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 2])
    ev.process(probs[:2], labels[:2])
    ev.process(probs[2:], labels[2:])
    r = ev.evaluate()
    assert list(r)[:2] == ["auc_u", "acc_s"]
    # seen scores 1-max: 0.1, 0.2, 0.4; unseen 0.45 -> ranked above every seen sample
    assert r["auc_u"] == pytest.approx(100.0)
    assert r["acc_s"] == pytest.approx(200 / 3)  # samples 0 and 1 right, 2 wrong
    assert r["acc_surprise"] == pytest.approx(100.0) and r["acc_anger"] == pytest.approx(50.0)
    ev.reset()
    ev.process(probs[:3], labels[:3], unseen=torch.tensor([False, False, False]))
    assert ev.evaluate()["auc_u"] != ev.evaluate()["auc_u"]  # NaN: no unseen sample
