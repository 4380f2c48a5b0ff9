"""The paper's table layout: which targets and methods come first, what the methods are called, how
columns and metrics are titled.

Rows follow the paper's method order (:data:`FIRST_METHODS`, then any other trainer alphabetically, then
:data:`LAST_METHODS`): the order of its Table 1 (Baseline, CoOp, NENO, OS-FER, DUML, LA-CMFER; Table 2
has four of them in the same order), then the two methods Table 1 does not have: LA-CMFER + CLIP right
after LA-CMFER (it is LA-CMFER with a CLIP text encoder added, compared with it in Table 5) and ZSCLIP
(zero-shot CLIP, a reference run of this project that no table of the paper reports); PromptEmo last.
The same order gives Table 5's rows (CoOp, LA-CMFER, LA-CMFER + CLIP, PromptEmo) as the paper prints them.

A row shows the paper's name of its method (:func:`method_name`: trainer ``OSFER`` is ``OS-FER``); what
a run is stays its trainer name as ``results.json`` has it. Targets follow the dataset order of
:data:`PAPER_TARGETS`, then the others alphabetically; class columns the paper's short names (``Fea.``,
from :data:`datasets.classes.SHORT_NAMES`).
"""
from __future__ import annotations

from typing import Iterable

from datasets.classes import SHORT_NAMES

PAPER_TARGETS = ("rafdb", "ferplus", "affectnet", "oulu")
# Lower-cased trainer names: these first (in this order), PromptEmo last
FIRST_METHODS = ("baseline", "coop", "neno", "osfer", "duml", "lacmfer", "lacmferclip", "zsclip")
LAST_METHODS = ("promptemo",)
# Lower-cased trainer name -> the paper's name of the method, where the two differ
METHOD_NAMES = {"osfer": "OS-FER", "lacmfer": "LA-CMFER", "lacmferclip": "LA-CMFER + CLIP"}
METRIC_TITLES = {"auc_u": "AUC-U", "acc_s": "ACC-S", "mcr": "MCR", "h_best": "H-best", "h_mean": "H-mean",
                 "fpr95": "FPR@95", "aupr_u": "AUPR-U", "oscr": "OSCR", "acc_s_at_best": "ACC-S@best",
                 "unseen_recall_at_best": "unseen recall@best"}


def order_targets(targets: Iterable[str]) -> list[str]:
    """The paper's targets first (rafdb, ferplus, affectnet, oulu), then the others alphabetically."""
    def key(t):
        return (PAPER_TARGETS.index(t), "") if t in PAPER_TARGETS else (len(PAPER_TARGETS), t)
    return sorted(set(targets), key=key)


def order_methods(names: Iterable[str]) -> list[str]:
    """Trainer names in row order: Baseline, CoOp, NENO, OSFER, DUML, LACMFER, LACMFERCLIP, ZSCLIP (any
    case), then the others alphabetically, PromptEmo last."""
    def key(name):
        low = name.lower()
        if low in FIRST_METHODS:
            return (0, FIRST_METHODS.index(low), "")
        if low in LAST_METHODS:
            return (2, LAST_METHODS.index(low), "")
        return (1, 0, low)
    return sorted(set(names), key=key)


def method_name(trainer: str) -> str:
    """The name a table shows for ``trainer``: the paper's (``OSFER`` -> ``OS-FER``, ``LACMFERCLIP`` ->
    ``LA-CMFER + CLIP``), else the trainer name itself."""
    return METHOD_NAMES.get(trainer.lower(), trainer)


def column_label(unseen: tuple[str, ...]) -> str:
    """``Fea.`` for one class, ``Sur.+Fea.`` for several, ``none`` for a closed-set run."""
    if not unseen:
        return "none"
    return "+".join(SHORT_NAMES.get(c, c) for c in unseen)


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)
