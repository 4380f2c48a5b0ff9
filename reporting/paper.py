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

The paper's own figures (every cell of its Tables 1 to 5) are in ``reporting/paper_results.csv``, whose
header comment says where each comes from; :func:`read_paper_results` reads them and
:func:`reported_values` keys those of the comparison tables (1, 2 and 5) by what they measure, for the
``(paper ..., diff)`` beside a reproduced cell (``scripts/results.py --paper``).
"""
from __future__ import annotations

import csv
import os
from typing import Iterable, Mapping, NamedTuple, Sequence

from datasets.classes import CANONICAL_CLASSES, SHORT_NAMES

PAPER_TARGETS = ("rafdb", "ferplus", "affectnet", "oulu")
# Lower-cased trainer names: these first (in this order), PromptEmo last
FIRST_METHODS = ("baseline", "coop", "neno", "osfer", "duml", "lacmfer", "lacmferclip", "zsclip")
LAST_METHODS = ("promptemo",)
# Lower-cased trainer name -> the paper's name of the method, where the two differ
METHOD_NAMES = {"osfer": "OS-FER", "lacmfer": "LA-CMFER", "lacmferclip": "LA-CMFER + CLIP"}
# The paper's Table 5 ("Incorporating CLIP backbone on FERPlus"): its trainers and target
TABLE5_METHODS = ("CoOp", "LACMFER", "LACMFERCLIP", "PromptEmo")
TABLE5_TARGET = "ferplus"
PAPER_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.csv")
PAPER_RESULTS_FIELDS = ("table", "metric", "target", "unseen", "method", "value")
# The tables whose rows are methods (Tables 3 and 4 are ablations of PromptEmo)
COMPARISON_TABLES = ("1", "2", "5")
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


class PaperValue(NamedTuple):
    """One figure of the paper: ``unseen`` is a canonical class name or ``avg`` (the mean over the 7
    single unseen classes), ``method`` the row as the paper names it."""
    table: str
    metric: str
    target: str
    unseen: str
    method: str
    value: float


def read_paper_results(path: str = PAPER_RESULTS) -> list[PaperValue]:
    """Every figure of ``path`` (default: ``reporting/paper_results.csv``), in file order; lines starting
    with ``#`` are comments. Raises ``ValueError`` naming ``file:line`` for a line that is not a figure
    (wrong header, field count, unseen class or value), so a bad copy shows where it is."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = [(i, ln) for i, ln in enumerate(f, start=1) if ln.strip() and not ln.startswith("#")]
    parsed = list(zip((i for i, _ in lines), csv.reader(ln for _, ln in lines)))
    if not parsed or tuple(parsed[0][1]) != PAPER_RESULTS_FIELDS:
        where = f"{path}:{parsed[0][0]}" if parsed else path
        raise ValueError(f"{where}: expected the header {','.join(PAPER_RESULTS_FIELDS)}")
    values = []
    for lineno, row in parsed[1:]:
        if len(row) != len(PAPER_RESULTS_FIELDS):
            raise ValueError(f"{path}:{lineno}: {len(row)} fields, expected {len(PAPER_RESULTS_FIELDS)}")
        table, metric, target, unseen, method, value = row
        if unseen != "avg" and unseen not in CANONICAL_CLASSES:
            raise ValueError(f"{path}:{lineno}: unseen {unseen!r} is neither a canonical class nor avg")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: value {value!r} is not a number") from None
        values.append(PaperValue(table, metric, target, unseen, method, number))
    return values


def reported_values(values: Iterable[PaperValue], tables: Sequence[str] = COMPARISON_TABLES
                    ) -> dict[tuple[str, str, str, str], float]:
    """``{(metric, target, unseen, method): value}`` over the figures of ``tables``, the methods under the
    paper's names. Keyed by what a figure measures rather than by its table, so that a reproduced cell
    finds the paper's figure wherever the paper reports it (FERPlus's ACC-S average is only in Table 5,
    beside Table 1's AUC-U averages again). Tables 3 and 4 are left out by default: their rows are
    configurations of PromptEmo, and their ``Baseline`` is not Table 1's. A figure reported twice with
    two values raises ``ValueError``."""
    out: dict[tuple[str, str, str, str], float] = {}
    for v in values:
        if v.table not in tables:
            continue
        key = (v.metric, v.target, v.unseen, v.method)
        if key in out and out[key] != v.value:
            raise ValueError(f"the paper reports {key} twice: {out[key]} and {v.value} (table {v.table})")
        out[key] = v.value
    return out


def paper_value(reported: Mapping[tuple[str, str, str, str], float], metric: str, target: str,
                unseen: tuple[str, ...] | None, trainer: str) -> float | None:
    """The paper's figure for a reproduced cell, or None: ``unseen`` None is the average over the 7
    single classes (``avg``), a one-class tuple that class; a multi-class or empty unseen set is in no
    table of the paper. ``trainer`` is looked up under the paper's name (:func:`method_name`)."""
    if unseen is None:
        key = "avg"
    elif len(unseen) == 1:
        key = unseen[0]
    else:
        return None
    return reported.get((metric, target, key, method_name(trainer)))
