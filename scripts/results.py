"""Print the paper's results tables from the ``results.json`` files under a folder.

    python scripts/results.py output/mofer                          # Table 1 (AUC-U) + Table 2 (ACC-S)
    python scripts/results.py output/mofer --targets rafdb --table2-target rafdb --format markdown
    python scripts/results.py output/mofer --metric h_best --seeds 1 2 3 --methods PromptEmo CoOp
    python scripts/results.py output/mofer --table5                 # Table 5 (CLIP backbone, FERPlus)
    python scripts/results.py output/mofer --paper                  # beside each cell: the paper's figure
    python scripts/results.py output/demo --summary --metrics auc_u acc_s h_best oscr

Default output: Table 1 (``--metric``, default auc_u; rows = methods, columns = the 7 unseen classes
+ Avg; one table per target) then Table 2 (acc_s, for ``--table2-target`` or every target), then
Table 5 when LA-CMFER + CLIP (trainer LACMFERCLIP, the one method only Table 5 has) ran on its target
and that target is shown: without it Table 5 would only repeat the Avg columns of Tables 1 and 2.
``--table5`` prints Table 5 alone, whichever of its methods ran: rows = CoOp, LA-CMFER, LA-CMFER +
CLIP, PromptEmo, columns = AUC-U and ACC-S, each the average over the 7 unseen classes on
``--table5-target`` (default ferplus; ``--targets`` does not apply), with the Avg column's rule and
markers. ``--summary`` prints instead one table per (target, unseen set) found: rows = methods,
columns = ``--metrics``. Rows are in the paper's order under the paper's method names (OS-FER for
trainer OSFER).

``--paper`` adds, beside each cell the paper's Tables 1, 2 or 5 report, the paper's figure and the
reproduced mean minus it (``64.12 ± 1.03 (paper 70.66, -6.54)``; CSV: columns ``paper`` and ``diff``),
from ``reporting/paper_results.csv``.

Runs are identified by their JSON content, not their path. Missing seeds, missing classes and null
metrics are marked, never averaged away; expected seeds are ``--seeds`` or the union of seeds found
in the folder. All the rules: ``reporting/__init__.py``.

Warnings (skipped files, unknown targets...) go to stderr as ``warning: ...``. Exit code 2 with one
line ``error: ...`` if the folder does not exist or holds no usable results.json.
"""
from __future__ import annotations

import argparse
import os
import sys

import reporting as T

