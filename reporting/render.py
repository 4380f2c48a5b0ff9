"""Results tables as text: plain, markdown, CSV (long format, unformatted numbers) or LaTeX."""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

from tabulate import tabulate

from reporting.tables import MISSING, Table

FORMATS = ("plain", "markdown", "csv", "latex")
CSV_FIELDS = ("table", "target", "unseen", "row", "trainer", "column", "metric", "mean", "std", "n", "expected",
              "n_nan", "display")
# Appended to CSV_FIELDS when the tables carry the paper's figures (reporting.tables.with_paper):
# the paper's figure and mean minus it, empty where either is missing
CSV_PAPER_FIELDS = ("paper", "diff")


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _csv_rows(table: Table, paper_columns: bool) -> list[list[str]]:
    out = []
    for i, (label, trainer, row) in enumerate(zip(table.rows, table.row_methods, table.cells)):
        for j, cell in enumerate(row):
            u = table.column_unseen[j]
            line = [table.title, table.target, "" if u is None else "+".join(u) or "none", label, trainer,
                    table.columns[j], table.column_metrics[j], _num(cell.mean), _num(cell.std), str(cell.n),
                    str(cell.expected), str(cell.n_nan), cell.text]
            if paper_columns:
                p = None if table.paper is None else table.paper[i][j]
                line += ["", ""] if p is None else [_num(p), _num(cell.mean - p)]
            out.append(line)
    return out


def _latex(text: str) -> str:
    return text.replace("±", r"$\pm$").replace(MISSING, "--")


def render_table(table: Table, fmt: str = "plain", csv_header: bool = True, paper_columns: bool | None = None) -> str:
    """One table as text in ``fmt`` (see :data:`FORMATS`); the title comes first (as a ``%``
    comment in LaTeX, not at all in CSV where it is the ``table`` column). Where the table carries the
    paper's figures, each cell shows ``(paper P, D)`` after it; in CSV they are the columns
    :data:`CSV_PAPER_FIELDS` instead (``paper_columns``: whether to write them, default: whether the
    table has the figures)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if paper_columns is None:
            paper_columns = table.paper is not None
        if csv_header:
            w.writerow(CSV_FIELDS + (CSV_PAPER_FIELDS if paper_columns else ()))
        w.writerows(_csv_rows(table, paper_columns))
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
    """Several tables: separated by a blank line, or, in CSV, one header then all cells (with the paper
    columns if any table has the paper's figures)."""
    if fmt == "csv":
        paper = any(t.paper is not None for t in tables)
        parts = [render_table(t, "csv", csv_header=(i == 0), paper_columns=paper) for i, t in enumerate(tables)]
        return "\n".join(p for p in parts if p)
    return "\n\n".join(render_table(t, fmt) for t in tables)
