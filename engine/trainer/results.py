"""What a finished evaluation leaves behind: the results table on the console and in ``log.txt``,
``results.json`` (the machine-readable record every results table is built from) and, with
``TEST.SAVE_PREDICTIONS``, ``predictions.npz``."""
from __future__ import annotations

import logging
import math
import os.path as osp
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from engine.data.datasets import SplitInfo
from engine.evaluation import METRIC_DESCRIPTIONS, MSP
from engine.utils.errors import UserError
from engine.utils.tools import mkdir_if_missing, write_json

logger = logging.getLogger(__name__)


def results_record(cfg, split: SplitInfo, metrics: dict[str, float], epochs_trained: int,
                   num_test_images: int, unseen_score: str = MSP) -> dict[str, Any]:
    """The content of ``results.json`` (metrics in percent; ``unseen_score`` names the score the open-set
    metrics ranked: ``"msp"`` or the method's own)."""
    return {
        "trainer": cfg.TRAINER.NAME,
        "source_domains": list(split.source_domains),
        "target_domain": split.target_domains[0] if split.target_domains else None,
        "unseen_classes": list(split.unseen_classes),
        "seed": cfg.SEED,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "dataset": cfg.DATASET.NAME,
        "epochs_trained": epochs_trained,
        "num_test_images": num_test_images,
        "unseen_score": unseen_score,
        "metrics": dict(metrics),
    }


def results_table(metrics: dict[str, float]) -> str:
    """Each metric with its value and what it means (:data:`engine.evaluation.METRIC_DESCRIPTIONS`)."""
    rows = []
    for key, value in metrics.items():
        desc = METRIC_DESCRIPTIONS.get(key, "")
        if not desc and key.startswith("acc_"):  # acc_<class>: the recall of one seen class
            desc = f"recall of seen class {key[4:]} (%), higher is better"
        rows.append([key, "n/a" if math.isnan(value) else f"{value:.2f}", desc])
    return tabulate(rows, headers=["metric", "value", "meaning"], tablefmt="simple")


def report_results(output_dir: str, record: dict[str, Any],
                   predictions: tuple[np.ndarray, ...] | None = None,
                   classnames: Sequence[str] = ()) -> str:
    """Log the results table, write ``results.json`` (and ``predictions.npz`` when ``predictions``, the
    evaluator's ``(probs, labels, unseen[, knownness])``, are given); returns the path of ``results.json``."""
    metrics = record["metrics"]
    logger.info("Results (%s -> %s, unseen: %s)\n%s", ", ".join(record["source_domains"]),
                record["target_domain"] or "", ", ".join(record["unseen_classes"]) or "none", results_table(metrics))
    path = osp.join(output_dir, "results.json")
    try:
        mkdir_if_missing(output_dir)
        write_json(record, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    if predictions is not None:
        probs, labels, unseen = predictions[:3]
        extra = {"knownness": predictions[3]} if len(predictions) > 3 else {}
        np.savez(osp.join(output_dir, "predictions.npz"), probs=probs, labels=labels, unseen=unseen,
                 classnames=np.array(list(classnames)), **extra)
    logger.info("* auc_u: %.2f", metrics.get("auc_u", float("nan")))
    logger.info("* acc_s: %.2f", metrics.get("acc_s", float("nan")))
    logger.info("* results: %s", path)
    return path
