"""Results tables of the MO-FER protocol, built from the ``results.json`` files of finished runs.

Pure functions, no command line (that is ``scripts/results.py``)::

    records = collect_results("output/mofer")                 # every readable results.json below
    seeds = expected_seeds(records)                           # or the seeds the protocol asked for
    t1 = build_class_table(records, "auc_u", "rafdb", seeds)   # paper Table 1 (one target)
    t2 = build_class_table(records, "acc_s", "rafdb", seeds)   # paper Table 2
    s = build_summary_table(records, "rafdb", ("fear",), ["auc_u", "acc_s", "h_best", "oscr"], seeds)
    print(render_tables([t1, t2, s], "markdown"))             # plain | markdown | csv | latex

Decisions (the rules the tables follow)
---------------------------------------
* **What a run is.** The JSON content decides, never the path: ``trainer``, ``target_domain``,
  ``unseen_classes``, ``seed``, ``source_domains``, ``backbone`` and ``metrics``. Unseen class names
  are canonicalised (``happy`` -> ``happiness``) and sorted in the canonical order; source domains
  are sorted (the same set in another order is the same setting). A file that cannot be read or
  lacks ``trainer``/``target_domain``/``seed``/``metrics`` is skipped with a warning (``on_skip``).
* **Groups.** Runs are averaged only within a group (trainer, target, unseen set, source domains,
  backbone). Two files of the same group *and* seed are a duplicate: the first in sorted path
  order is kept, the other skipped with a warning (never averaged in).
* **Rows.** One row per method, in the paper's order: Baseline, CoOp, ZSCLIP, then any other trainer
  alphabetically, PromptEmo last. If, within one table, a method was run with several backbones or
  source-domain sets, each setting is its own row labelled with what differs, e.g.
  ``PromptEmo [tiny]`` / ``PromptEmo [ViT-B/32]`` or ``PromptEmo [from a+b+c]`` (both parts when both
  differ). A method with a single setting keeps its plain name.
* **Columns** (class tables): the 7 single unseen classes in canonical order (always shown, ``—``
  where nothing ran), then one column per multi-class unseen set found for that target, named by
  joining the short names with ``+`` (``Sur.+Fea.``), in canonical order; a run with no unseen class
  gets a column ``none``; then ``Avg``.
* **Cells.** mean ± sample std (ddof=1) over the expected seeds that have a finite value, 2 decimals:
  ``70.66 ± 1.23``. With a single value the std is undefined and omitted (``70.66``; empty in CSV).
  Expected seeds are the ``seeds`` argument (the CLI's ``--seeds``, else the union of seeds found
  anywhere in the folder); runs with other seeds are ignored. A metric that is null/NaN, infinite
  or absent in a run counts as missing for that seed.
  Markers: ``—`` no run at all; ``70.66 ± 1.23 (2/3)`` fewer values than expected seeds;
  ``(2/3, 1 NaN)`` when some of the missing values come from runs whose metric is null;
  ``n/a (0/3, 3 NaN)`` runs exist but none has a value.
* **Avg** is over the 7 single classes only (not the multi-class columns), and only when all 7
  cells are complete (every expected seed has a value for every class): per seed the mean of the 7
  classes, then mean ± std over seeds. Otherwise it shows ``— (k/7)``, k = complete class cells.
* **Formats.** ``plain`` (tabulate "simple"), ``markdown`` (tabulate "github"), ``latex`` (tabulate
  "latex_booktabs", ``±`` written ``$\\pm$`` and ``—`` as ``--``, title as a ``%`` comment), and
  ``csv``: long format, one line per cell with unformatted numbers (``repr`` precision), columns
  :data:`CSV_FIELDS`; several tables share one header.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from tabulate import tabulate

from datasets.classes import CANONICAL_CLASSES, SHORT_NAMES, canonical_name

__all__ = [
    "RunRecord", "Cell", "Table", "ResultsWarning", "CSV_FIELDS", "FORMATS", "METRIC_TITLES", "PAPER_TARGETS",
    "read_result", "collect_results", "expected_seeds", "filter_records", "targets_of", "unseen_sets_of",
    "order_methods", "order_targets", "column_label", "aggregate", "make_cell", "format_cell",
    "build_class_table", "build_summary_table", "metric_title", "render_table", "render_tables", "MISSING",
]

FORMATS = ("plain", "markdown", "csv", "latex")
PAPER_TARGETS = ("rafdb", "ferplus", "affectnet", "oulu")
METRIC_TITLES = {"auc_u": "AUC-U", "acc_s": "ACC-S", "mcr": "MCR", "h_best": "H-best", "h_mean": "H-mean",
                 "fpr95": "FPR@95", "aupr_u": "AUPR-U", "oscr": "OSCR", "acc_s_at_best": "ACC-S@best",
                 "unseen_recall_at_best": "unseen recall@best"}
CSV_FIELDS = ("table", "target", "unseen", "row", "column", "metric", "mean", "std", "n", "expected", "n_nan",
              "display")
_FIRST_METHODS = ("baseline", "coop", "zsclip")
_LAST_METHODS = ("promptemo",)
MISSING = "—"


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


def _unseen_key(names: Iterable[str]) -> tuple[str, ...]:
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
                     unseen=_unseen_key(unseen), seed=seed, source_domains=tuple(sorted(map(str, sources))),
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
    """Keep runs of the given targets / methods (case-insensitive) / seeds; None keeps all."""
    t = None if targets is None else {x.lower() for x in targets}
    m = None if methods is None else {x.lower() for x in methods}
    s = None if seeds is None else set(seeds)
    return [r for r in records if (t is None or r.target.lower() in t) and (m is None or r.trainer.lower() in m)
            and (s is None or r.seed in s)]


def order_targets(targets: Iterable[str]) -> list[str]:
    """The paper's targets first (rafdb, ferplus, affectnet, oulu), then the others alphabetically."""
    def key(t):
        return (PAPER_TARGETS.index(t), "") if t in PAPER_TARGETS else (len(PAPER_TARGETS), t)
    return sorted(set(targets), key=key)


