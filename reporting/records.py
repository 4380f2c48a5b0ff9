"""Finished runs as records: every readable ``results.json`` under a folder, identified by its content
(see :mod:`reporting` for the rules)."""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from datasets.classes import CANONICAL_CLASSES, canonical_name
from reporting.paper import method_name, order_targets


class ResultsWarning(UserWarning):
    """A results.json that was skipped (unreadable, incomplete or a duplicate)."""


# --------------------------------------------------------------------------- #
# records
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class RunRecord:
    """One finished run. ``unseen`` is in canonical order, ``source_domains`` sorted; ``metrics``
    maps names to floats, NaN where the file has null or a non-number."""
    path: str
    trainer: str
    target: str
    unseen: tuple[str, ...]
    seed: int
    source_domains: tuple[str, ...] = ()
    backbone: str = "?"
    metrics: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def setting(self) -> tuple[tuple[str, ...], str]:
        return self.source_domains, self.backbone

    @property
    def group(self) -> tuple:
        """(trainer, target, unseen, source_domains, backbone): what may be averaged over seeds."""
        return self.trainer, self.target, self.unseen, self.source_domains, self.backbone

    def value(self, metric: str) -> float:
        return self.metrics.get(metric, math.nan)


def unseen_key(names: Iterable[str]) -> tuple[str, ...]:
    """Unseen class names canonicalised (``happy`` -> ``happiness``), without repeats, in canonical order."""
    canon = []
    for name in names:
        c = canonical_name(str(name)) or str(name).strip().lower()
        if c not in canon:
            canon.append(c)
    order = {c: i for i, c in enumerate(CANONICAL_CLASSES)}
    return tuple(sorted(canon, key=lambda c: (order.get(c, len(order)), c)))


def _to_float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    v = float(v)
    return v if math.isfinite(v) else math.nan


def read_result(path: str) -> RunRecord:
    """Parse one results.json; raises ``ValueError`` (with the reason) if it is not a usable run."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read: {e}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("trainer", "target_domain", "seed", "metrics") if data.get(k) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(data["metrics"], dict):
        raise ValueError("'metrics' is not an object")
    try:
        seed = int(data["seed"])
    except (TypeError, ValueError):
        raise ValueError(f"seed {data['seed']!r} is not an integer") from None
    unseen = data.get("unseen_classes") or []
    if isinstance(unseen, str):
        unseen = [unseen]
    sources = data.get("source_domains") or []
    if isinstance(sources, str):
        sources = [sources]
    return RunRecord(path=path, trainer=str(data["trainer"]), target=str(data["target_domain"]),
                     unseen=unseen_key(unseen), seed=seed, source_domains=tuple(sorted(map(str, sources))),
                     backbone=str(data.get("backbone") or "?"),
                     metrics={str(k): _to_float(v) for k, v in data["metrics"].items()})


def _default_on_skip(path: str, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}", ResultsWarning, stacklevel=3)


def collect_results(folder: str, on_skip: Callable[[str, str], None] | None = None) -> list[RunRecord]:
    """Every readable ``results.json`` under ``folder`` (recursively, sorted path order).

    Unreadable/incomplete files and duplicates (same group and seed as an earlier file) are skipped
    and reported through ``on_skip(path, reason)`` (default: a :class:`ResultsWarning`). Raises
    ``FileNotFoundError`` if ``folder`` is not a directory.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder '{folder}' does not exist")
    on_skip = on_skip or _default_on_skip
    records: list[RunRecord] = []
    seen: dict[tuple, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if "results.json" not in filenames:
            continue
        path = os.path.join(dirpath, "results.json")
        try:
            rec = read_result(path)
        except ValueError as e:
            on_skip(path, str(e))
            continue
        key = (*rec.group, rec.seed)
        if key in seen:
            on_skip(path, f"duplicate of {seen[key]} (same method, target, unseen classes, sources, "
                          f"backbone and seed); kept the first")
            continue
        seen[key] = path
        records.append(rec)
    return records


def expected_seeds(records: Iterable[RunRecord]) -> tuple[int, ...]:
    """The union of the seeds found (sorted)."""
    return tuple(sorted({r.seed for r in records}))


def filter_records(records: Iterable[RunRecord], *, targets: Sequence[str] | None = None,
                   methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[RunRecord]:
    """Keep runs of the given targets / methods / seeds; None keeps all. Targets and methods are
    case-insensitive; a method is a trainer name or the paper's name of it (``OSFER`` or ``OS-FER``)."""
    t = None if targets is None else {x.lower() for x in targets}
    m = None if methods is None else {x.lower() for x in methods}
    s = None if seeds is None else set(seeds)
    return [r for r in records if (t is None or r.target.lower() in t)
            and (m is None or r.trainer.lower() in m or method_name(r.trainer).lower() in m)
            and (s is None or r.seed in s)]


def targets_of(records: Iterable[RunRecord]) -> list[str]:
    return order_targets(r.target for r in records)


def _unseen_order(unseen: tuple[str, ...]):
    order = {c: i for i, c in enumerate(CANONICAL_CLASSES)}
    return (len(unseen) != 1, len(unseen) == 0, [order.get(c, len(order)) for c in unseen], unseen)


def unseen_sets_of(records: Iterable[RunRecord], target: str | None = None) -> list[tuple[str, ...]]:
    """Unseen sets found (for ``target`` if given): single classes in canonical order, then the
    multi-class sets, then the empty set."""
    return sorted({r.unseen for r in records if target is None or r.target == target}, key=_unseen_order)
