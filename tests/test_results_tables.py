"""Results tables (reporting/) and their CLI (scripts/results.py), from
hand-written results.json files."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import types

import pytest

from conftest import ROOT, load_script
import reporting as T

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
SOURCES = ["ferplus", "affectnet", "oulu"]
SCRIPT = os.path.join(ROOT, "scripts", "results.py")


def write_run(root, trainer, target, unseen, seed, metrics, sources=SOURCES, backbone="ViT-B/32", subdir=None):
    """Write one results.json like the trainer does (NaN -> null); the path is irrelevant to the tool."""
    unseen = [unseen] if isinstance(unseen, str) else list(unseen)
    folder = os.path.join(str(root), subdir or os.path.join(target, "+".join(unseen), trainer, f"seed{seed}"))
    os.makedirs(folder, exist_ok=True)
    record = {"trainer": trainer, "source_domains": list(sources), "target_domain": target,
              "unseen_classes": unseen, "seed": seed, "backbone": backbone, "dataset": "MOFER",
              "epochs_trained": 1, "num_test_images": 10,
              "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(record, f)
    return folder


def full_grid(root, trainer, target="rafdb", seeds=(1, 2, 3), base=60.0):
    """auc_u = base + class index + seed, acc_s = 50 + seed, for every class and seed."""
    for i, c in enumerate(CLASSES):
        for s in seeds:
            write_run(root, trainer, target, c, s, {"auc_u": base + i + s, "acc_s": 50.0 + s, "oscr": 40.0})


def run_cli(*args):
    """The CLI in a fresh process (exit code and stderr exactly as a user sees them)."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def cli(capsys, *args):
    """The CLI in this process (fast: no second torch import); returns (rc, stdout, stderr)."""
    rc = load_script("results").main([str(a) for a in args])
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


# --------------------------------------------------------------------------- #
# aggregation
# --------------------------------------------------------------------------- #
def test_mean_and_sample_std_by_hand(tmp_path):
    for seed, v in [(1, 70.0), (2, 72.0), (3, 77.0)]:
        write_run(tmp_path, "PromptEmo", "rafdb", "fear", seed, {"auc_u": v})
    recs = T.collect_results(str(tmp_path))
    cell = T.aggregate(recs, "auc_u", (1, 2, 3))[("PromptEmo", "rafdb", ("fear",), tuple(sorted(SOURCES)),
                                                  "ViT-B/32")]
    # mean = (70 + 72 + 77) / 3 = 219 / 3 = 73.0
    # deviations -3, -1, 4 -> squares 9 + 1 + 16 = 26; ddof=1: 26 / 2 = 13; std = sqrt(13) = 3.6056
    assert cell.mean == pytest.approx(73.0)
    assert cell.std == pytest.approx(math.sqrt(13))
    assert cell.text == "73.00 ± 3.61"
    table = T.build_class_table(recs, "auc_u", "rafdb", (1, 2, 3))
    assert table.cell("PromptEmo", "Fea.").text == "73.00 ± 3.61"
    assert table.cell("PromptEmo", "Sur.").text == "—"


def test_single_seed_omits_std(tmp_path):
    write_run(tmp_path, "ZSCLIP", "rafdb", "fear", 1, {"auc_u": 56.083333})
    recs = T.collect_results(str(tmp_path))
    cell = T.build_class_table(recs, "auc_u", "rafdb", (1,)).cell("ZSCLIP", "Fea.")
    assert cell.text == "56.08" and math.isnan(cell.std)


def test_full_grid_average_over_per_seed_class_means(tmp_path):
    full_grid(tmp_path, "PromptEmo")
    recs = T.collect_results(str(tmp_path))
    assert T.expected_seeds(recs) == (1, 2, 3)
    table = T.build_class_table(recs, "auc_u", "rafdb", (1, 2, 3))
    assert table.columns == ["Sur.", "Fea.", "Dis.", "Hap.", "Sad.", "Ang.", "Neu.", "Avg"]
    # Sur. (i=0): 61, 62, 63 -> mean 62, deviations -1 0 1 -> var 2/2 = 1, std 1
    assert table.cell("PromptEmo", "Sur.").text == "62.00 ± 1.00"
    # per-seed class average = 60 + mean(0..6) + s = 63 + s -> 64, 65, 66 -> 65.00 ± 1.00
    avg = table.cell("PromptEmo", "Avg")
    assert avg.values == {1: 64.0, 2: 65.0, 3: 66.0}
    assert avg.text == "65.00 ± 1.00"