def targets_of(records: Iterable[RunRecord]) -> list[str]:
    return order_targets(r.target for r in records)


def _unseen_order(unseen: tuple[str, ...]):
    order = {c: i for i, c in enumerate(CANONICAL_CLASSES)}
    return (len(unseen) != 1, len(unseen) == 0, [order.get(c, len(order)) for c in unseen], unseen)


def unseen_sets_of(records: Iterable[RunRecord], target: str | None = None) -> list[tuple[str, ...]]:
    """Unseen sets found (for ``target`` if given): single classes in canonical order, then the
    multi-class sets, then the empty set."""
    return sorted({r.unseen for r in records if target is None or r.target == target}, key=_unseen_order)


def order_methods(names: Iterable[str]) -> list[str]:
    """Baseline, CoOp, ZSCLIP first, then the others alphabetically, PromptEmo last."""
    def key(name):
        low = name.lower()
        if low in _FIRST_METHODS:
            return (0, _FIRST_METHODS.index(low), "")
        if low in _LAST_METHODS:
            return (2, _LAST_METHODS.index(low), "")
        return (1, 0, low)
    return sorted(set(names), key=key)


def column_label(unseen: tuple[str, ...]) -> str:
    """``Fea.`` for one class, ``Sur.+Fea.`` for several, ``none`` for a closed-set run."""
    if not unseen:
        return "none"
    return "+".join(SHORT_NAMES.get(c, c) for c in unseen)


# --------------------------------------------------------------------------- #
# cells
# --------------------------------------------------------------------------- #
@dataclass
class Cell:
    """The aggregate of one metric over the expected seeds of one group (or the Avg column).

    ``values`` maps each expected seed with a finite value to it; ``n_nan`` counts expected seeds
    whose run exists but has no finite value; ``has_run`` says whether any run exists at all;
    ``expected`` is the number of expected seeds (for Avg: 7 classes, see ``avg_complete``)."""
    values: dict[int, float]
    expected: int
    n_nan: int = 0
    has_run: bool = True
    avg_complete: int | None = None  # Avg cells only: number of complete class cells (of 7)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values.values()) / self.n if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample std (ddof=1); NaN with fewer than two values."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values.values()) / (self.n - 1))

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.n == self.expected

    @property
    def text(self) -> str:
        return format_cell(self)


def make_cell(runs: Iterable[RunRecord], metric: str, seeds: Sequence[int]) -> Cell:
    """Aggregate ``metric`` over the runs of one group, counting only the expected ``seeds``."""
    wanted = set(seeds)
    by_seed = {r.seed: r for r in runs if r.seed in wanted}
    values, n_nan = {}, 0
    for s in sorted(by_seed):
        v = by_seed[s].value(metric)
        if math.isnan(v):
            n_nan += 1
        else:
            values[s] = v
    return Cell(values=values, expected=len(seeds), n_nan=n_nan, has_run=bool(by_seed))


