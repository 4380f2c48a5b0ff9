"""Results tables from run records: cells (mean ± std over seeds, with the markers of missing runs) and
the three table shapes, one row per method: per unseen class (the paper's Tables 1 and 2), per metric
of one target and unseen set (a summary), and per metric averaged over the 7 unseen classes (the paper's
Table 5). The rules are in :mod:`reporting`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from datasets.classes import CANONICAL_CLASSES
from reporting.paper import column_label, method_name, metric_title, order_methods, paper_value
from reporting.records import RunRecord, unseen_key, unseen_sets_of

MISSING = "—"


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


def format_paper(cell: Cell, paper: float | None, decimals: int = 2) -> str:
    """`` (paper 70.66, -6.54)``: the paper's figure and the reproduced mean minus it; `` (paper 70.66)``
    where nothing was reproduced (no mean); empty where the paper has no figure. The difference is that
    of the two numbers as printed (the rounded mean minus the paper's), so that it adds up on the page."""
    if paper is None:
        return ""
    if cell.n == 0:
        return f" (paper {paper:.{decimals}f})"
    diff = round(round(cell.mean, decimals) - paper, decimals)
    if diff == 0:
        diff = 0.0  # not -0.00
    return f" (paper {paper:.{decimals}f}, {diff:+.{decimals}f})"


def aggregate(records: Iterable[RunRecord], metric: str, seeds: Sequence[int]) -> dict[tuple, Cell]:
    """``{group: Cell}`` for every group (trainer, target, unseen, source_domains, backbone)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    return {g: make_cell(runs, metric, seeds) for g, runs in groups.items()}


@dataclass
class Table:
    """``cells[i][j]`` is the cell of ``rows[i]`` and ``columns[j]``. ``rows[i]`` is the label shown (the
    paper's method name, with the setting when a method has several), ``row_methods[i]`` the trainer name
    of its runs. ``column_metrics[j]`` is the metric of column j, ``column_unseen[j]`` its unseen set
    (None for an average over the 7 single classes: Avg, Table 5). ``paper[i][j]``, once
    :func:`with_paper` has set it, is the paper's figure for that cell (None where it has none)."""
    title: str
    target: str
    rows: list[str]
    columns: list[str]
    cells: list[list[Cell]]
    column_metrics: list[str]
    column_unseen: list[tuple[str, ...] | None]
    row_methods: list[str]
    row_header: str = "Method"
    paper: list[list[float | None]] | None = None

    def texts(self) -> list[list[str]]:
        """The cells as shown: :func:`format_cell`, then :func:`format_paper` when the paper's figures are set."""
        if self.paper is None:
            return [[c.text for c in row] for row in self.cells]
        return [[c.text + format_paper(c, p) for c, p in zip(row, prow)] for row, prow in zip(self.cells, self.paper)]

    def cell(self, row: str, column: str) -> Cell:
        return self.cells[self.rows.index(row)][self.columns.index(column)]


def _rows(records: Sequence[RunRecord]) -> list[tuple[str, str, tuple]]:
    """``[(label, trainer, setting)]`` in row order; the label is the paper's name of the method, and a
    method with several settings (backbone, source domains) gets one row per setting, labelled with
    what differs."""
    settings: dict[str, set] = {}
    for r in records:
        settings.setdefault(r.trainer, set()).add(r.setting)
    rows = []
    for trainer in order_methods(settings):
        found = sorted(settings[trainer], key=lambda s: (s[1], s[0]))
        name = method_name(trainer)
        if len(found) == 1:
            rows.append((name, trainer, found[0]))
            continue
        vary_backbone = len({s[1] for s in found}) > 1
        vary_sources = len({s[0] for s in found}) > 1
        for sources, backbone in found:
            parts = ([backbone] if vary_backbone else []) + \
                    ([f"from {'+'.join(sources) or '?'}"] if vary_sources else [])
            rows.append((f"{name} [{', '.join(parts)}]", trainer, (sources, backbone)))
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


def _unseen_cells(agg: dict[tuple, Cell], trainer: str, target: str, unseen_sets: Sequence[tuple[str, ...]],
                  setting: tuple[tuple[str, ...], str], seeds: Sequence[int]) -> list[Cell]:
    """The cells of one row for ``unseen_sets``, an empty cell (``—``) where the group never ran."""
    sources, backbone = setting
    cells = [agg.get((trainer, target, u, sources, backbone)) for u in unseen_sets]
    return [c if c is not None else Cell(values={}, expected=len(seeds), has_run=False) for c in cells]


def build_class_table(records: Sequence[RunRecord], metric: str, target: str, seeds: Sequence[int],
                      title: str | None = None) -> Table:
    """Rows = methods, columns = the 7 unseen classes + multi-class sets found + Avg, for ``metric``
    on ``target`` (paper Table 1 with ``auc_u``, Table 2 with ``acc_s``)."""
    recs = [r for r in records if r.target == target and r.seed in set(seeds)]
    singles = [(c,) for c in CANONICAL_CLASSES]
    extra = [u for u in unseen_sets_of(recs) if u not in singles]
    unseen_cols = singles + extra
    agg = aggregate(recs, metric, seeds)
    rows, trainers, cells = [], [], []
    for label, trainer, setting in _rows(recs):
        row = _unseen_cells(agg, trainer, target, unseen_cols, setting, seeds)
        row.append(_avg_cell(row[:len(singles)], seeds))
        rows.append(label)
        trainers.append(trainer)
        cells.append(row)
    if title is None:
        note = "; ".join(p for p in (_seeds_note(seeds), _setting_note(recs)) if p)
        title = f"{metric_title(metric)} (%) on {target} per unseen class ({note})"
    return Table(title=title, target=target, rows=rows, columns=[column_label(u) for u in unseen_cols] + ["Avg"],
                 cells=cells, column_metrics=[metric] * (len(unseen_cols) + 1),
                 column_unseen=list(unseen_cols) + [None], row_methods=trainers)


def build_summary_table(records: Sequence[RunRecord], target: str, unseen: Sequence[str],
                        metrics: Sequence[str], seeds: Sequence[int], title: str | None = None) -> Table:
    """Rows = methods, columns = ``metrics``, for one (target, unseen set) pair."""
    u = unseen_key(unseen)
    recs = [r for r in records if r.target == target and r.unseen == u and r.seed in set(seeds)]
    aggs = {m: aggregate(recs, m, seeds) for m in metrics}
    rows, trainers, cells = [], [], []
    for label, trainer, (sources, backbone) in _rows(recs):
        g = (trainer, target, u, sources, backbone)
        rows.append(label)
        trainers.append(trainer)
        cells.append([aggs[m][g] for m in metrics])
    if title is None:
        names = ", ".join(u) or "none"
        note = "; ".join(p for p in (_seeds_note(seeds), _setting_note(recs)) if p)
        title = f"Results on {target}, unseen: {names} ({note})"
    return Table(title=title, target=target, rows=rows, columns=[metric_title(m) for m in metrics], cells=cells,
                 column_metrics=list(metrics), column_unseen=[u] * len(metrics), row_methods=trainers)


def build_average_table(records: Sequence[RunRecord], target: str, metrics: Sequence[str], seeds: Sequence[int],
                        methods: Sequence[str] | None = None, title: str | None = None) -> Table:
    """Rows = methods, columns = ``metrics``, each cell the average over the 7 single unseen classes on
    ``target``: the Avg column of the class table of that metric, with its rule and markers (per seed the
    mean of the 7 classes, then mean ± std over seeds; ``— (k/7)`` unless all 7 are complete). ``methods``
    (trainer or paper names, any case; None: all) keeps those rows. The paper's Table 5 is
    ``metrics=("auc_u", "acc_s")``, ``target="ferplus"``, ``methods=TABLE5_METHODS``."""
    recs = [r for r in records if r.target == target and r.seed in set(seeds)]
    if methods is not None:
        wanted = {m.lower() for m in methods}
        recs = [r for r in recs if r.trainer.lower() in wanted or method_name(r.trainer).lower() in wanted]
    singles = [(c,) for c in CANONICAL_CLASSES]
    aggs = {m: aggregate(recs, m, seeds) for m in metrics}
    rows, trainers, cells = [], [], []
    for label, trainer, setting in _rows(recs):
        rows.append(label)
        trainers.append(trainer)
        cells.append([_avg_cell(_unseen_cells(aggs[m], trainer, target, singles, setting, seeds), seeds)
                      for m in metrics])
    if title is None:
        note = "; ".join(p for p in (_seeds_note(seeds), _setting_note(recs)) if p)
        title = (f"{' and '.join(metric_title(m) for m in metrics)} (%) on {target}, average over the "
                 f"{len(singles)} unseen classes ({note})")
    return Table(title=title, target=target, rows=rows, columns=[metric_title(m) for m in metrics], cells=cells,
                 column_metrics=list(metrics), column_unseen=[None] * len(metrics), row_methods=trainers)


def with_paper(table: Table, reported: Mapping[tuple[str, str, str, str], float]) -> Table:
    """A copy of ``table`` with the paper's figure of each cell (:func:`reporting.paper.paper_value` of its
    metric, target, unseen class or average, and row's method), shown beside the cell as
    ``(paper 70.66, -6.54)`` and in the CSV's ``paper`` and ``diff`` columns. Every row of a method gets
    its figure, whatever the row's backbone or sources (the row label and title say which they are)."""
    paper = [[paper_value(reported, metric, table.target, unseen, trainer)
              for metric, unseen in zip(table.column_metrics, table.column_unseen)] for trainer in table.row_methods]
    title = f"{table.title} [(paper P, D): the paper's figure P, D = reproduced minus paper]"
    return dataclasses.replace(table, paper=paper, title=title)
