"""Evaluators (Dassl's ``EVALUATOR_REGISTRY``). ``OpenSet`` computes every metric of
``engine.evaluation.metrics`` from per-sample seen-class probabilities and, for a method that decides
"unseen" with its own score, a per-sample knownness (:class:`OpenSetPrediction`).

Label convention of open-set test sets: seen samples carry their seen-class index ``0..K-1``;
samples of unseen classes carry any label ``>= K`` (MOFER uses ``K``).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from engine.evaluation.metrics import open_set_metrics
from engine.registry import Registry
from engine.utils import distributed
from engine.utils.errors import UserError

EVALUATOR_REGISTRY = Registry("EVALUATOR")
logger = logging.getLogger(__name__)

MSP = "msp"  # the unseen score of a method without its own: the maximum softmax probability


class OpenSetPrediction(NamedTuple):
    """What ``model_inference`` returns for a method with its own unseen score: the seen-class
    probabilities ``(N, K)`` (they give the prediction) and the knownness ``(N,)`` (higher = more likely a
    seen class), which the open-set metrics rank and threshold instead of the MSP."""

    probs: torch.Tensor
    knownness: torch.Tensor


def split_prediction(output: torch.Tensor | OpenSetPrediction) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(probs, knownness or None)`` of what ``model_inference`` returned."""
    if isinstance(output, OpenSetPrediction):
        return output.probs, output.knownness
    return output, None


class EvaluatorBase:
    """``reset()``, then ``process(output, label)`` per batch, then ``evaluate()``."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> "OrderedDict[str, float]":
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class OpenSet(EvaluatorBase):
    """Open-set metrics of one run (one target, one set of unseen classes), in percent.

    ``process`` takes seen-class *probabilities* (rows summing to one) and labels, optionally an
    explicit unseen mask (default: ``label >= K``) and the method's knownness (every batch or none;
    :attr:`score_kind` says which the metrics used: ``"own"`` or ``"msp"``). ``evaluate`` returns ``auc_u`` first (the value
    ``test()`` reports, as Dassl returns the first metric), then ``acc_s``, the rest, and the recall of
    each seen class as ``acc_<classname>``.
    """

    def __init__(self, cfg, lab2cname: dict[int, str] | None = None, **kwargs) -> None:
        super().__init__(cfg)
        self.lab2cname = lab2cname or {}
        self.num_thresholds = cfg.TEST.NUM_THRESHOLDS
        self.reset()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._unseen: list[np.ndarray] = []
        self._knownness: list[np.ndarray] = []

    def process(self, mo: torch.Tensor, gt: torch.Tensor, unseen: torch.Tensor | None = None,
                knownness: torch.Tensor | None = None) -> None:
        probs = mo.detach().float().cpu().numpy()
        labels = gt.detach().cpu().numpy().astype(np.int64)
        if unseen is None:
            unseen_np = labels >= probs.shape[1]
        else:
            unseen_np = unseen.detach().cpu().numpy().astype(bool)
        self._probs.append(probs)
        self._labels.append(labels)
        self._unseen.append(unseen_np)
        if knownness is not None:
            self._knownness.append(knownness.detach().float().reshape(-1).cpu().numpy())

    @property
    def score_kind(self) -> str:
        """``"own"`` when the processed batches came with the method's knownness, else ``"msp"``."""
        return "own" if self._knownness else MSP

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The accumulated ``(probs, labels, unseen)`` of the last :meth:`evaluate` (all ranks), with the
        knownness as a fourth array when the method gave one."""
        return self._gathered

    def _gather(self) -> tuple[np.ndarray, ...]:
        if self._knownness and len(self._knownness) != len(self._probs):
            raise ValueError(f"model_inference gave a knownness for {len(self._knownness)} of {len(self._probs)} "
                             "batches: give it for every batch or none")
        # Under torchrun each rank saw a share of the test set: metrics need all of it.
        parts = [self._probs, self._labels, self._unseen] + ([self._knownness] if self._knownness else [])
        local = tuple(np.concatenate(p) for p in parts)
        if distributed.world_size() == 1:
            return local
        return tuple(distributed.all_gather_cat(torch.from_numpy(a)).numpy() for a in local)

    def evaluate(self) -> "OrderedDict[str, float]":
        self._gathered = self._gather()
        probs, labels, unseen = self._gathered[:3]
        knownness = self._gathered[3] if len(self._gathered) > 3 else None
        raw = open_set_metrics(probs, labels, unseen, self.num_thresholds, knownness)
        results: OrderedDict[str, float] = OrderedDict()
        for key, value in raw.items():
            if key.startswith("acc_class_"):
                k = int(key[len("acc_class_"):])
                key = f"acc_{self.lab2cname.get(k, k)}"
            results[key] = value
        return results


def build_evaluator(cfg, **kwargs) -> EvaluatorBase:
    if cfg.TEST.EVALUATOR == "Classification" and "Classification" not in EVALUATOR_REGISTRY:
        # Dassl's default: a config built by Dassl reaches here without this project's dataset yaml
        raise UserError("TEST.EVALUATOR is 'Classification' (Dassl's default); this project's trainers report "
                        "open-set metrics: set TEST.EVALUATOR OpenSet (configs/datasets/*.yaml do)")
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR)(cfg, **kwargs)