def _avg_cell(class_cells: Sequence[Cell], seeds: Sequence[int]) -> Cell:
    complete = sum(c.complete for c in class_cells)
    if complete < len(class_cells) or not seeds:
        return Cell(values={}, expected=len(seeds), has_run=False, avg_complete=complete)
    per_seed = {s: math.fsum(c.values[s] for c in class_cells) / len(class_cells) for s in seeds}
    return Cell(values=per_seed, expected=len(seeds), avg_complete=complete)


def format_cell(cell: Cell, decimals: int = 2) -> str:
    """``70.66 ± 1.23``, with the markers described in the module docstring."""
    if cell.avg_complete is not None and cell.n == 0:
        return f"{MISSING} ({cell.avg_complete}/{len(CANONICAL_CLASSES)})"
    if cell.n == 0:
        if not cell.has_run:
            return MISSING
        return f"n/a ({cell.n}/{cell.expected}, {cell.n_nan} NaN)"
    text = f"{cell.mean:.{decimals}f}"
    if cell.n >= 2:
        text += f" ± {cell.std:.{decimals}f}"
    if cell.n < cell.expected:
        text += f" ({cell.n}/{cell.expected}" + (f", {cell.n_nan} NaN)" if cell.n_nan else ")")
    return text


def aggregate(records: Iterable[RunRecord], metric: str, seeds: Sequence[int]) -> dict[tuple, Cell]:
    """``{group: Cell}`` for every group (trainer, target, unseen, source_domains, backbone)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    return {g: make_cell(runs, metric, seeds) for g, runs in groups.items()}


# --------------------------------------------------------------------------- #
# tables
# --------------------------------------------------------------------------- #
@dataclass
class Table:
    """``cells[i][j]`` is the cell of ``rows[i]`` and ``columns[j]``. ``column_metrics[j]`` is the
    metric of column j, ``column_unseen[j]`` its unseen set (None for Avg / mixed)."""
    title: str
    target: str
    rows: list[str]
    columns: list[str]
    cells: list[list[Cell]]
    column_metrics: list[str]
    column_unseen: list[tuple[str, ...] | None]
    row_header: str = "Method"

    def texts(self) -> list[list[str]]:
        return [[c.text for c in row] for row in self.cells]

    def cell(self, row: str, column: str) -> Cell:
        return self.cells[self.rows.index(row)][self.columns.index(column)]


def _rows(records: Sequence[RunRecord]) -> list[tuple[str, str, tuple]]:
    """``[(label, trainer, setting)]`` in row order; a method with several settings (backbone,
    source domains) gets one row per setting, labelled with what differs."""
    settings: dict[str, set] = {}
    for r in records:
        settings.setdefault(r.trainer, set()).add(r.setting)
    rows = []
    for trainer in order_methods(settings):
        found = sorted(settings[trainer], key=lambda s: (s[1], s[0]))
        if len(found) == 1:
            rows.append((trainer, trainer, found[0]))
            continue
        vary_backbone = len({s[1] for s in found}) > 1
        vary_sources = len({s[0] for s in found}) > 1
        for sources, backbone in found:
            parts = ([backbone] if vary_backbone else []) + \
                    ([f"from {'+'.join(sources) or '?'}"] if vary_sources else [])
            rows.append((f"{trainer} [{', '.join(parts)}]", trainer, (sources, backbone)))
    return rows


def _setting_note(records: Sequence[RunRecord]) -> str:
    sources = {r.source_domains for r in records}
    backbones = {r.backbone for r in records}
    parts = []
    if len(sources) == 1:
        parts.append("sources: " + (", ".join(next(iter(sources))) or "?"))
    if len(backbones) == 1:
        parts.append("backbone: " + next(iter(backbones)))
    return "; ".join(parts)


def _seeds_note(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"mean ± std over seeds {', '.join(map(str, seeds)) or 'none'}"


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def build_class_table(records: Sequence[RunRecord], metric: str, target: str, seeds: Sequence[int],
                      title: str | None = None) -> Table:
    """Rows = methods, columns = the 7 unseen classes + multi-class sets found + Avg, for ``metric``
    on ``target`` (paper Table 1 with ``auc_u``, Table 2 with ``acc_s``)."""
    recs = [r for r in records if r.target == target and r.seed in set(seeds)]
    singles = [(c,) for c in CANONICAL_CLASSES]
    extra = [u for u in unseen_sets_of(recs) if u not in singles]
    unseen_cols = singles + extra
    agg = aggregate(recs, metric, seeds)
    rows, cells = [], []
    for label, trainer, (sources, backbone) in _rows(recs):
        row = []
        for u in unseen_cols:
            c = agg.get((trainer, target, u, sources, backbone))
            row.append(c if c is not None else Cell(values={}, expected=len(seeds), has_run=False))
        row.append(_avg_cell(row[:len(singles)], seeds))
        rows.append(label)
        cells.append(row)
    if title is None:
        note = "; ".join(p for p in (_seeds_note(seeds), _setting_note(recs)) if p)
        title = f"{metric_title(metric)} (%) on {target} per unseen class ({note})"
    return Table(title=title, target=target, rows=rows, columns=[column_label(u) for u in unseen_cols] + ["Avg"],
                 cells=cells, column_metrics=[metric] * (len(unseen_cols) + 1),
                 column_unseen=list(unseen_cols) + [None])


def build_summary_table(records: Sequence[RunRecord], target: str, unseen: Sequence[str],
                        metrics: Sequence[str], seeds: Sequence[int], title: str | None = None) -> Table:
    """Rows = methods, columns = ``metrics``, for one (target, unseen set) pair."""
    u = _unseen_key(unseen)
    recs = [r for r in records if r.target == target and r.unseen == u and r.seed in set(seeds)]
    aggs = {m: aggregate(recs, m, seeds) for m in metrics}
    rows, cells = [], []
    for label, trainer, (sources, backbone) in _rows(recs):
        g = (trainer, target, u, sources, backbone)
        rows.append(label)
        cells.append([aggs[m][g] for m in metrics])
    if title is None:
        names = ", ".join(u) or "none"
        note = "; ".join(p for p in (_seeds_note(seeds), _setting_note(recs)) if p)
        title = f"Results on {target}, unseen: {names} ({note})"
    return Table(title=title, target=target, rows=rows, columns=[metric_title(m) for m in metrics], cells=cells,
                 column_metrics=list(metrics), column_unseen=[u] * len(metrics))


# --------------------------------------------------------------------------- #
# rendering
# --------------------------------------------------------------------------- #
def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _csv_rows(table: Table) -> list[list[str]]:
    out = []
    for label, row in zip(table.rows, table.cells):
        for j, cell in enumerate(row):
            u = table.column_unseen[j]
            out.append([table.title, table.target, "" if u is None else "+".join(u) or "none", label,
                        table.columns[j], table.column_metrics[j], _num(cell.mean), _num(cell.std), str(cell.n),
                        str(cell.expected), str(cell.n_nan), cell.text])
    return out


def _latex(text: str) -> str:
    return text.replace("±", r"$\pm$").replace(MISSING, "--")


def render_table(table: Table, fmt: str = "plain", csv_header: bool = True) -> str:
    """One table as text in ``fmt`` (see :data:`FORMATS`); the title comes first (as a ``%``
    comment in LaTeX, not at all in CSV where it is the ``table`` column)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if csv_header:
            w.writerow(CSV_FIELDS)
        w.writerows(_csv_rows(table))
        return buf.getvalue().rstrip("\n")
    headers = [table.row_header] + table.columns
    body = [[label] + texts for label, texts in zip(table.rows, table.texts())]
    if fmt == "latex":
        # tabulate escapes LaTeX specials in the cells (``_``, ``&``, ``%``...); ``±`` and ``—`` pass
        # through untouched and are replaced afterwards
        text = tabulate(body, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)
        return f"% {table.title}\n" + _latex(text)
    tablefmt = "github" if fmt == "markdown" else "simple"
    text = tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)
    title = f"**{table.title}**" if fmt == "markdown" else table.title
    return f"{title}\n\n{text}"


def render_tables(tables: Sequence[Table], fmt: str = "plain") -> str:
    """Several tables: separated by a blank line, or, in CSV, one header then all cells."""
    if fmt == "csv":
        parts = [render_table(t, "csv", csv_header=(i == 0)) for i, t in enumerate(tables)]
        return "\n".join(p for p in parts if p)
    return "\n\n".join(render_table(t, fmt) for t in tables)
