"""Tests for engine/evaluation/metrics.py (open-set recognition metrics).

Expected values are either computed by sklearn or worked out by hand in the
comments next to each test.
"""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from engine.evaluation.metrics import (
    METRIC_DESCRIPTIONS,
    aupr_unseen,
    auroc_unseen,
    closed_set_accuracy,
    daml_threshold_grid,
    fpr_at_tpr,
    mean_class_recall,
    open_set_metrics,
    oscr,
    per_class_accuracy,
)

FIXED_KEYS = [
    "auc_u", "acc_s", "mcr", "h_best", "h_mean", "acc_s_at_best",
    "unseen_recall_at_best", "fpr95", "aupr_u", "oscr",
]


def _random_run(seed, n=200, k=4, tie_decimals=1):
    """Random probs with many tied confidences (rounded) and a mixed unseen mask."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = np.round(probs, tie_decimals)  # force ties in conf
    probs[:, 0] += 1e-12  # break argmax ties deterministically without changing conf ties much
    unseen = rng.random(n) < 0.3
    labels = np.where(unseen, k, rng.integers(0, k, n))
    return probs, labels, unseen


# --------------------------------------------------------------------------- #
# AUROC / AUPR
# --------------------------------------------------------------------------- #
def test_auroc_matches_sklearn_and_pair_count_with_ties():
    probs, labels, unseen = _random_run(0)
    score = 1 - probs.max(1)
    got = auroc_unseen(unseen, score)
    assert got == pytest.approx(roc_auc_score(unseen, score))
    # independent check: P(score_unseen > score_seen) + 0.5 * P(tie)
    pos, neg = score[unseen][:, None], score[~unseen][None, :]
    pairs = (pos > neg).mean() + 0.5 * (pos == neg).mean()
    assert got == pytest.approx(pairs)


def test_auroc_hand_example_with_tie():
    # unseen scores {0.8, 0.5}, seen scores {0.5, 0.2}
    # pairs: (0.8>0.5)=1, (0.8>0.2)=1, (0.5=0.5)=0.5, (0.5>0.2)=1 -> 3.5/4
    unseen = np.array([True, True, False, False])
    score = np.array([0.8, 0.5, 0.5, 0.2])
    assert auroc_unseen(unseen, score) == pytest.approx(0.875)


def test_aupr_hand_example_and_sklearn():
    # ranked by score: U(0.9) S(0.8) U(0.7) S(0.1), 2 positives
    # AP = sum (R_n - R_{n-1}) P_n = 0.5 * 1 + 0.5 * (2/3) = 5/6
    unseen = np.array([True, False, True, False])
    score = np.array([0.9, 0.8, 0.7, 0.1])
    assert aupr_unseen(unseen, score) == pytest.approx(5 / 6)
    probs, _, unseen = _random_run(1)
    score = 1 - probs.max(1)
    assert aupr_unseen(unseen, score) == pytest.approx(average_precision_score(unseen, score))


def test_detection_metrics_nan_when_one_side_missing():
    score = np.array([0.1, 0.5, 0.9])
    for mask in (np.zeros(3, bool), np.ones(3, bool)):
        assert math.isnan(auroc_unseen(mask, score))
        assert math.isnan(aupr_unseen(mask, score))
        assert math.isnan(fpr_at_tpr(mask, score))


# --------------------------------------------------------------------------- #
# FPR@95
# --------------------------------------------------------------------------- #
def test_fpr95_hand_example_with_tie_at_threshold():
    # 4 unseen: 95% of 4 = 3.8 -> all 4 must be flagged -> t = min unseen = 0.4
    # seen scores >= 0.4: 0.4 (tie, counted as flagged) and 0.5 -> 2/5
    unseen = np.array([True] * 4 + [False] * 5)
    score = np.array([0.9, 0.8, 0.7, 0.4, 0.1, 0.4, 0.5, 0.2, 0.3])
    assert fpr_at_tpr(unseen, score) == pytest.approx(0.4)


def test_fpr95_exact_fraction_is_not_rounded_up():
    # 20 unseen with scores 1..20: 95% = exactly 19 -> t = 2 (19 scores >= 2).
    # seen scores 0,1,2,3 -> flagged {2, 3} -> 0.5.  (Requiring 20/20 would give t=1 -> 0.75.)
    unseen = np.array([True] * 20 + [False] * 4)
    score = np.concatenate([np.arange(1, 21), [0, 1, 2, 3]]).astype(float)
    assert fpr_at_tpr(unseen, score) == pytest.approx(0.5)
    # tpr=0.5 -> 10 of 20 -> t = 11 -> no seen flagged
    assert fpr_at_tpr(unseen, score, tpr=0.5) == 0.0


def test_fpr_invalid_tpr():
    with pytest.raises(ValueError):
        fpr_at_tpr(np.array([True, False]), np.array([0.1, 0.2]), tpr=0.0)


# --------------------------------------------------------------------------- #
# closed-set accuracy / per-class
# --------------------------------------------------------------------------- #
def test_closed_set_accuracy_ignores_unseen():
    # seen: (0,0) ok, (1,2) wrong, (2,2) ok -> 2/3; the unseen sample (pred 3 == label 3) is ignored
    pred = np.array([0, 1, 2, 3])
    labels = np.array([0, 2, 2, 3])
    unseen = np.array([False, False, False, True])
    assert closed_set_accuracy(pred, labels, unseen) == pytest.approx(2 / 3)
    assert math.isnan(closed_set_accuracy(pred, labels, np.ones(4, bool)))


def test_per_class_nan_for_empty_class_and_mcr_excludes_it():
    # K=3, class 1 has no seen sample (the unseen sample carries label 1 and pred 1: must not count)
    # class 0: preds [0,0,1] -> 2/3;  class 2: preds [2,0] -> 1/2
    # mcr = (2/3 + 1/2) / 2 = 7/12   (counting class 1 as 0 would give 7/18)
    pred = np.array([0, 0, 1, 2, 0, 1])
    labels = np.array([0, 0, 0, 2, 2, 1])
    unseen = np.array([False, False, False, False, False, True])
    acc = per_class_accuracy(pred, labels, unseen, 3)
    assert acc[0] == pytest.approx(2 / 3)
    assert math.isnan(acc[1])
    assert acc[2] == pytest.approx(0.5)
    assert mean_class_recall(pred, labels, unseen, 3) == pytest.approx(7 / 12)
    # no seen sample at all -> everything NaN, mcr NaN (no warning-driven garbage)
    assert math.isnan(mean_class_recall(pred, labels, np.ones(6, bool), 3))


def test_per_class_rejects_out_of_range_seen_label():
    with pytest.raises(ValueError):
        per_class_accuracy(np.array([0, 1]), np.array([0, 3]), np.array([False, False]), 3)


# --------------------------------------------------------------------------- #
# DAML threshold grid
# --------------------------------------------------------------------------- #
def test_daml_hand_example():
    # sample  conf   seen/unseen  correct
    #  s1     0.875  seen         yes
    #  s2     0.625  seen         yes    (tied with a threshold -> accepted there)
    #  s3     0.5    seen         no
    #  s4     0.375  unseen              (tied with a threshold -> NOT rejected there)
    #  s5     0.25   seen         yes
    #  s6     0.125  unseen
    # N_seen=4, N_unseen=2; thresholds = linspace(0.125, 0.875, 4) = .125 .375 .625 .875
    # t=.125: nothing rejected            a=3/4 u=0   h=0
    # t=.375: reject s5,s6                a=2/4 u=1/2 h=2*.5*.5/1 = 1/2
    # t=.625: reject s3,s4,s5,s6          a=2/4 u=1   h=2*.5*1/1.5 = 2/3
    # t=.875: reject all but s1           a=1/4 u=1   h=2*.25/1.25 = 2/5
    # h_best = 2/3 at t=.625; h_mean = (0 + 1/2 + 2/3 + 2/5)/4 = 47/120
    conf = np.array([0.875, 0.625, 0.5, 0.375, 0.25, 0.125])
    labels = np.array([0, 1, 0, 9, 1, 9])
    pred = np.array([0, 1, 1, 0, 1, 1])
    unseen = np.array([False, False, False, True, False, True])
    r = daml_threshold_grid(conf, pred, labels, unseen, num_thresholds=4)
    np.testing.assert_allclose(r["thresholds"], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(r["acc_known"], [0.75, 0.5, 0.5, 0.25])
    np.testing.assert_allclose(r["recall_unseen"], [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(r["h"], [0.0, 0.5, 2 / 3, 0.4])
    assert r["h_best"] == pytest.approx(2 / 3)
    assert r["h_mean"] == pytest.approx(47 / 120)
    assert r["best_threshold"] == pytest.approx(0.625)
    assert r["acc_known_at_best"] == pytest.approx(0.5)
    assert r["recall_unseen_at_best"] == pytest.approx(1.0)


def test_daml_tied_h_picks_lowest_threshold():
    # seen correct conf .75, unseen conf .25; thresholds .25 .5 .75
    # t=.25: nothing rejected h=0; t=.5: a=1,u=1 h=1; t=.75: seen tie accepted, h=1 -> best is t=.5
    r = daml_threshold_grid(np.array([0.75, 0.25]), np.array([0, 0]), np.array([0, 1]),
                            np.array([False, True]), num_thresholds=3)
    np.testing.assert_allclose(r["h"], [0.0, 1.0, 1.0])
    assert r["best_threshold"] == pytest.approx(0.5)


def test_daml_nan_without_unseen():
    r = daml_threshold_grid(np.array([0.9, 0.4]), np.array([0, 1]), np.array([0, 1]),
                            np.array([False, False]), num_thresholds=5)
    assert r["h"].shape == (5,) and np.isnan(r["h"]).all()
    for key in ("h_best", "h_mean", "best_threshold", "acc_known_at_best", "recall_unseen_at_best"):
        assert math.isnan(r[key])


# --------------------------------------------------------------------------- #
# OSCR
# --------------------------------------------------------------------------- #
def _oscr_reference(conf, pred, labels, unseen):
    """Slow threshold loop, written independently of the module."""
    seen = ~unseen
    xs, ys = [0.0], [0.0]
    for t in sorted(set(conf.tolist()), reverse=True):
        ys.append(np.sum(seen & (pred == labels) & (conf >= t)) / seen.sum())
        xs.append(np.sum(unseen & (conf >= t)) / unseen.sum())
    return sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))


def test_oscr_hand_example_with_tie():
    # A .9 seen correct | B .7 seen correct | C .7 unseen | D .5 seen wrong | E .3 unseen
    # N_seen=3, N_unseen=2; points (FPR, CCR):
    #   +inf (0,0); .9 (0,1/3); .7 (1/2,2/3) [B and C enter together]; .5 (1/2,2/3); .3 (1,2/3)
    # area = 0 + 1/2*(1/3+2/3)/2 + 0 + 1/2*2/3 = 1/4 + 1/3 = 7/12
    # (order-dependent versions would give 2/3 (B first) or 1/2 (C first))
    conf = np.array([0.9, 0.7, 0.7, 0.5, 0.3])
    pred = np.array([0, 1, 0, 0, 1])
    labels = np.array([0, 1, 5, 1, 5])
    unseen = np.array([False, False, True, False, True])
    assert oscr(conf, pred, labels, unseen) == pytest.approx(7 / 12)
    for perm in ([2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [1, 2, 4, 0, 3]):
        p = np.array(perm)
        assert oscr(conf[p], pred[p], labels[p], unseen[p]) == pytest.approx(7 / 12)


def test_oscr_permutation_invariant_and_matches_reference_on_random_ties():
    probs, labels, unseen = _random_run(2)
    conf, pred = probs.max(1), probs.argmax(1)
    assert len(np.unique(conf)) < len(conf) / 4  # make sure there really are ties
    base = oscr(conf, pred, labels, unseen)
    assert base == pytest.approx(_oscr_reference(conf, pred, labels, unseen))
    p = np.random.default_rng(3).permutation(len(conf))
    assert oscr(conf[p], pred[p], labels[p], unseen[p]) == pytest.approx(base, abs=1e-12)


def test_oscr_nan_without_seen_or_unseen():
    conf, pred, labels = np.array([0.9, 0.4]), np.array([0, 1]), np.array([0, 1])
    assert math.isnan(oscr(conf, pred, labels, np.array([False, False])))
    assert math.isnan(oscr(conf, pred, labels, np.array([True, True])))


# --------------------------------------------------------------------------- #
# open_set_metrics
# --------------------------------------------------------------------------- #
def _separated_run():
    # 4 seen with conf .9/.8/.85/.7 (one misclassified: row 2 predicts 1, label 0),
    # 3 unseen with conf .4/.5/.45: every seen conf > every unseen conf.
    probs = np.array([
        [0.9, 0.05, 0.05],
        [0.1, 0.8, 0.1],
        [0.1, 0.85, 0.05],
        [0.1, 0.2, 0.7],
        [0.4, 0.3, 0.3],
        [0.25, 0.5, 0.25],
        [0.3, 0.25, 0.45],
    ])
    labels = np.array([0, 1, 0, 2, 3, 3, 3])
    unseen = np.array([False] * 4 + [True] * 3)
    return probs, labels, unseen


def test_perfect_separation():
    probs, labels, unseen = _separated_run()
    m = open_set_metrics(probs, labels, unseen)
    assert m["auc_u"] == pytest.approx(100.0)
    assert m["aupr_u"] == pytest.approx(100.0)
    assert m["fpr95"] == pytest.approx(0.0)
    assert m["acc_s"] == pytest.approx(75.0)
    # CCR climbs to acc_s at FPR 0 and stays there -> area == acc_s
    assert m["oscr"] == pytest.approx(m["acc_s"])


def test_inverted_scores_give_auc_zero():
    probs, labels, unseen = _separated_run()
    labels = np.array([0, 1, 0, 2, 0, 1, 2])  # valid seen labels for the rows that become seen
    m = open_set_metrics(probs, labels, ~unseen)  # now the confident samples are "unseen"
    assert m["auc_u"] == pytest.approx(0.0)
    assert m["fpr95"] == pytest.approx(100.0)


def test_no_unseen_samples():
    probs, labels, _ = _separated_run()
    labels = np.array([0, 1, 0, 2, 0, 1, 2])
    unseen = np.zeros(7, bool)
    m = open_set_metrics(probs, labels, unseen)
    for key in ("auc_u", "aupr_u", "fpr95", "oscr", "h_best", "h_mean",
                "acc_s_at_best", "unseen_recall_at_best"):
        assert math.isnan(m[key]), key
    # preds 0,1,1,2,0,1,2 vs labels 0,1,0,2,0,1,2 -> 6/7
    assert m["acc_s"] == pytest.approx(600 / 7)
    assert not math.isnan(m["mcr"])


def test_open_set_metrics_keys_percent_and_consistency():
    probs, labels, unseen = _random_run(4, k=3)
    m = open_set_metrics(probs, labels, unseen, num_thresholds=7)
    assert list(m) == FIXED_KEYS + ["acc_class_0", "acc_class_1", "acc_class_2"]
    assert all(type(v) is float for v in m.values())

    conf, pred = probs.max(1), probs.argmax(1)
    score = 1 - conf
    daml = daml_threshold_grid(conf, pred, labels, unseen, 7)
    per_class = per_class_accuracy(pred, labels, unseen, 3)
    expected = {
        "auc_u": roc_auc_score(unseen, score),
        "acc_s": closed_set_accuracy(pred, labels, unseen),
        "mcr": mean_class_recall(pred, labels, unseen, 3),
        "h_best": daml["h_best"],
        "h_mean": daml["h_mean"],
        "acc_s_at_best": daml["acc_known_at_best"],
        "unseen_recall_at_best": daml["recall_unseen_at_best"],
        "fpr95": fpr_at_tpr(unseen, score),
        "aupr_u": average_precision_score(unseen, score),
        "oscr": oscr(conf, pred, labels, unseen),
        **{f"acc_class_{c}": per_class[c] for c in range(3)},
    }
    for key, frac in expected.items():
        assert m[key] == pytest.approx(100 * frac), key
    assert 0 < m["acc_s"] <= 100 and m["oscr"] <= m["acc_s"] + 1e-9


def test_metric_descriptions_cover_every_key():
    for key in FIXED_KEYS + ["acc_class_<k>"]:
        desc = METRIC_DESCRIPTIONS[key]
        assert "higher is better" in desc or "lower is better" in desc
    assert "lower is better" in METRIC_DESCRIPTIONS["fpr95"]


@pytest.mark.parametrize(
    "probs, labels, unseen",
    [
        (np.array([0.5, 0.5]), np.array([0, 1]), np.array([False, False])),  # probs 1-D
        (np.ones((3, 2)) / 2, np.array([0, 1]), np.array([False, False, True])),  # labels length
        (np.ones((3, 2)) / 2, np.array([0, 1, 2]), np.array([False, True])),  # unseen length
        (np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, bool)),  # N == 0
        (np.ones((2, 2)) / 2, np.array([0, 1]), np.array([0, 2])),  # unseen is not a mask
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), np.array([0, 1]), np.array([False, True])),
    ],
)
def test_invalid_inputs_raise(probs, labels, unseen):
    with pytest.raises(ValueError):
        open_set_metrics(probs, labels, unseen)
