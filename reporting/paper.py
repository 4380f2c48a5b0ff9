"""The paper's table layout: which targets and methods come first, how columns and metrics are titled.

Rows follow the paper's method order (:data:`FIRST_METHODS`, then any other trainer alphabetically, then
:data:`LAST_METHODS`); targets its dataset order (:data:`PAPER_TARGETS`, then the others alphabetically);
class columns its short names (``Fea.``, from :data:`datasets.classes.SHORT_NAMES`).
"""
from __future__ import annotations

from typing import Iterable

from datasets.classes import SHORT_NAMES

PAPER_TARGETS = ("rafdb", "ferplus", "affectnet", "oulu")
# Lower-cased trainer names: these first (in this order), PromptEmo last
FIRST_METHODS = ("baseline", "coop", "zsclip")
LAST_METHODS = ("promptemo",)
METRIC_TITLES = {"auc_u": "AUC-U", "acc_s": "ACC-S", "mcr": "MCR", "h_best": "H-best", "h_mean": "H-mean",
                 "fpr95": "FPR@95", "aupr_u": "AUPR-U", "oscr": "OSCR", "acc_s_at_best": "ACC-S@best",
                 "unseen_recall_at_best": "unseen recall@best"}


def order_targets(targets: Iterable[str]) -> list[str]:
    """The paper's targets first (rafdb, ferplus, affectnet, oulu), then the others alphabetically."""
    def key(t):
        return (PAPER_TARGETS.index(t), "") if t in PAPER_TARGETS else (len(PAPER_TARGETS), t)
    return sorted(set(targets), key=key)


def order_methods(names: Iterable[str]) -> list[str]:
    """Baseline, CoOp, ZSCLIP first, then the others alphabetically, PromptEmo last."""
    def key(name):
        low = name.lower()
        if low in FIRST_METHODS:
            return (0, FIRST_METHODS.index(low), "")
        if low in LAST_METHODS:
            return (2, LAST_METHODS.index(low), "")
        return (1, 0, low)
    return sorted(set(names), key=key)


def column_label(unseen: tuple[str, ...]) -> str:
    """``Fea.`` for one class, ``Sur.+Fea.`` for several, ``none`` for a closed-set run."""
    if not unseen:
        return "none"
    return "+".join(SHORT_NAMES.get(c, c) for c in unseen)


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)
