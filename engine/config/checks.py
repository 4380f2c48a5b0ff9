"""The allowed range of every numeric config key, in one table, checked where a config is finalised.

``VALUE_RULES`` maps a dotted key to its :class:`Bounds`. :func:`check_config_values` checks a config
against the table (``engine.cli`` before freezing; ``SimpleTrainer`` again when a trainer is built from
Python or by Dassl's ``build_trainer``) and raises a :class:`UserError` naming the first bad key, the
range and the value: ``OPTIM.MAX_EPOCH must be an integer >= 0, got -2``. Every numeric leaf of the
config, in the table or not (a method's weights...), must also be finite: ``nan`` and ``inf`` are refused.

Packages above the engine add the ranges of the keys they declare with :func:`register_value_rules`,
next to their config hook; a rule whose key is absent from a config (a reader that is not loaded) is
skipped. Code that reads a few keys outside a full run (a transform built on its own) checks just those
with ``check_config_values(cfg, keys)``, against the same table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from yacs.config import CfgNode

from engine.utils.errors import UserError

__all__ = ["Bounds", "VALUE_RULES", "register_value_rules", "check_config_values"]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Bounds:
    """The values a numeric key accepts; for a list-valued key, each element (and the list's length and order).

    ``low``/``high``: inclusive bounds unless ``low_open``/``high_open``; None = unbounded. ``integer``
    only words the message (yacs already keeps an integer key an integer). ``length``: a list-valued key
    must have exactly that many elements; ``ordered``: a ``(low, high)`` pair with low <= high.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    length: int | None = None
    ordered: bool = False

    def admits(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return False
        return True

    def range_text(self) -> str:
        """``>= 0``, ``> 0``, ``in [0, 1]``, ``in (0, 1]``..."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "any number"

    def describe(self) -> str:
        if self.ordered:
            return f"(low, high) with each {self.range_text()} and low <= high"
        kind = "an integer " if self.integer else ""
        if self.length is not None:
            return f"{self.length} values, each {kind.strip() + ' ' if kind else ''}{self.range_text()}"
        return f"{kind}{self.range_text()}"

    def violated_by(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            if self.length is not None and len(value) != self.length:
                return True
            if self.ordered and len(value) == 2 and not float(value[0]) <= float(value[1]):
                return True
            return any(not self.admits(float(v)) for v in value)
        return not self.admits(float(value))


def _int(low: float | None = None, high: float | None = None) -> Bounds:
    return Bounds(low, high, integer=True)


_FRACTION = Bounds(0, 1)
_NON_NEGATIVE = Bounds(low=0)
_POSITIVE = Bounds(low=0, low_open=True)

# The engine's keys. Where Dassl gives a value a meaning (0 or -1 = "all", <= 0 = "only the last"), the
# range admits it; keys whose every integer has a meaning (SEED, CHECKPOINT_FREQ, WARMUP_EPOCH) are absent.
VALUE_RULES: dict[str, Bounds] = {
    "OUTPUT_LOCK_STALE_S": _POSITIVE,
    "INPUT.SIZE": Bounds(low=1, integer=True, length=2),
    "INPUT.PIXEL_STD": Bounds(low=0, low_open=True, length=3),
    "INPUT.PIXEL_MEAN": Bounds(length=3),
    "INPUT.CROP_PADDING": _int(0),
    "INPUT.RRCROP_SCALE": Bounds(0, 1, low_open=True, length=2, ordered=True),
    "INPUT.GN_STD": _NON_NEGATIVE,
    "INPUT.GN_P": _FRACTION,
    "INPUT.FLIP_OR_NOISE_P": _FRACTION,
    "INPUT.COLORJITTER_B": _NON_NEGATIVE,
    "INPUT.COLORJITTER_C": _NON_NEGATIVE,
    "INPUT.COLORJITTER_S": _NON_NEGATIVE,
    "INPUT.COLORJITTER_H": Bounds(0, 0.5),
    "INPUT.RGS_P": _FRACTION,
    "INPUT.AFFINE_DEGREES": _NON_NEGATIVE,
    "INPUT.AFFINE_TRANSLATE": Bounds(0, 1, length=2),
    "INPUT.AFFINE_SCALE": Bounds(low=0, low_open=True, length=2, ordered=True),
    "INPUT.RE_P": _FRACTION,
    "INPUT.RE_SCALE": Bounds(0, 1, length=2, ordered=True),
    "INPUT.GB_P": _FRACTION,
    "INPUT.GB_K": _int(1),
    "DATALOADER.NUM_WORKERS": _int(0),
    "DATALOADER.K_TRANSFORMS": _int(1),
    "DATALOADER.TRAIN_X.BATCH_SIZE": _int(1),
    "DATALOADER.TRAIN_X.N_DOMAIN": _int(-1),  # 0 or -1: every domain
    "DATALOADER.TRAIN_X.N_INS": _int(1),
    "DATALOADER.TRAIN_U.BATCH_SIZE": _int(1),
    "DATALOADER.TRAIN_U.N_DOMAIN": _int(-1),
    "DATALOADER.TRAIN_U.N_INS": _int(1),
    "DATALOADER.TEST.BATCH_SIZE": _int(1),
    "DATALOADER.CACHE.SIZE": _int(0),  # 0: max(INPUT.SIZE)
    "DATALOADER.CACHE.NUM_WORKERS": _int(-1),  # -1: DATALOADER.NUM_WORKERS
    "MODEL.BACKBONE.WIDTH": _int(1),
    "MODEL.HEAD.DROPOUT": Bounds(0, 1, high_open=True),
    "OPTIM.LR": _NON_NEGATIVE,
    "OPTIM.WEIGHT_DECAY": _NON_NEGATIVE,
    "OPTIM.MOMENTUM": _NON_NEGATIVE,
    "OPTIM.SGD_DAMPNING": _NON_NEGATIVE,
    "OPTIM.ADAM_BETA1": Bounds(0, 1, high_open=True),
    "OPTIM.ADAM_BETA2": Bounds(0, 1, high_open=True),
    "OPTIM.INVERSE_DECAY.GAMMA": _NON_NEGATIVE,
    "OPTIM.INVERSE_DECAY.POWER": _NON_NEGATIVE,
    "OPTIM.INVERSE_DECAY.MAX_ITER": _int(1),
    "OPTIM.STEPSIZE": _int(-1),  # -1 or 0: MAX_EPOCH
    "OPTIM.GAMMA": _NON_NEGATIVE,
    "OPTIM.MAX_EPOCH": _int(0),  # 0: evaluate the model as built (zero-shot CLIP)
    "OPTIM.WARMUP_CONS_LR": _NON_NEGATIVE,
    "OPTIM.WARMUP_MIN_LR": _NON_NEGATIVE,
    "TRAIN.CHECKPOINT_STEPS": _int(0),
    "TRAIN.PRINT_FREQ": _int(1),
    "TEST.NUM_THRESHOLDS": _int(1),
}


def register_value_rules(rules: Mapping[str, Bounds]) -> None:
    """Add the ranges of keys a package declares (its config hook's keys); a key already in the table with
    other bounds is a programming error."""
    for key, bounds in rules.items():
        if VALUE_RULES.get(key, bounds) != bounds:
            raise ValueError(f"config key {key} already has the range {VALUE_RULES[key]}")
        VALUE_RULES[key] = bounds


def _leaves(cfg: CfgNode, prefix: str = ""):
    for k, v in cfg.items():
        if isinstance(v, CfgNode):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _shown(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else str(value)


def check_config_values(cfg: CfgNode, keys: Iterable[str] | None = None) -> None:
    """A :class:`UserError` naming the first key of ``cfg`` (of ``keys``, default all) outside its range in
    :data:`VALUE_RULES`, or any numeric value that is not finite."""
    wanted = None if keys is None else set(keys)
    for key, value in _leaves(cfg):
        if wanted is not None and key not in wanted:
            continue
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if not all(_is_number(v) for v in numbers) or not numbers:
            continue
        if not all(math.isfinite(v) for v in numbers):
            raise UserError(f"{key} must be a finite number, got {_shown(value)}")
        bounds = VALUE_RULES.get(key)
        if bounds is not None and bounds.violated_by(value):
            raise UserError(f"{key} must be {bounds.describe()}, got {_shown(value)}")
