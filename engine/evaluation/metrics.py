"""Open-set recognition metrics for one evaluation run, and the registry of the metrics every
evaluation reports.

The metric functions are pure numpy (plus sklearn for AUROC/AUPR) and work on per-sample arrays:

* ``probs``  -- (N, K) seen-class probabilities; ``conf = probs.max(1)``,
  ``pred = probs.argmax(1)``.
* ``labels`` -- (N,) int, seen-class index 0..K-1 for seen samples; ignored
  for unseen samples.
* ``unseen`` -- (N,) bool, True for samples of the unseen class(es).
* ``knownness`` -- optional (N,) float, a method's own score of how likely a sample belongs to a seen
  class (NENO's nearest-neighbour similarity, OS-FER's negated detector loss); it replaces ``conf``
  wherever a metric ranks or thresholds samples (AUROC, AUPR, FPR@95, the DAML grid, OSCR), while
  ``pred`` stays ``probs.argmax(1)``. Without it, ``conf`` is the maximum softmax probability (MSP).

The unseen score is ``1 - conf`` (any decreasing function of ``conf`` gives the same rank-based
metrics, so a knownness on any scale works) and unseen samples are the *positive* class
for AUROC, AUPR and FPR@TPR. Functions return fractions in [0, 1];
:func:`open_set_metrics` converts everything to percent.

Every evaluation reports the metrics registered with :func:`register_metric`, in registration order,
then the recall of each seen class. Each is a function of :class:`OpenSetOutputs`, which derives the
predictions, the unseen score and the DAML threshold grid once for all of them::

    @register_metric("acc_s_at_90", "known accuracy at 90% unseen recall (%), higher is better")
    def acc_s_at_90(o: OpenSetOutputs) -> float: ...   # a fraction in [0, 1], NaN where undefined
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "METRIC_DESCRIPTIONS",
    "OpenSetOutputs",
    "register_metric",
    "auroc_unseen",
    "aupr_unseen",
    "fpr_at_tpr",
    "closed_set_accuracy",
    "per_class_accuracy",
    "mean_class_recall",
    "daml_threshold_grid",
    "oscr",
    "open_set_metrics",
]

# name -> what it is and which way is better: the per-class recalls', then each registered metric's
METRIC_DESCRIPTIONS: dict[str, str] = {
    "acc_class_<k>": "recall of seen class k (%), NaN if the class has no test sample, higher is better",
}


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def _as_1d(name: str, x, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; need at least one sample")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} samples, expected {n}")
    return arr


def _as_mask(unseen, n: int | None = None) -> np.ndarray:
    arr = _as_1d("unseen", unseen, n)
    # Accept 0/1 ints, but refuse anything else: a label array passed by
    # mistake would otherwise silently turn into an all-True mask.
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("unseen must be boolean (or contain only 0/1)")
        arr = arr.astype(bool)
    return arr


def _as_scores(name: str, x, n: int | None = None) -> np.ndarray:
    arr = _as_1d(name, x, n).astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _both_present(unseen: np.ndarray) -> bool:
    return bool(unseen.any() and (~unseen).any())


# --------------------------------------------------------------------------- #
# detection metrics (score = 1 - conf, unseen = positive)
# --------------------------------------------------------------------------- #
def _detection(metric: Callable[[np.ndarray, np.ndarray], float], unseen, score) -> float:
    """``metric(unseen, score)`` after checking the inputs; NaN unless both seen and unseen samples exist."""
    unseen = _as_mask(unseen)
    score = _as_scores("score", score, unseen.shape[0])
    if not _both_present(unseen):
        return math.nan
    return float(metric(unseen, score))


def auroc_unseen(unseen: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve for detecting unseen samples; higher is better.

    Ties in ``score`` count as half a correct ordering (sklearn
    ``roc_auc_score``).

    Parameters
    ----------
    unseen : (N,) bool array, True = unseen (positive class).
    score : (N,) float array, higher = more likely unseen.

    Returns
    -------
    float
        AUROC in [0, 1]; NaN if only seen or only unseen samples are present.
    """
    return _detection(roc_auc_score, unseen, score)


