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


def _num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _csv_rows(table: Table) -> list[list[str]]:
    out = []
    for label, trainer, row in zip(table.rows, table.row_methods, table.cells):
        for j, cell in enumerate(row):
            u = table.column_unseen[j]
            out.append([table.title, table.target, "" if u is None else "+".join(u) or "none", label, trainer,
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