def test_missing_seed_and_missing_class_are_marked(tmp_path):
    full_grid(tmp_path, "PromptEmo")
    os.remove(os.path.join(tmp_path, "rafdb", "fear", "PromptEmo", "seed3", "results.json"))
    full_grid(tmp_path, "CoOp")
    for s in (1, 2, 3):
        os.remove(os.path.join(tmp_path, "rafdb", "neutral", "CoOp", f"seed{s}", "results.json"))
    recs = T.collect_results(str(tmp_path))
    table = T.build_class_table(recs, "auc_u", "rafdb", T.expected_seeds(recs))
    # Fea. (i=1), seeds 1, 2: 62, 63 -> mean 62.5; deviations +-0.5 -> var 0.5 / 1, std 0.7071
    assert table.cell("PromptEmo", "Fea.").text == "62.50 ± 0.71 (2/3)"
    assert table.cell("PromptEmo", "Avg").text == "— (6/7)"
    assert table.cell("PromptEmo", "Avg").values == {}
    assert table.cell("CoOp", "Neu.").text == "—"
    assert table.cell("CoOp", "Avg").text == "— (6/7)"
    # --seeds 1 2: every cell complete again, PromptEmo Avg = per seed 63 + s -> 64, 65 -> 64.50 ± 0.71
    two = T.build_class_table(recs, "auc_u", "rafdb", (1, 2))
    assert two.cell("PromptEmo", "Avg").text == "64.50 ± 0.71"


def test_nan_metric_counts_as_missing_and_is_marked(tmp_path):
    write_run(tmp_path, "Baseline", "oulu", "fear", 1, {"auc_u": 50.0})
    write_run(tmp_path, "Baseline", "oulu", "fear", 2, {"auc_u": float("nan")})
    write_run(tmp_path, "Baseline", "oulu", "fear", 3, {"auc_u": 54.0})
    write_run(tmp_path, "CoOp", "oulu", "fear", 1, {"auc_u": float("nan")})
    recs = T.collect_results(str(tmp_path))
    table = T.build_class_table(recs, "auc_u", "oulu", (1, 2, 3))
    # (50 + 54) / 2 = 52; deviations +-2 -> var 8 / 1, std 2.8284
    assert table.cell("Baseline", "Fea.").text == "52.00 ± 2.83 (2/3, 1 NaN)"
    assert table.cell("CoOp", "Fea.").text == "n/a (0/3, 1 NaN)"
    # a metric absent from the file also counts as missing
    assert T.build_class_table(recs, "fpr95", "oulu", (1, 2, 3)).cell("Baseline", "Fea.").text == "n/a (0/3, 3 NaN)"


def test_row_order_paper_style(tmp_path):
    for trainer in ["PromptEmo", "Zeta", "ZSCLIP", "Alpha", "CoOp", "Baseline"]:
        write_run(tmp_path, trainer, "rafdb", "fear", 1, {"auc_u": 1.0})
    recs = T.collect_results(str(tmp_path))
    expected = ["Baseline", "CoOp", "ZSCLIP", "Alpha", "Zeta", "PromptEmo"]
    assert T.build_class_table(recs, "auc_u", "rafdb", (1,)).rows == expected
    assert T.build_summary_table(recs, "rafdb", ["fear"], ["auc_u"], (1,)).rows == expected


def test_every_method_in_the_papers_order_under_the_papers_name(tmp_path):
    trainers = ["PromptEmo", "LACMFERCLIP", "Alpha", "DUML", "ZSCLIP", "OSFER", "LACMFER", "NENO", "CoOp",
                "Baseline"]
    for trainer in trainers:
        write_run(tmp_path, trainer, "rafdb", "fear", 1, {"auc_u": 1.0})
    recs = T.collect_results(str(tmp_path))
    table = T.build_class_table(recs, "auc_u", "rafdb", (1,))
    assert table.rows == ["Baseline", "CoOp", "NENO", "OS-FER", "DUML", "LA-CMFER", "LA-CMFER + CLIP", "ZSCLIP",
                          "Alpha", "PromptEmo"]
    # what a run is stays its trainer name
    assert table.row_methods == ["Baseline", "CoOp", "NENO", "OSFER", "DUML", "LACMFER", "LACMFERCLIP", "ZSCLIP",
                                 "Alpha", "PromptEmo"]
    assert T.build_summary_table(recs, "rafdb", ["fear"], ["auc_u"], (1,)).rows == table.rows
    # every format shows the paper's names; the CSV keeps the trainer beside them
    for fmt in ("plain", "markdown", "latex"):
        text = T.render_table(table, fmt)
        assert "OS-FER" in text and "LA-CMFER + CLIP" in text and "OSFER" not in text and "LACMFERCLIP" not in text
    rows = list(csv.DictReader(io.StringIO(T.render_table(table, "csv"))))
    assert {(r["row"], r["trainer"]) for r in rows if r["trainer"].startswith(("OS", "LA"))} == \
        {("OS-FER", "OSFER"), ("LA-CMFER", "LACMFER"), ("LA-CMFER + CLIP", "LACMFERCLIP")}
    # --methods takes either name
    assert {r.trainer for r in T.filter_records(recs, methods=["os-fer", "LACMFERCLIP"])} == {"OSFER", "LACMFERCLIP"}