def aupr_unseen(unseen: np.ndarray, score: np.ndarray) -> float:
    """Average precision for detecting unseen samples (unseen = positive); higher is better.

    Tied scores form a single threshold step (sklearn ``average_precision_score``, no interpolation).
    Arguments as :func:`auroc_unseen`. Returns AP in [0, 1]; NaN if there is no unseen or no seen sample.
    """
    return _detection(average_precision_score, unseen, score)


def fpr_at_tpr(unseen: np.ndarray, score: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of seen samples flagged as unseen when ``tpr`` of unseen are flagged; lower is better.

    A sample is flagged iff ``score >= t``, with ``t`` the largest threshold
    that flags at least ``tpr`` of the unseen samples. Seen samples tied
    with ``t`` are counted as flagged (pessimistic).

    Parameters
    ----------
    unseen : (N,) bool array, True = unseen (positive class).
    score : (N,) float array, higher = more likely unseen.
    tpr : float in (0, 1], target true-positive rate.

    Returns
    -------
    float
        FPR in [0, 1]; NaN if there is no unseen or no seen sample.
    """
    unseen = _as_mask(unseen)
    score = _as_scores("score", score, unseen.shape[0])
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    if not _both_present(unseen):
        return math.nan
    pos = np.sort(score[unseen])[::-1]
    # round() guards against e.g. 0.95 * 20 landing on 19.000000000000004,
    # which would wrongly demand 20 of 20 unseen samples.
    k = max(1, math.ceil(round(tpr * pos.size, 9)))
    threshold = pos[k - 1]
    return float(np.mean(score[~unseen] >= threshold))


# --------------------------------------------------------------------------- #
# closed-set metrics (seen samples only)
# --------------------------------------------------------------------------- #
def closed_set_accuracy(pred: np.ndarray, labels: np.ndarray, unseen: np.ndarray) -> float:
    """Accuracy on seen samples without any rejection (ACC-S); higher is better.

    No ties are involved: ``pred`` is already a hard decision.

    Parameters
    ----------
    pred : (N,) int array of predicted seen-class indices.
    labels : (N,) int array of true labels (ignored for unseen samples).
    unseen : (N,) bool array, True = unseen.

    Returns
    -------
    float
        Accuracy in [0, 1]; NaN if there is no seen sample.
    """
    unseen = _as_mask(unseen)
    pred = _as_1d("pred", pred, unseen.shape[0])
    labels = _as_1d("labels", labels, unseen.shape[0])
    seen = ~unseen
    if not seen.any():
        return math.nan
    return float(np.mean(pred[seen] == labels[seen]))


def per_class_accuracy(
    pred: np.ndarray, labels: np.ndarray, unseen: np.ndarray, num_classes: int
) -> np.ndarray:
    """Recall of each seen class; higher is better.

    No ties are involved: ``pred`` is already a hard decision.

    Parameters
    ----------
    pred : (N,) int array of predicted seen-class indices.
    labels : (N,) int array; must be in ``0..num_classes-1`` for seen samples.
    unseen : (N,) bool array, True = unseen.
    num_classes : int, number of seen classes K.

    Returns
    -------
    np.ndarray
        (K,) float array of recalls; NaN (not 0) for a class with no test
        sample, so absent classes cannot drag averages down.
    """
    unseen = _as_mask(unseen)
    pred = _as_1d("pred", pred, unseen.shape[0])
    labels = _as_1d("labels", labels, unseen.shape[0])
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    seen_labels = labels[~unseen]
    if seen_labels.size and (seen_labels.min() < 0 or seen_labels.max() >= num_classes):
        raise ValueError(f"seen labels must lie in [0, {num_classes - 1}]")
    seen_labels = seen_labels.astype(np.int64)
    correct = (pred[~unseen] == labels[~unseen]).astype(np.float64)
    totals = np.bincount(seen_labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(seen_labels, weights=correct, minlength=num_classes)
    out = np.full(num_classes, np.nan)
    np.divide(hits, totals, out=out, where=totals > 0)
    return out


def mean_class_recall(
    pred: np.ndarray, labels: np.ndarray, unseen: np.ndarray, num_classes: int
) -> float:
    """Mean recall over seen classes that have test samples; higher is better.

    Classes without a test sample are excluded rather than counted as 0.

    Returns
    -------
    float
        Mean class recall in [0, 1]; NaN if no class has a sample.
    """
    acc = per_class_accuracy(pred, labels, unseen, num_classes)
    valid = ~np.isnan(acc)
    return float(acc[valid].mean()) if valid.any() else math.nan


# --------------------------------------------------------------------------- #
# open-set classification metrics
# --------------------------------------------------------------------------- #
def daml_threshold_grid(
    conf: np.ndarray,
    pred: np.ndarray,
    labels: np.ndarray,
    unseen: np.ndarray,
    num_thresholds: int = 10,
) -> dict:
    """Harmonic mean H of known accuracy and unseen recall on a threshold grid (DAML); higher is better.

    Thresholds are ``linspace(conf.min(), conf.max(), num_thresholds)``
    (Noguchi & Shirakawa, 2024). A sample is rejected as unseen iff
    ``conf < t`` strictly, so a sample tied with ``t`` is accepted. Among
    equal H values the first (lowest) threshold is reported as best.

    Parameters
    ----------
    conf : (N,) float array, max seen-class probability.
    pred, labels : (N,) int arrays (labels ignored for unseen samples).
    unseen : (N,) bool array, True = unseen.
    num_thresholds : int >= 1, grid size.

    Returns
    -------
    dict
        ``thresholds``, ``acc_known``, ``recall_unseen``, ``h`` (arrays of
        length ``num_thresholds``) and scalars ``h_best``, ``h_mean``,
        ``best_threshold``, ``acc_known_at_best``, ``recall_unseen_at_best``.
        ``acc_known`` = accepted-and-correct seen / all seen. If seen or
        unseen samples are missing, ``h`` and all scalars are NaN.
    """
    unseen = _as_mask(unseen)
    n = unseen.shape[0]
    conf = _as_scores("conf", conf, n)
    pred = _as_1d("pred", pred, n)
    labels = _as_1d("labels", labels, n)
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")

    thresholds = np.linspace(conf.min(), conf.max(), num_thresholds)
    accepted = conf[None, :] >= thresholds[:, None]  # (T, N)
    seen = ~unseen
    correct = (pred == labels) & seen
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_known = (accepted & correct).sum(1) / seen.sum()
        recall_unseen = (~accepted & unseen).sum(1) / unseen.sum()

    out = {"thresholds": thresholds, "acc_known": acc_known, "recall_unseen": recall_unseen}
    if not _both_present(unseen):
        nan = math.nan
        out.update(h=np.full(num_thresholds, nan), h_best=nan, h_mean=nan,
                   best_threshold=nan, acc_known_at_best=nan, recall_unseen_at_best=nan)
        return out

    denom = acc_known + recall_unseen
    h = np.zeros(num_thresholds)
    np.divide(2 * acc_known * recall_unseen, denom, out=h, where=denom > 0)
    best = int(np.argmax(h))  # argmax returns the first maximum -> lowest threshold
    out.update(
        h=h,
        h_best=float(h[best]),
        h_mean=float(h.mean()),
        best_threshold=float(thresholds[best]),
        acc_known_at_best=float(acc_known[best]),
        recall_unseen_at_best=float(recall_unseen[best]),
    )
    return out


def oscr(conf: np.ndarray, pred: np.ndarray, labels: np.ndarray, unseen: np.ndarray) -> float:
    """Open-Set Classification Rate: area under CCR vs. FPR; higher is better.

    CCR(t) = seen samples with ``pred == label`` and ``conf >= t`` / N_seen,
    FPR(t) = unseen samples with ``conf >= t`` / N_unseen (Dhamija et al.
    2018). ``t`` sweeps from +inf through every *distinct* confidence, so
    tied samples enter together as one (diagonal) trapezoid step and the
    value does not depend on sample order.

    Returns
    -------
    float
        OSCR in [0, acc_s]; NaN if there is no seen or no unseen sample.
    """
    unseen = _as_mask(unseen)
    n = unseen.shape[0]
    conf = _as_scores("conf", conf, n)
    pred = _as_1d("pred", pred, n)
    labels = _as_1d("labels", labels, n)
    if not _both_present(unseen):
        return math.nan

    seen = ~unseen
    levels = np.unique(conf)[::-1]  # distinct values, descending
    correct_conf = np.sort(conf[seen & (pred == labels)])
    unseen_conf = np.sort(conf[unseen])
    # count of values >= t for each level, via sorted arrays
    ccr = (correct_conf.size - np.searchsorted(correct_conf, levels, side="left")) / seen.sum()
    fpr = (unseen_conf.size - np.searchsorted(unseen_conf, levels, side="left")) / unseen.sum()
    x = np.concatenate(([0.0], fpr))
    y = np.concatenate(([0.0], ccr))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


# --------------------------------------------------------------------------- #
# the registry: what every evaluation reports
# --------------------------------------------------------------------------- #
@dataclass
class OpenSetOutputs:
    """One evaluation's per-sample outputs (see the module docstring for the arrays), with what the
    metrics derive from them computed once: ``conf`` (the knownness when given, else MSP), ``pred``,
    the unseen ``score`` (``1 - conf``), the DAML threshold grid and the per-class recalls."""

    probs: np.ndarray
    labels: np.ndarray
    unseen: np.ndarray
    num_thresholds: int = 10
    knownness: np.ndarray | None = None

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"probs must be 2-D (N, K), got shape {probs.shape}")
        n, k = probs.shape
        if n < 1 or k < 1:
            raise ValueError(f"probs must have at least one sample and one class, got shape {probs.shape}")
        if not np.isfinite(probs).all():
            raise ValueError("probs contains NaN or inf")
        self.probs = probs
        self.unseen = _as_mask(self.unseen, n)
        self.labels = _as_1d("labels", self.labels, n)
        if self.knownness is not None:
            self.knownness = _as_scores("knownness", self.knownness, n)

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]

    @cached_property
    def conf(self) -> np.ndarray:
        """How likely each sample is seen: the method's knownness, or MSP without one."""
        return self.probs.max(1) if self.knownness is None else self.knownness

    @cached_property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(1)

    @cached_property
    def score(self) -> np.ndarray:
        """The unseen score: higher = more likely unseen."""
        return 1.0 - self.conf

    @cached_property
    def daml(self) -> dict:
        return daml_threshold_grid(self.conf, self.pred, self.labels, self.unseen, self.num_thresholds)

    @cached_property
    def per_class(self) -> np.ndarray:
        return per_class_accuracy(self.pred, self.labels, self.unseen, self.num_classes)


MetricFn = Callable[[OpenSetOutputs], float]
_REGISTERED: dict[str, MetricFn] = {}


def register_metric(name: str, description: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator adding ``fn(outputs: OpenSetOutputs) -> float`` (a fraction in [0, 1], NaN where
    undefined) to every evaluation as ``name``; ``description`` says in one line what it is and which way
    is better (the results table prints it). Names are unique; ``acc_<class>`` is taken by the per-class
    recalls."""
    def add(fn: MetricFn) -> MetricFn:
        if name in _REGISTERED:
            raise KeyError(f"a metric named '{name}' is already registered")
        _REGISTERED[name] = fn
        METRIC_DESCRIPTIONS[name] = description
        return fn
    return add


@register_metric("auc_u", "AUROC of unseen-vs-seen detection with the unseen score (1 - max prob, or the "
                         "method's own; %), higher is better")
def _auc_u(o: OpenSetOutputs) -> float:
    return auroc_unseen(o.unseen, o.score)


@register_metric("acc_s", "closed-set accuracy on seen samples, no rejection (ACC-S, %), higher is better")
def _acc_s(o: OpenSetOutputs) -> float:
    return closed_set_accuracy(o.pred, o.labels, o.unseen)


@register_metric("mcr", "mean class recall over seen classes that have test samples (%), higher is better")
def _mcr(o: OpenSetOutputs) -> float:
    return mean_class_recall(o.pred, o.labels, o.unseen, o.num_classes)


@register_metric("h_best", "best harmonic mean of known accuracy and unseen recall over the DAML threshold grid "
                           "(%), higher is better")
def _h_best(o: OpenSetOutputs) -> float:
    return o.daml["h_best"]


@register_metric("h_mean", "mean of H over the DAML threshold grid (%), higher is better")
def _h_mean(o: OpenSetOutputs) -> float:
    return o.daml["h_mean"]


@register_metric("acc_s_at_best", "known accuracy (accepted and correct / seen) at the h_best threshold (%), "
                                  "higher is better")
def _acc_s_at_best(o: OpenSetOutputs) -> float:
    return o.daml["acc_known_at_best"]


@register_metric("unseen_recall_at_best", "fraction of unseen samples rejected at the h_best threshold (%), "
                                          "higher is better")
def _unseen_recall_at_best(o: OpenSetOutputs) -> float:
    return o.daml["recall_unseen_at_best"]


@register_metric("fpr95", "fraction of seen samples flagged as unseen at 95% unseen recall (FPR@95, %), "
                          "lower is better")
def _fpr95(o: OpenSetOutputs) -> float:
    return fpr_at_tpr(o.unseen, o.score, 0.95)


@register_metric("aupr_u", "average precision of unseen detection, unseen = positive (%), higher is better")
def _aupr_u(o: OpenSetOutputs) -> float:
    return aupr_unseen(o.unseen, o.score)


@register_metric("oscr", "open-set classification rate: area under correct-classification vs. false-positive "
                         "curve (%), higher is better")
def _oscr(o: OpenSetOutputs) -> float:
    return oscr(o.conf, o.pred, o.labels, o.unseen)


def open_set_metrics(
    probs: np.ndarray, labels: np.ndarray, unseen: np.ndarray, num_thresholds: int = 10,
    knownness: np.ndarray | None = None,
) -> dict[str, float]:
    """All registered open-set metrics of one run, in percent.

    Parameters
    ----------
    probs : (N, K) float array of seen-class probabilities.
    labels : (N,) int array; seen-class index for seen samples.
    unseen : (N,) bool array, True = unseen.
    num_thresholds : int, DAML grid size.
    knownness : optional (N,) float array, the method's own score (higher = more likely seen); MSP
        without it.

    Returns
    -------
    dict[str, float]
        The registered metrics in registration order (built in: ``auc_u, acc_s, mcr, h_best, h_mean,
        acc_s_at_best, unseen_recall_at_best, fpr95, aupr_u, oscr``), then ``acc_class_<k>`` for k in
        0..K-1 (see :data:`METRIC_DESCRIPTIONS`); values are plain floats x100, NaN where undefined.
    """
    outputs = OpenSetOutputs(probs, labels, unseen, num_thresholds, knownness)
    out = {name: fn(outputs) for name, fn in _REGISTERED.items()}
    out.update({f"acc_class_{c}": outputs.per_class[c] for c in range(outputs.num_classes)})
    return {key: float(val) * 100.0 for key, val in out.items()}