DEFAULT_SUMMARY_METRICS = ["auc_u", "acc_s", "h_best", "oscr"]
TABLE5_METRICS = ["auc_u", "acc_s"]
TABLE5_OWN_METHOD = "LACMFERCLIP"  # the one method only Table 5 has: its runs put Table 5 in the default output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Results tables (mean ± std over seeds) from results.json files.")
    p.add_argument("folder", help="folder searched recursively for results.json")
    p.add_argument("--metric", default="auc_u", help="metric of Table 1 (default: auc_u)")
    p.add_argument("--targets", nargs="+", metavar="DOMAIN", help="target domains to show (default: all found)")
    p.add_argument("--table2-target", metavar="DOMAIN",
                   help="target of Table 2 (acc_s per unseen class); default: every target")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--summary", action="store_true",
                       help="print one table per (target, unseen set): rows = methods, columns = --metrics")
    shape.add_argument("--table5", action="store_true",
                       help="print only Table 5: AUC-U and ACC-S averaged over the 7 unseen classes of "
                            "--table5-target for CoOp, LA-CMFER, LA-CMFER + CLIP and PromptEmo")
    p.add_argument("--table5-target", default=T.TABLE5_TARGET, metavar="DOMAIN",
                   help=f"target of Table 5 (default: {T.TABLE5_TARGET}); the default output adds Table 5 "
                        "when LA-CMFER + CLIP ran there")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_SUMMARY_METRICS, metavar="METRIC",
                   help=f"metrics of --summary (default: {' '.join(DEFAULT_SUMMARY_METRICS)})")
    p.add_argument("--paper", action="store_true",
                   help="beside each cell the paper reports (Tables 1, 2, 5): its figure and reproduced minus "
                        "paper, e.g. '64.12 ± 1.03 (paper 70.66, -6.54)'; CSV: columns paper and diff")
    p.add_argument("--format", choices=T.FORMATS, default="plain", help="output format (default: plain)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="expected seeds (default: every seed found in the folder); other seeds are ignored")
    p.add_argument("--methods", nargs="+", metavar="TRAINER",
                   help="only these trainers, by trainer name or the paper's name (OSFER or OS-FER); default: all")
    return p


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _select_targets(requested, available, what="--targets"):
    if not requested:
        return available
    lookup = {t.lower(): t for t in available}
    chosen = []
    for t in requested:
        if t.lower() in lookup:
            chosen.append(lookup[t.lower()])
        else:
            _warn(f"no results for target '{t}' ({what}); found: {', '.join(available) or 'none'}")
    return chosen


def _default_table5_target(records, targets, requested):
    """The target of Table 5 in the default output: ``requested`` if it is among the targets shown and
    LA-CMFER + CLIP ran there; else None (no Table 5)."""
    for target in targets:
        if target.lower() == requested.lower() and any(
                r.target == target and r.trainer.lower() == TABLE5_OWN_METHOD.lower() for r in records):
            return target
    return None


def _table5(records, target, seeds) -> T.Table:
    table = T.build_average_table(records, target, TABLE5_METRICS, seeds, T.TABLE5_METHODS)
    table.title = f"Table 5: {table.title}"
    return table


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    skipped = []

    def on_skip(path, reason):
        skipped.append(path)
        _warn(f"skipping {path}: {reason}")

    if not os.path.isdir(args.folder):
        return _error(f"folder '{args.folder}' does not exist")
    records = T.collect_results(args.folder, on_skip=on_skip)
    if not records:
        if skipped:
            return _error(f"no readable results.json under '{args.folder}' ({len(skipped)} skipped)")
        return _error(f"no results.json under '{args.folder}'")

    seeds = tuple(sorted(set(args.seeds))) if args.seeds else T.expected_seeds(records)
    records = T.filter_records(records, methods=args.methods, seeds=seeds)
    if args.methods:
        found = {name.lower() for r in records for name in (r.trainer, T.method_name(r.trainer))}
        for m in args.methods:
            if m.lower() not in found:
                _warn(f"no results for method '{m}' (--methods)")
    if not records:
        return _error(f"no results under '{args.folder}' match the --seeds/--methods given")

    all_targets = T.targets_of(records)
    targets = _select_targets(args.targets, all_targets)
    if not targets:
        return _error(f"no results under '{args.folder}' for the targets given (found: {', '.join(all_targets)})")

    used_metrics = args.metrics if args.summary else TABLE5_METRICS if args.table5 else [args.metric, "acc_s"]
    known = {m for r in records for m in r.metrics}
    for m in dict.fromkeys(used_metrics):
        if m not in known:
            _warn(f"metric '{m}' is in no results.json (known: {', '.join(sorted(known))})")

    tables = []
    if args.table5:
        chosen = _select_targets([args.table5_target], all_targets, "--table5-target")
        table = _table5(records, chosen[0], seeds) if chosen else None
        if table is None or not table.rows:
            return _error(f"no runs of Table 5's methods ({', '.join(map(T.method_name, T.TABLE5_METHODS))}) "
                          f"on target '{args.table5_target}' under '{args.folder}'")
        tables.append(table)
    elif args.summary:
        for target in targets:
            for unseen in T.unseen_sets_of(records, target):
                tables.append(T.build_summary_table(records, target, unseen, args.metrics, seeds))
    else:
        for target in targets:
            t = T.build_class_table(records, args.metric, target, seeds)
            t.title = f"Table 1: {t.title}"
            tables.append(t)
        t2_targets = _select_targets([args.table2_target], all_targets, "--table2-target") \
            if args.table2_target else targets
        for target in t2_targets:
            t = T.build_class_table(records, "acc_s", target, seeds)
            t.title = f"Table 2: {t.title}"
            tables.append(t)
        t5_target = _default_table5_target(records, targets, args.table5_target)
        if t5_target is not None:
            tables.append(_table5(records, t5_target, seeds))
    if args.paper:
        try:
            reported = T.reported_values(T.read_paper_results())
        except (OSError, ValueError) as e:
            return _error(f"cannot read the paper's figures: {e}")
        tables = [T.with_paper(t, reported) for t in tables]
    print(T.render_tables(tables, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