def test_settings_rows_carry_the_papers_name(tmp_path):
    write_run(tmp_path, "OSFER", "rafdb", "fear", 1, {"auc_u": 70.0}, backbone="ResNet-18", subdir="a")
    write_run(tmp_path, "OSFER", "rafdb", "fear", 1, {"auc_u": 60.0}, backbone="ResNet-50", subdir="b")
    table = T.build_class_table(T.collect_results(str(tmp_path)), "auc_u", "rafdb", (1,))
    assert table.rows == ["OS-FER [ResNet-18]", "OS-FER [ResNet-50]"]
    assert table.row_methods == ["OSFER", "OSFER"]
    assert table.cell("OS-FER [ResNet-50]", "Fea.").text == "60.00"


def test_multi_class_unseen_is_its_own_column(tmp_path):
    write_run(tmp_path, "PromptEmo", "synth_wild", ["fear", "surprise"], 1, {"auc_u": 80.0})
    write_run(tmp_path, "PromptEmo", "synth_wild", "happy", 1, {"auc_u": 70.0})  # alias -> happiness
    recs = T.collect_results(str(tmp_path))
    table = T.build_class_table(recs, "auc_u", "synth_wild", (1,))
    assert table.columns == ["Sur.", "Fea.", "Dis.", "Hap.", "Sad.", "Ang.", "Neu.", "Sur.+Fea.", "Avg"]
    assert table.cell("PromptEmo", "Sur.+Fea.").text == "80.00"
    assert table.cell("PromptEmo", "Hap.").text == "70.00"
    assert table.cell("PromptEmo", "Avg").text == "— (1/7)"  # the multi-class column is not averaged in


def test_different_backbones_or_sources_are_separate_rows(tmp_path):
    write_run(tmp_path, "PromptEmo", "rafdb", "fear", 1, {"auc_u": 70.0}, subdir="a")
    write_run(tmp_path, "PromptEmo", "rafdb", "fear", 1, {"auc_u": 40.0}, backbone="tiny", subdir="b")
    write_run(tmp_path, "CoOp", "rafdb", "fear", 1, {"auc_u": 60.0}, subdir="c")
    write_run(tmp_path, "CoOp", "rafdb", "fear", 1, {"auc_u": 50.0}, sources=["ferplus", "oulu"], subdir="d")
    recs = T.collect_results(str(tmp_path))
    table = T.build_class_table(recs, "auc_u", "rafdb", (1,))
    assert table.rows == ["CoOp [from affectnet+ferplus+oulu]", "CoOp [from ferplus+oulu]",
                          "PromptEmo [ViT-B/32]", "PromptEmo [tiny]"]
    assert table.cell("PromptEmo [tiny]", "Fea.").text == "40.00"
    assert table.cell("PromptEmo [ViT-B/32]", "Fea.").text == "70.00"


def test_table5_averages_over_the_seven_classes_with_the_avg_rule(tmp_path):
    full_grid(tmp_path, "PromptEmo", "ferplus", base=70.0)
    full_grid(tmp_path, "LACMFERCLIP", "ferplus", base=60.0)
    full_grid(tmp_path, "LACMFER", "ferplus", base=58.0)
    full_grid(tmp_path, "CoOp", "ferplus", base=56.0)
    full_grid(tmp_path, "ZSCLIP", "ferplus", base=40.0)  # not a method of Table 5
    full_grid(tmp_path, "PromptEmo", "rafdb", base=10.0)  # another target
    os.remove(os.path.join(tmp_path, "ferplus", "anger", "CoOp", "seed2", "results.json"))
    recs = T.collect_results(str(tmp_path))
    table = T.build_average_table(recs, T.TABLE5_TARGET, ["auc_u", "acc_s"], (1, 2, 3), T.TABLE5_METHODS)
    assert table.rows == ["CoOp", "LA-CMFER", "LA-CMFER + CLIP", "PromptEmo"]  # the paper's Table 5 order
    assert table.columns == ["AUC-U", "ACC-S"]
    # per seed the mean of the 7 classes: base + mean(0..6) + s = base + 3 + s -> mean base + 5, std 1
    assert table.cell("PromptEmo", "AUC-U").text == "75.00 ± 1.00"
    assert table.cell("LA-CMFER + CLIP", "AUC-U").text == "65.00 ± 1.00"
    assert table.cell("LA-CMFER", "AUC-U").values == {1: 62.0, 2: 63.0, 3: 64.0}
    assert table.cell("PromptEmo", "ACC-S").text == "52.00 ± 1.00"  # 50 + s
    # one seed missing for one class: no average, as in Table 1's Avg column
    assert table.cell("CoOp", "AUC-U").text == "— (6/7)" and table.cell("CoOp", "ACC-S").text == "— (6/7)"
    # the same numbers as the Avg column of the class tables
    for metric, column in (("auc_u", "AUC-U"), ("acc_s", "ACC-S")):
        avg = T.build_class_table(recs, metric, "ferplus", (1, 2, 3)).cell("LA-CMFER + CLIP", "Avg")
        assert table.cell("LA-CMFER + CLIP", column).values == avg.values
    assert "ZSCLIP" in T.build_average_table(recs, "ferplus", ["auc_u"], (1, 2, 3)).rows  # methods=None: all
    rows = list(csv.DictReader(io.StringIO(T.render_table(table, "csv"))))
    assert {(r["unseen"], r["column"]) for r in rows if r["trainer"] == "LACMFERCLIP"} == {("", "AUC-U"),
                                                                                           ("", "ACC-S")}


