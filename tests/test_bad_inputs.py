"""The bad-input battery: mistakes with the command line and config files, the split, CLIP weights, the
real datasets' layouts, training and the output folder, and saved runs, each run as ``python train.py ...``
in a subprocess.

For every case: a non-zero exit (2 for a user error, 3 for a non-finite loss), exactly one non-empty
line on stderr, starting ``error: `` and naming the problem (and the file, path or key involved), no
``Traceback`` anywhere in stdout or stderr, and nothing destroyed in OUTPUT_DIR: each case's output
folder is created beforehand holding ``precious.txt`` and an earlier ``results.json``, and both must be
byte-identical afterwards (files the failed run adds are fine).

The cases are a table (``CASES``): each entry builds what it needs under its own folder and returns the
command line and the expected fragments. A module-scoped fixture builds the shared artefacts once (a
tiny PromptEmo run trained for one epoch, miniature official layouts of the four real datasets, a
tiny CLIP of another width), then runs every case's subprocess, two at a time; the parametrised tests
only check the stored results. Everything uses the tiny backbone at 32x32 on the miniature synthetic
domains (``SYNTH_OPTS``) or the miniature real layouts, so each subprocess takes a few seconds, most of
them importing torch.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from conftest import ROOT, SYNTH_OPTS
from real_layouts import (affectnet_rows, make_all, rafdb_rows, write_affectnet_csv, write_rafdb)

TRAIN_PY = osp.join(ROOT, "train.py")
SYNTH_YAML = osp.join(ROOT, "configs", "datasets", "synthetic.yaml")
MOFER_YAML = osp.join(ROOT, "configs", "datasets", "mofer.yaml")  # sources ferplus affectnet oulu, target rafdb
ZS_TINY_YAML = osp.join(ROOT, "configs", "trainers", "ZSCLIP", "tiny.yaml")
PE_TINY_YAML = osp.join(ROOT, "configs", "trainers", "PromptEmo", "tiny.yaml")
REAL_DOMAINS = ("rafdb", "ferplus", "affectnet", "oulu")

PRECIOUS = b"earlier results: do not touch\n"
EARLIER_RESULTS = b'{"trainer": "PromptEmo", "metrics": {"auc_u": 81.25, "acc_s": 64.5}}\n'
TIMEOUT_S = 240


@dataclass
class Ctx:
    """The shared artefacts every case may use."""
    synth: str  # the miniature synthetic domains (conftest's synthetic_root)
    tiny_clip: str  # a tiny CLIP file of the same architecture as the built-in "tiny" backbone
    wide_clip: str  # a tiny CLIP of another text width (prompt vectors of another size)
    real: str  # miniature official layouts of the four real datasets
    run: str  # a tiny PromptEmo run trained for one epoch, unseen class fear (trained by the fixture)


@dataclass
class Prepared:
    argv: list[str]
    fragments: list  # each a str, a tuple of alternatives (one of them must appear) or a compiled regex
    out_dir: str
    skip: str = ""  # a reason to skip the case on this machine (nothing is run)


@dataclass
class Case:
    id: str
    build: Callable[[Ctx, str, str], tuple[list[str], list]]  # (ctx, case dir, output dir) -> (argv, fragments)
    code: int = 2
    needs_run: bool = False  # evaluates the trained tiny run
    xfail: str = ""  # reason the engine does not do this yet (non-strict xfail)
    starts: str = "error: "  # how the one stderr line starts
    setup_out: Callable[[str], tuple[str, Callable[[], None] | None]] | None = None  # -> (skip reason, cleanup)


# --------------------------------------------------------------------------------------- command lines
def synth_argv(out: str, ctx: Ctx, *extra: str, root: str | None = None, dataset_yaml: str = SYNTH_YAML,
               config: str = ZS_TINY_YAML) -> list[str]:
    """Zero-shot CLIP (tiny) on the synthetic domains: nothing to train, so it is seconds when it runs."""
    return ["--root", root or ctx.synth, "--dataset-config-file", dataset_yaml, "--config-file", config,
            "--output-dir", out, *SYNTH_OPTS, *extra]


def promptemo_argv(out: str, ctx: Ctx, *extra: str) -> list[str]:
    """The tiny PromptEmo configuration the shared run was trained with (1 epoch, batches of 24)."""
    return ["--root", ctx.synth, "--dataset-config-file", SYNTH_YAML, "--config-file", PE_TINY_YAML,
            "--output-dir", out, "--seed", "0", "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "24",
            *SYNTH_OPTS, *extra]


def real_argv(out: str, root: str, *extra: str) -> list[str]:
    """Zero-shot CLIP (tiny) on the real layouts: ferplus affectnet oulu -> rafdb (mofer.yaml)."""
    return ["--root", root, "--dataset-config-file", MOFER_YAML, "--config-file", ZS_TINY_YAML,
            "--output-dir", out, *extra]


def real_root_with(ctx: Ctx, d: str, broken: str) -> str:
    """A root under ``d`` whose domains link to the intact layouts, except ``broken`` (left to the case)."""
    root = osp.join(d, "data")
    os.makedirs(root)
    for name in REAL_DOMAINS:
        if name != broken:
            os.symlink(osp.join(ctx.real, name), osp.join(root, name))
    return root


# ------------------------------------------------------------------- the command line and config files
def key_typo_cmdline(ctx, d, out):
    return (synth_argv(out, ctx, "OPTIM.MAX_EPOH", "3"),
            ["unknown config key OPTIM.MAX_EPOH in the command line", "OPTIM.MAX_EPOCH"])


def key_typo_yaml(ctx, d, out):
    path = osp.join(d, "my_method.yaml")
    with open(path, "w") as f:
        f.write(f"_BASE_: {ZS_TINY_YAML}\nOPTIM:\n  MAX_EPOH: 3\n")
    return synth_argv(out, ctx, config=path), [f"unknown config key OPTIM.MAX_EPOH in {path}", "OPTIM.MAX_EPOCH"]


def missing_config_file(ctx, d, out):
    path = osp.join(d, "nope.yaml")
    return synth_argv(out, ctx, config=path), [f"config file not found: {path}"]


def unregistered_trainer(ctx, d, out):
    return synth_argv(out, ctx, "--trainer", "PromptEmoo"), ["'PromptEmoo' is not a registered trainer"]


# ---------------------------------------------------- the split: dataset root, domains, unseen classes
def missing_root(ctx, d, out):
    # a real (non-synthetic) domain: synthetic domains would be generated under a missing root
    root = osp.join(d, "missing")
    return (synth_argv(out, ctx, root=root, dataset_yaml=MOFER_YAML),
            [f"dataset root not found: {root}", "--root"])


def unknown_domain(ctx, d, out):
    return synth_argv(out, ctx, "--source-domains", "synth_color", "rafdbb"), ["unknown domain 'rafdbb'"]


def source_is_target(ctx, d, out):
    return (synth_argv(out, ctx, "--source-domains", "synth_color", "synth_wild"),
            ["domain 'synth_wild' is both a source and the target"])


def unknown_unseen_class(ctx, d, out):
    return synth_argv(out, ctx, "DATASET.UNSEEN_CLASSES", "feer"), ["unknown expression class 'feer'"]


# ---------------------------------------------------------------------------------------- CLIP weights
def missing_weights(ctx, d, out):
    return (synth_argv(out, ctx, "--backbone", "/nowhere/ViT-B-32.pt"),
            ["CLIP weights file not found: /nowhere/ViT-B-32.pt"])


def corrupt_weights(ctx, d, out):
    path = osp.join(d, "ViT-B-32.pt")  # the first half of a real (tiny) CLIP file: a cut-off download
    data = open(ctx.tiny_clip, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return synth_argv(out, ctx, "--backbone", path), [f"cannot load CLIP weights from {path}"]


# -------------------------------------------------------------------------- the real datasets' layouts
RAFDB_LABELS = osp.join("rafdb", "basic", "EmoLabel", "list_patition_label.txt")
RAFDB_ALIGNED = osp.join("rafdb", "basic", "Image", "aligned")


def dataset_folder_missing(ctx, d, out):
    root = real_root_with(ctx, d, "rafdb")  # the target is absent
    return (real_argv(out, root),
            [f"dataset 'rafdb' (RAF-DB basic) not found: expected the folder {osp.join(root, 'rafdb')}"])


def label_file_missing(ctx, d, out):
    root = real_root_with(ctx, d, "ferplus")
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):  # images there, fer2013new.csv not
        shutil.copytree(osp.join(ctx.real, "ferplus", folder), osp.join(root, "ferplus", folder))
    return real_argv(out, root), [f"FERPlus label file not found: {osp.join(root, 'ferplus', 'fer2013new.csv')}"]


def label_line_unparsable(ctx, d, out):
    root = real_root_with(ctx, d, "rafdb")
    rows = rafdb_rows()
    write_rafdb(osp.join(root, "rafdb"), rows, lines=["train_00099.jpg"])
    return (real_argv(out, root),
            [f"{osp.join(root, RAFDB_LABELS)}:{len(rows) + 1}: cannot parse 'train_00099.jpg'"])


def native_label_unknown(ctx, d, out):
    root = real_root_with(ctx, d, "affectnet")
    train, val = affectnet_rows(2), affectnet_rows(1, start=1000)
    write_affectnet_csv(osp.join(root, "affectnet"), train, val, train_lines=["1/x.jpg,1,1,10,10,1;2,11,0.1,0.2"])
    csv_path = osp.join(root, "affectnet", "Manually_Annotated_file_lists", "training.csv")
    return real_argv(out, root), [f"{csv_path}:{len(train) + 2}: expression 11 is not an AffectNet code"]


def image_missing(ctx, d, out):
    root = real_root_with(ctx, d, "rafdb")
    write_rafdb(osp.join(root, "rafdb"), rafdb_rows(n_train=3, n_test=2))
    for name in ("train_00001", "train_00004", "test_0003", "train_00009"):
        os.remove(osp.join(root, RAFDB_ALIGNED, f"{name}_aligned.jpg"))
    return (real_argv(out, root),
            [f"4 image(s) listed in {osp.join(root, RAFDB_LABELS)}", "missing", "train_00001_aligned.jpg",
             "DATASET.SKIP_MISSING_IMAGES"])


def image_truncated(ctx, d, out):
    root = real_root_with(ctx, d, "rafdb")
    write_rafdb(osp.join(root, "rafdb"), rafdb_rows())
    bad = osp.join(root, RAFDB_ALIGNED, "test_0002_aligned.jpg")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    return real_argv(out, root, "DATASET.VERIFY_IMAGES", "True"), [f"cannot read image {bad} of domain 'rafdb'"]


def empty_class(ctx, d, out):
    root = real_root_with(ctx, d, "rafdb")
    write_rafdb(osp.join(root, "rafdb"), rafdb_rows())
    for name in ("train_00007", "train_00008"):  # both training images of native code 4 (happiness)
        os.remove(osp.join(root, RAFDB_ALIGNED, f"{name}_aligned.jpg"))
    return (real_argv(out, root, "DATASET.SKIP_MISSING_IMAGES", "True"),
            ["domain 'rafdb' has no train images of class 'happiness' after filtering"])


# ---------------------------------------------------------------------- training and the output folder
def non_finite_loss(ctx, d, out):
    return (promptemo_argv(out, ctx, "OPTIM.LR", "1e30"),
            ["non-finite loss at epoch 1", re.compile(r"\b(step|batch) \d+"), "loss="])


def make_unwritable(out: str) -> tuple[str, Callable[[], None] | None]:
    """chmod 0o555 OUTPUT_DIR. Root ignores the mode bits (os.access still says writable): then try the
    immutable flag (chattr +i, which binds root too, where the file system and capabilities allow it);
    when neither works the case is skipped on this machine."""
    os.chmod(out, 0o555)

    def restore():
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-i", out], capture_output=True)
        os.chmod(out, 0o755)

    if not os.access(out, os.W_OK):
        return "", restore
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", out], capture_output=True).returncode == 0:
        probe = osp.join(out, ".probe")
        try:
            open(probe, "w").close()
            os.remove(probe)
        except OSError:
            return "", restore  # immutable: not writable, even for root
    restore()
    return "running as root: chmod 0o555 does not stop root writing, and chattr +i is unavailable", None


def output_not_writable(ctx, d, out):
    return synth_argv(out, ctx), [("not writable", "cannot write"), out]


def output_is_a_file(ctx, d, out):
    path = osp.join(out, "precious.txt")  # a file given as the output folder (works as root too)
    return synth_argv(path, ctx), [("not writable", "cannot write", "not a folder", "not a directory"), path]


# ------------------------------------------------------------------------------ evaluating a saved run
def eval_model_dir_missing(ctx, d, out):
    missing = osp.join(d, "no-such-run")
    return promptemo_argv(out, ctx, "--eval-only", "--model-dir", missing), [f"model directory not found: {missing}"]


def eval_epoch_missing(ctx, d, out):
    return (promptemo_argv(out, ctx, "--eval-only", "--model-dir", ctx.run, "--load-epoch", "7"),
            ["no checkpoint for epoch 7", osp.join(ctx.run, "model", "model.pth.tar-7")])


def eval_other_class_count(ctx, d, out):
    # trained with unseen fear (6 seen classes); evaluated with fear and anger unseen (5)
    argv = promptemo_argv(out, ctx, "--eval-only", "--model-dir", ctx.run, "DATASET.UNSEEN_CLASSES", "['fear','anger']")
    return (argv, [f"checkpoint {osp.join(ctx.run, 'model', 'model.pth.tar-1')} does not fit"])


# The run evaluated with `--backbone <tiny_clip_file>` loads fine (checked: same architecture as the
# built-in "tiny" backbone it was trained with, so every shape matches), so that case is not in the
# battery. A backbone of another architecture is: a tiny CLIP whose text width is 128, not 64.
def eval_other_backbone(ctx, d, out):
    return (promptemo_argv(out, ctx, "--eval-only", "--model-dir", ctx.run, "--backbone", ctx.wide_clip),
            [f"checkpoint {osp.join(ctx.run, 'model', 'model.pth.tar-1')} does not fit"])


def eval_truncated_checkpoint(ctx, d, out):
    run = osp.join(d, "run")
    shutil.copytree(ctx.run, run)
    ckpt = osp.join(run, "model", "model.pth.tar-1")  # the only checkpoint: nothing earlier to fall back to
    data = open(ckpt, "rb").read()
    with open(ckpt, "wb") as f:
        f.write(data[: len(data) // 2])
    return promptemo_argv(out, ctx, "--eval-only", "--model-dir", run), [f"cannot read checkpoint {ckpt}"]


CASES = [
    # the command line and config files
    Case("config_key_typo_cmdline", key_typo_cmdline),
    Case("config_key_typo_yaml", key_typo_yaml),
    Case("missing_config_file", missing_config_file),
    Case("unregistered_trainer", unregistered_trainer),
    # the split: dataset root, domains, unseen classes
    Case("missing_root", missing_root),
    Case("unknown_domain", unknown_domain),
    Case("source_equals_target", source_is_target),
    Case("unknown_unseen_class", unknown_unseen_class),
    # CLIP weights
    Case("missing_weights_file", missing_weights),
    Case("corrupt_weights_file", corrupt_weights),
    # the real datasets' layouts
    Case("dataset_folder_missing", dataset_folder_missing),
    Case("label_file_missing", label_file_missing),
    Case("label_line_unparsable", label_line_unparsable),
    Case("native_label_unknown", native_label_unknown),
    Case("image_listed_but_absent", image_missing),
    Case("image_truncated", image_truncated),
    Case("empty_class_after_filtering", empty_class),
    # training and the output folder
    Case("non_finite_loss", non_finite_loss, code=3, starts="error: non-finite loss"),
    Case("output_not_writable", output_not_writable, setup_out=make_unwritable),
    Case("output_dir_is_a_file", output_is_a_file),
    # evaluating a saved run
    Case("eval_model_dir_missing", eval_model_dir_missing),
    Case("eval_epoch_missing", eval_epoch_missing, needs_run=True),
    Case("eval_other_class_count", eval_other_class_count, needs_run=True),
    Case("eval_other_backbone", eval_other_backbone, needs_run=True),
    Case("eval_truncated_checkpoint", eval_truncated_checkpoint, needs_run=True),
]
assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    prepared: Prepared
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    after: dict = field(default_factory=dict)  # file name -> bytes (None if gone) after the run
    seconds: float = 0.0
    setup_error: str = ""


def child_env() -> dict[str, str]:
    # one thread per child: two children share two cores
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}


def run_train(argv: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TRAIN_PY, *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=TIMEOUT_S, env=child_env())


def prepare(case: Case, ctx: Ctx, base: str) -> Prepared:
    d = osp.join(base, case.id)
    out = osp.join(d, "out")
    os.makedirs(out)
    with open(osp.join(out, "precious.txt"), "wb") as f:
        f.write(PRECIOUS)
    with open(osp.join(out, "results.json"), "wb") as f:
        f.write(EARLIER_RESULTS)
    argv, fragments = case.build(ctx, d, out)
    return Prepared(argv, fragments, out)


def execute(case: Case, ctx: Ctx, base: str, run_failure: str = "") -> Outcome:
    """Build the case, run it, and read back OUTPUT_DIR's two earlier files. A failure to build the case
    (or the shared run it needs) is recorded, so that one case fails rather than the whole battery."""
    outcome = Outcome(Prepared([], [], ""))
    if run_failure:
        outcome.setup_error = run_failure
        return outcome
    try:
        prepared = outcome.prepared = prepare(case, ctx, base)
        cleanup = None
        if case.setup_out:  # just before the run, so that a protected folder never outlives it
            prepared.skip, cleanup = case.setup_out(prepared.out_dir)
    except Exception as e:  # noqa: BLE001  (reported by the case's test)
        outcome.setup_error = f"building the case failed: {type(e).__name__}: {e}"
        return outcome
    if prepared.skip:
        return outcome
    start = time.time()
    try:
        proc = run_train(prepared.argv, osp.dirname(prepared.out_dir))
        outcome.returncode, outcome.stdout, outcome.stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        outcome.setup_error = f"train.py did not finish in {TIMEOUT_S} s: {prepared.argv}"
    finally:
        if cleanup:
            cleanup()
    outcome.seconds = time.time() - start
    for name in ("precious.txt", "results.json"):
        path = osp.join(prepared.out_dir, name)
        outcome.after[name] = open(path, "rb").read() if osp.isfile(path) else None
    return outcome


def tree_digest(folder: str) -> dict[str, str]:
    digest = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = osp.join(dirpath, name)
            digest[osp.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digest


@pytest.fixture(scope="module")
def battery(tmp_path_factory, synthetic_root, tiny_clip_file):
    import torch

    from clip.model import CLIP

    from engine.modeling.clip_backbone import TINY_CLIP_ARCH

    base = str(tmp_path_factory.mktemp("bad_inputs"))
    real = osp.join(base, "_real")
    make_all(real)
    wide_clip = osp.join(base, "_wide-clip.pt")
    torch.manual_seed(0)
    torch.save(CLIP(**{**TINY_CLIP_ARCH, "transformer_width": 128, "transformer_heads": 2}).state_dict(), wide_clip)
    ctx = Ctx(synth=synthetic_root, tiny_clip=tiny_clip_file, wide_clip=wide_clip, real=real,
              run=osp.join(base, "_run"))

    outcomes: dict[str, Outcome] = {}
    run_failure, digest = "", {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # the shared run first (the longest job), then the cases that do not need it
        trained = pool.submit(run_train, promptemo_argv(ctx.run, ctx), base)
        futures = {}
        for case in sorted(CASES, key=lambda c: (c.needs_run, c.code == 2)):
            if case.needs_run and not digest and not run_failure:
                try:
                    proc = trained.result()
                except subprocess.TimeoutExpired:
                    proc = subprocess.CompletedProcess([], "timeout", "", f"no result in {TIMEOUT_S} s")
                if proc.returncode != 0 or not osp.isfile(osp.join(ctx.run, "model", "model.pth.tar-1")):
                    run_failure = f"training the shared tiny run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
                else:
                    digest = tree_digest(ctx.run)
            futures[case.id] = pool.submit(execute, case, ctx, base, run_failure if case.needs_run else "")
        for case_id, future in futures.items():
            outcomes[case_id] = future.result()
    # shown with -s (or in a failure report): how long each case took and what it said
    for case_id, o in outcomes.items():
        print(f"{case_id:28s} {o.seconds:5.1f}s exit {o.returncode}: {o.stderr.strip()[:200]}")
    return {"outcomes": outcomes, "run_failure": run_failure, "run_digest_before": digest,
            "run_digest_after": tree_digest(ctx.run) if digest else {}}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else [])
    for c in CASES])
def test_mistake_ends_with_one_clear_line(battery, case):
    outcome: Outcome = battery["outcomes"][case.id]
    assert not outcome.setup_error, outcome.setup_error
    if outcome.prepared.skip:
        pytest.skip(outcome.prepared.skip)
    out, err = outcome.stdout, outcome.stderr
    context = f"\n--- exit {outcome.returncode}; stderr:\n{err[-3000:]}\n--- stdout (end):\n{out[-1500:]}"
    assert "Traceback" not in out + err, context
    assert outcome.returncode == case.code, context
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, context
    line = lines[0]
    assert line.startswith(case.starts), context
    for fragment in outcome.prepared.fragments:
        if isinstance(fragment, re.Pattern):
            assert fragment.search(line), f"{fragment.pattern!r} not found in the line:\n{line}"
            continue
        alternatives = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(a in line for a in alternatives), f"none of {alternatives} in the line:\n{line}"
    # nothing destroyed in OUTPUT_DIR
    assert outcome.after == {"precious.txt": PRECIOUS, "results.json": EARLIER_RESULTS}, outcome.after


def test_evaluating_a_run_leaves_it_untouched(battery):
    """The eval-only mistakes read the shared run; none of them may change a file of it."""
    assert not battery["run_failure"], battery["run_failure"]
    assert battery["run_digest_after"] == battery["run_digest_before"]
