"""Print the paper's results tables from the ``results.json`` files under a folder.

    python scripts/results.py output/mofer                          # Table 1 (AUC-U) + Table 2 (ACC-S)
    python scripts/results.py output/mofer --targets rafdb --table2-target rafdb --format markdown
    python scripts/results.py output/mofer --metric h_best --seeds 1 2 3 --methods PromptEmo CoOp
    python scripts/results.py output/demo --summary --metrics auc_u acc_s h_best oscr

Default output: Table 1 (``--metric``, default auc_u; rows = methods, columns = the 7 unseen classes
+ Avg; one table per target) then Table 2 (acc_s, for ``--table2-target`` or every target).
``--summary`` prints instead one table per (target, unseen set) found: rows = methods, columns =
``--metrics``. Runs are identified by their JSON content, not their path. Missing seeds, missing
classes and null metrics are marked, never averaged away; expected seeds are ``--seeds`` or the
union of seeds found in the folder. All the rules: ``reporting/__init__.py``.

Warnings (skipped files, unknown targets...) go to stderr as ``warning: ...``. Exit code 2 with one
line ``error: ...`` if the folder does not exist or holds no usable results.json.
"""
from __future__ import annotations

import argparse
import os
import sys

import reporting as T

DEFAULT_SUMMARY_METRICS = ["auc_u", "acc_s", "h_best", "oscr"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Results tables (mean ± std over seeds) from results.json files.")
    p.add_argument("folder", help="folder searched recursively for results.json")
    p.add_argument("--metric", default="auc_u", help="metric of Table 1 (default: auc_u)")
    p.add_argument("--targets", nargs="+", metavar="DOMAIN", help="target domains to show (default: all found)")
    p.add_argument("--table2-target", metavar="DOMAIN",
                   help="target of Table 2 (acc_s per unseen class); default: every target")
    p.add_argument("--summary", action="store_true",
                   help="print one table per (target, unseen set): rows = methods, columns = --metrics")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_SUMMARY_METRICS, metavar="METRIC",
                   help=f"metrics of --summary (default: {' '.join(DEFAULT_SUMMARY_METRICS)})")
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

    used_metrics = args.metrics if args.summary else [args.metric, "acc_s"]
    known = {m for r in records for m in r.metrics}
    for m in dict.fromkeys(used_metrics):
        if m not in known:
            _warn(f"metric '{m}' is in no results.json (known: {', '.join(sorted(known))})")

    tables = []
    if args.summary:
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
    print(T.render_tables(tables, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