def test_unreadable_and_duplicate_files_are_skipped_with_a_warning(tmp_path):
    write_run(tmp_path, "PromptEmo", "rafdb", "fear", 1, {"auc_u": 70.0}, subdir="a")
    write_run(tmp_path, "PromptEmo", "rafdb", "fear", 1, {"auc_u": 10.0}, subdir="b")  # duplicate
    os.makedirs(tmp_path / "broken")
    (tmp_path / "broken" / "results.json").write_text("{not json")
    os.makedirs(tmp_path / "partial")
    (tmp_path / "partial" / "results.json").write_text(json.dumps({"trainer": "X"}))
    skipped = []
    recs = T.collect_results(str(tmp_path), on_skip=lambda p, why: skipped.append((p, why)))
    assert len(recs) == 1 and recs[0].value("auc_u") == 70.0
    reasons = {os.path.basename(os.path.dirname(p)): why for p, why in skipped}
    assert set(reasons) == {"b", "broken", "partial"}
    assert "duplicate" in reasons["b"] and "JSON" in reasons["broken"] and "missing" in reasons["partial"]
    with pytest.warns(T.ResultsWarning):
        T.collect_results(str(tmp_path))


# --------------------------------------------------------------------------- #
# formats
# --------------------------------------------------------------------------- #
@pytest.fixture
def two_tables(tmp_path):
    for seed, v in [(1, 70.0), (2, 72.0), (3, 77.0)]:
        write_run(tmp_path, "PromptEmo", "rafdb", "fear", seed, {"auc_u": v, "acc_s": 60.0})
    write_run(tmp_path, "my_method", "rafdb", "fear", 1, {"auc_u": 55.5, "acc_s": float("nan")})
    recs = T.collect_results(str(tmp_path))
    return [T.build_class_table(recs, "auc_u", "rafdb", (1, 2, 3)),
            T.build_summary_table(recs, "rafdb", ["fear"], ["auc_u", "acc_s"], (1, 2, 3))]


def test_plain_and_markdown(two_tables):
    plain = T.render_tables(two_tables, "plain")
    assert "73.00 ± 3.61" in plain and "55.50 (1/3)" in plain and "n/a (0/3, 1 NaN)" in plain
    md = T.render_tables(two_tables, "markdown")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert lines[0].split("|")[1].strip() == "Method"
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}  # header separator
    assert all(ln.count("|") == lines[0].count("|") for ln in lines[:4])
    assert any("73.00 ± 3.61" in ln for ln in lines)


def test_csv_parses_back_to_the_numbers(two_tables):
    rows = list(csv.DictReader(io.StringIO(T.render_tables(two_tables, "csv"))))
    assert list(rows[0]) == list(T.CSV_FIELDS)
    fea = next(r for r in rows if r["row"] == "PromptEmo" and r["column"] == "Fea." and r["metric"] == "auc_u")
    assert float(fea["mean"]) == pytest.approx(73.0) and float(fea["std"]) == pytest.approx(math.sqrt(13))
    assert (fea["n"], fea["expected"], fea["unseen"]) == ("3", "3", "fear")
    sur = next(r for r in rows if r["row"] == "PromptEmo" and r["column"] == "Sur.")
    assert sur["mean"] == "" and sur["display"] == "—"
    nan = next(r for r in rows if r["row"] == "my_method" and r["metric"] == "acc_s" and r["column"] == "ACC-S")
    assert nan["mean"] == "" and nan["n_nan"] == "1"
    # both tables are in one CSV with one header
    assert sum(1 for r in rows if r["column"] == "AUC-U") == 2


def test_latex(two_tables):
    tex = T.render_tables(two_tables, "latex")
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex and r"\toprule" in tex
    assert r"73.00 $\pm$ 3.61" in tex
    assert r"my\_method" in tex  # LaTeX specials escaped
    assert "±" not in "".join(ln for ln in tex.splitlines() if not ln.startswith("%"))


def test_unknown_format_raises(two_tables):
    with pytest.raises(ValueError, match="unknown format"):
        T.render_table(two_tables[0], "html")


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def test_cli_errors_on_missing_or_empty_folder(tmp_path, capsys):
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("[]")
    for folder in [tmp_path / "x", tmp_path / "nope"]:
        res = run_cli(folder)
        assert res.returncode == 2
        assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ")
        assert "Traceback" not in res.stderr and res.stdout == ""
    res = cli(capsys, tmp_path / "bad")  # only unreadable files: warning lines, then the error
    assert res.returncode == 2 and res.stderr.splitlines()[-1].startswith("error: no readable results.json")
    assert res.stderr.splitlines()[0].startswith("warning: skipping")


