"""A method's own unseen score: every open-set metric on a hand-made example where the knownness and the
MSP rank the samples differently, the evaluator's handling of it, and results.json recording it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.config import get_cfg_default
from engine.evaluation import MSP, OpenSetPrediction, build_evaluator, open_set_metrics
from trainers.zsclip import ZSCLIP

from conftest import make_cfg

# Two seen classes; samples 0 and 1 are seen and classified right, 2 and 3 are unseen (label K = 2).
PROBS = np.array([[0.90, 0.10],   # seen, conf .90
                  [0.40, 0.60],   # seen, conf .60
                  [0.85, 0.15],   # unseen, conf .85
                  [0.35, 0.65]])  # unseen, conf .65
LABELS = np.array([0, 1, 2, 2])
UNSEEN = np.array([False, False, True, True])
# The method's knownness separates them perfectly, where MSP interleaves them (.90 > .85 > .65 > .60).
KNOWNNESS = np.array([5.0, 4.0, 1.0, 2.0])

# By hand, MSP (unseen score 1 - conf: seen .10, .40; unseen .15, .35):
#   AUROC: unseen above seen in 2 of 4 pairs -> .5.  AUPR: ranking .40(seen) .35(u) .15(u) .10(seen) ->
#   (1/2 + 2/3) / 2.  FPR95: both unseen flagged from .15 on -> seen .40 flagged -> .5.
#   OSCR: levels .90 (CCR .5), .85 (FPR .5), .65 (FPR 1), .60 (CCR 1) -> area .5.
#   DAML grid linspace(.6, .9, 4): H = 0 (all accepted), .5, .5, 2(.5)(1)/1.5 -> best 2/3, mean 5/12;
#   at the best threshold (.9) known accuracy .5, unseen recall 1.
MSP_EXPECTED = {"auc_u": 50.0, "aupr_u": 100 * (1 / 2 + 2 / 3) / 2, "fpr95": 50.0, "oscr": 50.0,
                "h_best": 100 * 2 / 3, "h_mean": 100 * 5 / 12, "acc_s_at_best": 50.0, "unseen_recall_at_best": 100.0}
# By hand, the knownness (5, 4 seen; 1, 2 unseen): perfect detection -> AUROC 1, AUPR 1, FPR95 0, OSCR 1
# (both seen right before any unseen enters). DAML grid linspace(1, 5, 4) = 1, 7/3, 11/3, 5: H = 0, 1, 1,
# 2(.5)(1)/1.5 -> best 1 (at 7/3: known accuracy 1, unseen recall 1), mean (2 + 2/3) / 4.
OWN_EXPECTED = {"auc_u": 100.0, "aupr_u": 100.0, "fpr95": 0.0, "oscr": 100.0,
                "h_best": 100.0, "h_mean": 100 * (2 + 2 / 3) / 4, "acc_s_at_best": 100.0, "unseen_recall_at_best": 100.0}


@pytest.mark.parametrize("knownness, expected", [(None, MSP_EXPECTED), (KNOWNNESS, OWN_EXPECTED)],
                         ids=["msp", "own"])
def test_every_ranking_metric_uses_the_given_score(knownness, expected):
    metrics = open_set_metrics(PROBS, LABELS, UNSEEN, num_thresholds=4, knownness=knownness)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    # the prediction stays the probabilities' argmax: ACC-S and the class recalls do not depend on the score
    assert metrics["acc_s"] == pytest.approx(100.0) and metrics["acc_class_1"] == pytest.approx(100.0)


def test_knownness_scale_does_not_matter():
    """Rank-based metrics and the DAML grid (spanning the score's own range) are invariant to an increasing
    affine map of the knownness: a method may report similarities, negated losses or log-likelihoods."""
    a = open_set_metrics(PROBS, LABELS, UNSEEN, 4, KNOWNNESS)
    b = open_set_metrics(PROBS, LABELS, UNSEEN, 4, 3.0 * KNOWNNESS - 40.0)
    assert a == pytest.approx(b)


def test_knownness_must_be_finite_and_one_per_sample():
    with pytest.raises(ValueError, match="knownness"):
        open_set_metrics(PROBS, LABELS, UNSEEN, 4, np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="knownness"):
        open_set_metrics(PROBS, LABELS, UNSEEN, 4, KNOWNNESS[:3])


def test_evaluator_takes_the_knownness_batch_by_batch():
    cfg = get_cfg_default()
    cfg.defrost()
    cfg.TEST.NUM_THRESHOLDS = 4
    ev = build_evaluator(cfg)
    probs, labels, known = torch.tensor(PROBS), torch.tensor(LABELS), torch.tensor(KNOWNNESS)
    ev.process(probs[:3], labels[:3], knownness=known[:3])
    ev.process(probs[3:], labels[3:], knownness=known[3:])
    assert ev.evaluate()["auc_u"] == pytest.approx(100.0) and ev.score_kind == "own"
    assert np.array_equal(ev.arrays[3], KNOWNNESS)
    ev.reset()
    ev.process(probs, labels)
    assert ev.evaluate()["auc_u"] == pytest.approx(50.0) and ev.score_kind == MSP and len(ev.arrays) == 3
    ev.reset()
    ev.process(probs[:3], labels[:3], knownness=known[:3])
    ev.process(probs[3:], labels[3:])  # a trainer that forgot the score in one batch must not be averaged in
    with pytest.raises(ValueError, match="every batch or none"):
        ev.evaluate()


class _ZSCLIPWithNegatedMSP(ZSCLIP):
    """A test method whose own score is the negated MSP: every ranking metric flips against ZSCLIP's."""

    UNSEEN_SCORE = "negated_msp"

    def model_inference(self, images: torch.Tensor) -> OpenSetPrediction:
        probs = super().model_inference(images)
        return OpenSetPrediction(probs, -probs.max(1).values)


def test_results_json_records_the_score_a_run_used(synthetic_root, tiny_clip_file, tmp_path):
    runs = {}
    for name, cls in (("msp", ZSCLIP), ("own", _ZSCLIPWithNegatedMSP)):
        cfg = make_cfg(synthetic_root, str(tmp_path / name), "MODEL.BACKBONE.NAME", tiny_clip_file,
                       "TEST.SAVE_PREDICTIONS", "True")
        trainer = cls(cfg)
        trainer.final_evaluation()
        runs[name] = json.load(open(tmp_path / name / "results.json"))
    assert runs["msp"]["unseen_score"] == MSP and runs["own"]["unseen_score"] == "negated_msp"
    msp, own = runs["msp"]["metrics"], runs["own"]["metrics"]
    assert own["acc_s"] == msp["acc_s"]  # same predictions
    assert own["auc_u"] == pytest.approx(100.0 - msp["auc_u"])  # the reversed ranking
    saved = np.load(tmp_path / "own" / "predictions.npz")
    assert np.allclose(saved["knownness"], -saved["probs"].max(1), atol=1e-6)


def test_a_trainer_must_name_its_own_score(synthetic_root, tiny_clip_file, tmp_path):
    class Unnamed(_ZSCLIPWithNegatedMSP):
        UNSEEN_SCORE = MSP

    cfg = make_cfg(synthetic_root, str(tmp_path / "o"), "MODEL.BACKBONE.NAME", tiny_clip_file)
    with pytest.raises(RuntimeError, match="UNSEEN_SCORE"):
        Unnamed(cfg).test()
