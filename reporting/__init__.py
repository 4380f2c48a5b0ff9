"""Results tables of the MO-FER protocol, built from the ``results.json`` files of finished runs.

Pure functions, no command line (that is ``scripts/results.py``): :mod:`reporting.records` reads the
runs, :mod:`reporting.tables` aggregates them into tables, :mod:`reporting.render` writes them out,
:mod:`reporting.paper` holds the paper's layout (target and method order, names, titles) and reads its
figures (``reporting/paper_results.csv``)::

    records = collect_results("output/mofer")                 # every readable results.json below
    seeds = expected_seeds(records)                           # or the seeds the protocol asked for
    t1 = build_class_table(records, "auc_u", "rafdb", seeds)   # paper Table 1 (one target)
    t2 = build_class_table(records, "acc_s", "rafdb", seeds)   # paper Table 2
    t5 = build_average_table(records, TABLE5_TARGET, ["auc_u", "acc_s"], seeds, TABLE5_METHODS)  # Table 5
    s = build_summary_table(records, "rafdb", ("fear",), ["auc_u", "acc_s", "h_best", "oscr"], seeds)
    print(render_tables([t1, t2, t5, s], "markdown"))         # plain | markdown | csv | latex

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
* **Rows.** One row per method, in the paper's order (:mod:`reporting.paper`): Baseline, CoOp, NENO,
  OS-FER, DUML, LA-CMFER (Table 1's order), LA-CMFER + CLIP and ZSCLIP (not in Table 1), then any
  other trainer alphabetically, PromptEmo last. A row shows the paper's name of the method
  (:func:`method_name`: trainer ``OSFER`` is ``OS-FER``, ``LACMFER`` ``LA-CMFER``, ``LACMFERCLIP``
  ``LA-CMFER + CLIP``) in every format; the CSV's ``trainer`` column and ``--methods`` keep the trainer
  name of ``results.json`` (``--methods`` also takes the paper's name). If, within one table, a method
  was run with several backbones or source-domain sets, each setting is its own row labelled with what
  differs, e.g. ``PromptEmo [tiny]`` / ``PromptEmo [ViT-B/32]`` or ``OS-FER [from a+b+c]`` (both parts
  when both differ). A method with a single setting keeps its plain name.
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
  Table 5's cells (:func:`build_average_table`: one column per metric) are such Avg cells.
* **Formats.** ``plain`` (tabulate "simple"), ``markdown`` (tabulate "github"), ``latex`` (tabulate
  "latex_booktabs", ``±`` written ``$\\pm$`` and ``—`` as ``--``, title as a ``%`` comment), and
  ``csv``: long format, one line per cell with unformatted numbers (``repr`` precision), columns
  :data:`CSV_FIELDS`; several tables share one header.
* **The paper's figures** (:func:`with_paper`, ``--paper``): beside each cell the paper reports, its
  figure and the reproduced mean minus it, ``64.12 ± 1.03 (paper 70.66, -6.54)`` (the difference of
  the two printed numbers), ``— (paper 70.66)`` where nothing was reproduced; in CSV the columns
  :data:`CSV_PAPER_FIELDS` (``paper``, ``diff`` = mean - paper, unrounded). The figures are those of
  Tables 1, 2 and 5 (``reporting/paper_results.csv``), found by metric, target, unseen class (or
  ``avg`` for Avg and Table 5's columns) and the paper's method name, for every row of that method
  whatever its backbone or sources; multi-class unseen sets, other metrics and methods the paper does
  not have (ZSCLIP, any other trainer) get none. Tables 3 and 4 (ablations of PromptEmo) are in the
  file but matched to no run.
"""
from reporting.paper import (COMPARISON_TABLES, FIRST_METHODS, LAST_METHODS, METHOD_NAMES, METRIC_TITLES,
                             PAPER_RESULTS, PAPER_RESULTS_FIELDS, PAPER_TARGETS, TABLE5_METHODS, TABLE5_TARGET,
                             PaperValue, column_label, method_name, metric_title, order_methods, order_targets,
                             paper_value, read_paper_results, reported_values)
from reporting.records import (ResultsWarning, RunRecord, collect_results, expected_seeds, filter_records,
                               read_result, targets_of, unseen_key, unseen_sets_of)
from reporting.render import CSV_FIELDS, CSV_PAPER_FIELDS, FORMATS, render_table, render_tables
from reporting.tables import (MISSING, Cell, Table, aggregate, build_average_table, build_class_table,
                              build_summary_table, format_cell, format_paper, make_cell, with_paper)

__all__ = [
    "RunRecord", "Cell", "Table", "PaperValue", "ResultsWarning", "CSV_FIELDS", "CSV_PAPER_FIELDS", "FORMATS",
    "METRIC_TITLES",
    "PAPER_TARGETS", "FIRST_METHODS", "LAST_METHODS", "METHOD_NAMES", "TABLE5_METHODS", "TABLE5_TARGET",
    "PAPER_RESULTS", "PAPER_RESULTS_FIELDS", "COMPARISON_TABLES", "MISSING", "read_result", "collect_results",
    "expected_seeds", "filter_records", "targets_of", "unseen_key", "unseen_sets_of", "order_methods",
    "order_targets", "method_name", "column_label", "aggregate", "make_cell", "format_cell", "build_class_table",
    "build_summary_table", "build_average_table", "metric_title", "render_table", "render_tables",
    "read_paper_results", "reported_values", "paper_value", "with_paper", "format_paper",
]