def test_cli_default_tables_and_formats(tmp_path, capsys):
    full_grid(tmp_path, "PromptEmo")
    full_grid(tmp_path, "ZSCLIP", seeds=(1,), base=50.0)
    write_run(tmp_path, "PromptEmo", "synth_wild", "fear", 1, {"auc_u": 1.0, "acc_s": 2.0})
    res = cli(capsys, tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("Table 1: AUC-U") == 2 and out.count("Table 2: ACC-S") == 2
    assert out.index("on rafdb") < out.index("on synth_wild")  # paper targets first
    assert "65.00 ± 1.00" in out  # PromptEmo Avg on rafdb (see test_full_grid_...)
    assert "51.00 (1/3)" in out  # ZSCLIP Sur. = 50 + 0 + 1, one seed of three
    res = cli(capsys, tmp_path, "--targets", "rafdb", "--table2-target", "rafdb", "--seeds", "1", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {r["target"] for r in rows} == {"rafdb"} and {r["expected"] for r in rows} == {"1"}
    avg = next(r for r in rows if r["row"] == "ZSCLIP" and r["column"] == "Avg" and r["metric"] == "auc_u")
    assert float(avg["mean"]) == pytest.approx(54.0)  # seed 1: 50 + mean(0..6) + 1 = 54
    res = cli(capsys, tmp_path, "--methods", "zsclip", "--format", "markdown", "--targets", "rafdb")
    assert "PromptEmo" not in res.stdout and "| ZSCLIP" in res.stdout


def test_cli_summary_lists_every_method(tmp_path, capsys):
    for trainer in ["PromptEmo", "ZSCLIP", "CoOp", "Baseline"]:
        write_run(tmp_path, trainer, "synth_wild", "fear", 1,
                  {"auc_u": 60.0, "acc_s": 50.0, "h_best": 40.0, "oscr": 30.0, "mcr": 20.0})
    res = cli(capsys, tmp_path, "--summary", "--metrics", "auc_u", "acc_s", "h_best", "oscr")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("Method"))
    assert header.split() == ["Method", "AUC-U", "ACC-S", "H-best", "OSCR"]
    body = [ln.split()[0] for ln in lines[lines.index(header) + 2:] if ln.strip()]
    assert body == ["Baseline", "CoOp", "ZSCLIP", "PromptEmo"]
    assert "Table 1" not in res.stdout


# --------------------------------------------------------------------------- #
# the paper's figures (reporting/paper_results.csv)
# --------------------------------------------------------------------------- #
PAPER_TARGETS = ["affectnet", "oulu", "ferplus", "rafdb"]
TABLE1_METHODS = ["Baseline", "CoOp", "NENO", "OS-FER", "DUML", "LA-CMFER", "PromptEmo"]
TABLE3_ROWS = ["Baseline", "+ BTP & CEI (Pos)", "+ BTP & CEI (Neg)", "+ ISO (L_ESS)", "+ ISO (L_LDA)"]
TABLE4_ROWS = ["(A) \u201ca photo of {class}\u201d", "(B) \u201can expression of {class}\u201d",
               "(C) LLM-descriptions w/o delta_k", "(D) LLM-descriptions w/ delta_k"]


def paper_cells() -> dict[tuple, float]:
    values = T.read_paper_results()
    cells = {v[:5]: v.value for v in values}
    assert len(cells) == len(values), "a cell of the paper is in the file twice"
    return cells


def test_paper_file_has_every_cell_of_tables_1_to_5_once():
    units = CLASSES + ["avg"]
    expected = {("1", "auc_u", t, u, m) for t in PAPER_TARGETS for m in TABLE1_METHODS for u in units}
    expected |= {("2", "acc_s", "rafdb", u, m) for m in ["Baseline", "CoOp", "LA-CMFER", "PromptEmo"] for u in units}
    expected |= {("3", x, "ferplus", "avg", m) for m in TABLE3_ROWS for x in ("auc_u", "acc_s")}
    expected |= {("4", x, "ferplus", "avg", m) for m in TABLE4_ROWS for x in ("auc_u", "acc_s")}
    expected |= {("5", x, "ferplus", "avg", m) for m in ["CoOp", "LA-CMFER", "LA-CMFER + CLIP", "PromptEmo"]
                 for x in ("auc_u", "acc_s")}
    assert len(expected) == 224 + 32 + 10 + 8 + 8
    assert set(paper_cells()) == expected


def test_paper_file_cells_read_by_hand_from_the_paper():
    cells = paper_cells()
    by_hand = {  # (table, metric, target, unseen, method): the figure as printed in the paper
        ("1", "auc_u", "affectnet", "surprise", "Baseline"): 39.42,    # Table 1, first cell
        ("1", "auc_u", "affectnet", "sadness", "NENO"): 61.48,
        ("1", "auc_u", "affectnet", "anger", "LA-CMFER"): 74.21,       # bold in the paper
        ("1", "auc_u", "oulu", "disgust", "OS-FER"): 33.35,
        ("1", "auc_u", "oulu", "neutral", "PromptEmo"): 85.50,
        ("1", "auc_u", "oulu", "avg", "DUML"): 57.89,
        ("1", "auc_u", "ferplus", "surprise", "CoOp"): 57.84,          # underlined in the paper
        ("1", "auc_u", "ferplus", "avg", "PromptEmo"): 70.66,
        ("1", "auc_u", "rafdb", "fear", "LA-CMFER"): 66.85,            # RAF-DB's column is "Fear"
        ("1", "auc_u", "rafdb", "anger", "DUML"): 66.97,
        ("1", "auc_u", "rafdb", "avg", "PromptEmo"): 75.91,
        ("2", "acc_s", "rafdb", "happiness", "Baseline"): 21.81,
        ("2", "acc_s", "rafdb", "avg", "LA-CMFER"): 51.25,
        ("2", "acc_s", "rafdb", "neutral", "PromptEmo"): 66.22,
        ("3", "auc_u", "ferplus", "avg", "Baseline"): 58.57,
        ("3", "acc_s", "ferplus", "avg", "+ BTP & CEI (Pos)"): 51.89,
        ("4", "auc_u", "ferplus", "avg", "(C) LLM-descriptions w/o delta_k"): 70.24,
        ("5", "acc_s", "ferplus", "avg", "CoOp"): 38.02,
        ("5", "auc_u", "ferplus", "avg", "LA-CMFER + CLIP"): 60.67,
        ("5", "acc_s", "ferplus", "avg", "LA-CMFER + CLIP"): 40.23,
    }
    assert {k: cells[k] for k in by_hand} == by_hand


def test_paper_file_agrees_with_itself():
    """Checks of the copy against the paper's own arithmetic: each Avg. is the mean of its 7 classes (to
    the 2 printed decimals), Table 3's bracketed increments are the differences of consecutive rows, and a
    figure printed in two tables is the same in both."""
    cells = paper_cells()
    for (table, metric, target, unseen, method), value in cells.items():
        if table in ("1", "2") and unseen == "avg":
            mean = sum(cells[(table, metric, target, c, method)] for c in CLASSES) / 7
            assert abs(mean - value) <= 0.005 + 1e-9, (table, target, method, mean, value)
    increments = {"auc_u": [8.07, 2.44, 0.45, 1.13], "acc_s": [13.56, 3.62, 1.77, 0.76]}  # as printed
    for metric, printed in increments.items():
        column = [cells[("3", metric, "ferplus", "avg", m)] for m in TABLE3_ROWS]
        assert [round(b - a, 2) for a, b in zip(column, column[1:])] == printed
    for metric in ("auc_u", "acc_s"):
        full = cells[("5", metric, "ferplus", "avg", "PromptEmo")]
        assert cells[("3", metric, "ferplus", "avg", TABLE3_ROWS[-1])] == full
        assert cells[("4", metric, "ferplus", "avg", TABLE4_ROWS[-1])] == full
    for method in ("CoOp", "LA-CMFER", "PromptEmo"):
        assert cells[("5", "auc_u", "ferplus", "avg", method)] == cells[("1", "auc_u", "ferplus", "avg", method)]
    reported = T.reported_values(T.read_paper_results())  # raises if two tables disagreed
    assert T.paper_value(reported, "acc_s", "ferplus", None, "LACMFERCLIP") == 40.23
    assert T.paper_value(reported, "auc_u", "rafdb", ("fear",), "OSFER") == 56.51
    assert T.paper_value(reported, "auc_u", "rafdb", ("fear", "surprise"), "OSFER") is None
    assert T.paper_value(reported, "auc_u", "rafdb", ("fear",), "ZSCLIP") is None


def test_paper_file_errors_name_the_line(tmp_path):
    good = T.PAPER_RESULTS_FIELDS
    path = tmp_path / "p.csv"
    path.write_text("# comment\n" + ",".join(good) + "\n1,auc_u,rafdb,fear,CoOp,52.09\n1,auc_u,rafdb,fea,CoOp,1\n")
    with pytest.raises(ValueError, match=r"p\.csv:4: unseen 'fea'"):
        T.read_paper_results(str(path))
    path.write_text(",".join(good) + "\n1,auc_u,rafdb,fear,CoOp,n/a\n")
    with pytest.raises(ValueError, match=r"p\.csv:2: value 'n/a'"):
        T.read_paper_results(str(path))


def test_cli_table5(tmp_path, capsys):
    for trainer, base in [("PromptEmo", 70.0), ("LACMFER", 58.0), ("CoOp", 56.0)]:
        full_grid(tmp_path, trainer, "ferplus", base=base)
    res = cli(capsys, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Table 5" not in res.stdout  # without LA-CMFER + CLIP it would repeat Tables 1 and 2's Avg
    res = cli(capsys, tmp_path, "--table5")
    assert res.returncode == 0, res.stderr
    assert "Table 1" not in res.stdout and "Table 2" not in res.stdout
    assert res.stdout.startswith("Table 5: AUC-U and ACC-S (%) on ferplus, average over the 7 unseen classes")
    body = [ln.split()[0] for ln in res.stdout.splitlines()[4:] if ln.strip()]
    assert body == ["CoOp", "LA-CMFER", "PromptEmo"]
    assert "75.00 ± 1.00" in res.stdout and "52.00 ± 1.00" in res.stdout
    # LA-CMFER + CLIP ran on ferplus: the default output ends with Table 5
    full_grid(tmp_path, "LACMFERCLIP", "ferplus", seeds=(1, 2), base=60.0)
    res = cli(capsys, tmp_path, "--format", "markdown")
    out = res.stdout
    assert out.count("Table 5") == 1 and out.index("Table 2") < out.index("Table 5")
    assert "| LA-CMFER + CLIP | — (0/7)" in out  # two seeds of three: no class cell is complete
    write_run(tmp_path, "PromptEmo", "rafdb", "fear", 1, {"auc_u": 50.0, "acc_s": 40.0})
    res = cli(capsys, tmp_path, "--targets", "rafdb")  # Table 5's target is not shown
    assert res.returncode == 0 and "Table 1" in res.stdout and "Table 5" not in res.stdout
    res = cli(capsys, tmp_path, "--table5-target", "rafdb")  # LA-CMFER + CLIP did not run on rafdb
    assert res.returncode == 0 and "Table 1" in res.stdout and "Table 5" not in res.stdout
    write_run(tmp_path, "LACMFERCLIP", "rafdb", "fear", 1, {"auc_u": 50.0, "acc_s": 40.0})
    res = cli(capsys, tmp_path, "--table5-target", "RAFDB")
    assert "Table 5: AUC-U and ACC-S (%) on rafdb" in res.stdout and "on ferplus, average" not in res.stdout
    res = cli(capsys, tmp_path, "--seeds", "1", "2", "--table5", "--format", "csv")
    avg = next(r for r in csv.DictReader(io.StringIO(res.stdout)) if r["trainer"] == "LACMFERCLIP"
               and r["metric"] == "auc_u")
    assert float(avg["mean"]) == pytest.approx(64.5)  # 60 + 3 + (1 + 2) / 2
    res = cli(capsys, tmp_path, "--table5", "--table5-target", "oulu")
    assert res.returncode == 2 and res.stderr.splitlines()[-1].startswith("error: no runs of Table 5's methods")


# --------------------------------------------------------------------------- #
# --paper: the paper's figure and the difference beside each reproduced cell
# --------------------------------------------------------------------------- #
def test_paper_part_is_the_difference_of_the_printed_numbers():
    for mean, paper, shown in [(64.12, 70.66, "64.12 (paper 70.66, -6.54)"),
                               (70.66, 70.66, "70.66 (paper 70.66, +0.00)"),   # never -0.00
                               (70.664, 70.66, "70.66 (paper 70.66, +0.00)"),
                               (64.126, 59.11, "64.13 (paper 59.11, +5.02)"),  # printed 64.13 - 59.11
                               (9.994, 10.0, "9.99 (paper 10.00, -0.01)")]:
        cell = T.Cell(values={1: mean}, expected=1)
        assert cell.text + T.format_paper(cell, paper) == shown
        printed_mean, rest = shown.split(" (paper ")
        printed_paper, printed_diff = rest.rstrip(")").split(", ")
        assert float(printed_mean) - float(printed_paper) == pytest.approx(float(printed_diff), abs=1e-9)
    assert T.format_paper(T.Cell(values={1: 50.0}, expected=1), None) == ""
    assert T.format_paper(T.Cell(values={}, expected=3, has_run=False), 79.85) == " (paper 79.85)"


@pytest.fixture
def paper_runs(tmp_path):
    """PromptEmo on rafdb, Fea.: 70, 72, 77 (73.00 ± 3.61); CoOp Fea. 50 (one seed of three), OS-FER Fea.
    60 with a tiny and a ViT backbone, ZSCLIP Fea. 40, and a multi-class PromptEmo run."""
    for seed, v in [(1, 70.0), (2, 72.0), (3, 77.0)]:
        write_run(tmp_path, "PromptEmo", "rafdb", "fear", seed, {"auc_u": v, "acc_s": 60.0 + seed})
    write_run(tmp_path, "CoOp", "rafdb", "fear", 1, {"auc_u": 50.0, "acc_s": 45.0})
    write_run(tmp_path, "OSFER", "rafdb", "fear", 1, {"auc_u": 60.0, "acc_s": 45.0}, subdir="os1")
    write_run(tmp_path, "OSFER", "rafdb", "fear", 1, {"auc_u": 61.0, "acc_s": 45.0}, backbone="tiny", subdir="os2")
    write_run(tmp_path, "ZSCLIP", "rafdb", "fear", 1, {"auc_u": 40.0, "acc_s": 30.0})
    write_run(tmp_path, "PromptEmo", "rafdb", ["fear", "surprise"], 1, {"auc_u": 66.0, "acc_s": 55.0})
    return tmp_path


def test_cli_paper_plain(paper_runs, capsys):
    res = cli(capsys, paper_runs, "--paper", "--targets", "rafdb")
    assert res.returncode == 0, res.stderr
    lines = {ln.split("  ")[0]: ln for ln in res.stdout.split("Table 2")[0].splitlines() if ln[:1].isalpha()}
    # the paper's Table 1, RAF-DB, column Fear: PromptEmo 69.18, CoOp 52.09, OS-FER 56.51
    assert "73.00 ± 3.61 (paper 69.18, +3.82)" in lines["PromptEmo"]      # 73.00 - 69.18
    assert "50.00 (1/3) (paper 52.09, -2.09)" in lines["CoOp"]            # 50.00 - 52.09
    assert "60.00 (1/3) (paper 56.51, +3.49)" in lines["OS-FER [ViT-B/32]"]
    assert "61.00 (1/3) (paper 56.51, +4.49)" in lines["OS-FER [tiny]"]
    assert "— (paper 79.85)" in lines["PromptEmo"]                        # Sur.: nothing reproduced
    assert "— (1/7) (paper 75.91)" in lines["PromptEmo"]                  # Avg: only Fea. complete
    assert "paper" not in lines["ZSCLIP"]                                 # not a method of the paper
    assert "66.00" in lines["PromptEmo"] and "66.00 (paper" not in lines["PromptEmo"]  # Sur.+Fea.: no figure
    table2 = res.stdout.split("Table 2")[1]
    assert "(paper 64.58, -2.58)" in table2  # PromptEmo ACC-S Fea.: mean 62.00 - 64.58
    assert "(paper" not in cli(capsys, paper_runs, "--targets", "rafdb").stdout  # only with --paper


def test_cli_paper_csv(paper_runs, capsys):
    res = cli(capsys, paper_runs, "--paper", "--targets", "rafdb", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == list(T.CSV_FIELDS) + ["paper", "diff"]

    def cell(trainer, column, metric="auc_u"):
        return [r for r in rows if r["trainer"] == trainer and r["column"] == column and r["metric"] == metric]

    fea = cell("PromptEmo", "Fea.")[0]
    assert float(fea["paper"]) == 69.18 and float(fea["diff"]) == pytest.approx(73.0 - 69.18)
    assert fea["display"] == "73.00 ± 3.61"  # the paper's figure has its own columns
    coop = cell("CoOp", "Fea.")[0]
    assert float(coop["paper"]) == 52.09 and float(coop["diff"]) == pytest.approx(-2.09)
    assert {(r["row"], r["paper"]) for r in cell("OSFER", "Fea.")} == {("OS-FER [ViT-B/32]", "56.51"),
                                                                      ("OS-FER [tiny]", "56.51")}
    sur = cell("PromptEmo", "Sur.")[0]
    assert (sur["paper"], sur["diff"]) == ("79.85", "")        # a figure, nothing reproduced
    zs = cell("ZSCLIP", "Fea.")[0]
    assert (zs["paper"], zs["diff"]) == ("", "")               # no figure
    avg = cell("PromptEmo", "Avg", "acc_s")[0]
    assert (avg["paper"], avg["unseen"]) == ("59.98", "")      # Table 2, RAF-DB, Avg.
    assert "paper" not in cli(capsys, paper_runs, "--format", "csv").stdout.splitlines()[0]


def test_cli_paper_markdown_latex_and_table5(paper_runs, capsys):
    md = cli(capsys, paper_runs, "--paper", "--targets", "rafdb", "--format", "markdown").stdout
    assert "| 73.00 ± 3.61 (paper 69.18, +3.82)" in md
    tex = cli(capsys, paper_runs, "--paper", "--targets", "rafdb", "--format", "latex").stdout
    assert r"73.00 $\pm$ 3.61 (paper 69.18, +3.82)" in tex and "-- (paper 79.85)" in tex
    full_grid(paper_runs, "LACMFERCLIP", "ferplus", base=60.0)  # AUC-U 65.00 ± 1.00, ACC-S 52.00 ± 1.00
    out = cli(capsys, paper_runs, "--paper", "--table5").stdout
    row = next(ln for ln in out.splitlines() if ln.startswith("LA-CMFER + CLIP"))
    assert row.split("  ", 1)[1].split() == ["65.00", "±", "1.00", "(paper", "60.67,", "+4.33)",
                                             "52.00", "±", "1.00", "(paper", "40.23,", "+11.77)"]
