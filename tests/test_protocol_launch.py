"""scripts/protocol.py at scale: the pool of one machine (--gpus, --jobs), the cluster launcher through
submitit (its local executor, and a real single-node Slurm where one can be started), and --estimate.

The runs here are a fake train command (``--python FAKE``: a small script that prints what it sees, sleeps,
then writes results.json or fails), so that the launching is tested in seconds, not the training."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, SYNTH_OPTS, load_script
from engine.utils.errors import UserError
from launch import pool

protocol = load_script("protocol")

FAKE_TRAIN = textwrap.dedent("""\
    #!{python}
    # A stand-in for `python train.py ...`: FAKE_FAIL and FAKE_SLOW name output folders (substrings, commas)
    import json, os, sys, time
    out = sys.argv[sys.argv.index("--output-dir") + 1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pid"), "w") as f:
        f.write(str(os.getpid()))
    matches = lambda var: any(s and s in out for s in os.environ.get(var, "").split(","))
    print("FAKE " + json.dumps({{"start": time.time(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                "omp": os.environ.get("OMP_NUM_THREADS"), "argv": sys.argv[1:]}}), flush=True)
    time.sleep(float(os.environ.get("FAKE_SLOW_S", "60")) if matches("FAKE_SLOW") else float(os.environ.get("FAKE_SLEEP", "0.3")))
    if matches("FAKE_FAIL"):
        print("failing on purpose", file=sys.stderr)
        sys.exit(3)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({{"metrics": {{}}}}, f)
    print("FAKE " + json.dumps({{"end": time.time()}}), flush=True)
    """)


@pytest.fixture
def fake_train(tmp_path, monkeypatch) -> str:
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_TRAIN.format(python=sys.executable))
    path.chmod(0o755)
    for var in ("FAKE_FAIL", "FAKE_SLOW", "FAKE_SLEEP", "FAKE_SLOW_S"):
        monkeypatch.delenv(var, raising=False)
    return str(path)


def cell(fake: str, out, *extra: str, methods=("PromptEmo", "CoOp")) -> list[str]:
    """protocol.py arguments: one target, one unseen class, ``methods`` x seeds 1-3, the fake train command."""
    return ["--python", fake, "--out", str(out), "--targets", "rafdb", "--unseen", "fear", "--methods", *methods, *extra]


def fake_lines(run_dir) -> list[dict]:
    """What the fake printed in a run's console log, attempt after attempt."""
    with open(os.path.join(run_dir, "console.log")) as f:
        return [json.loads(line[5:]) for line in f if line.startswith("FAKE ")]


def starting(text: str, word: str) -> int:
    """How many lines of ``text`` are ``word`` events (``run  ...``, ``submit ...``)."""
    return sum(line.startswith(word + " ") for line in text.splitlines())


def test_one_run_per_gpu_at_most_and_at_once_the_next_as_one_ends(fake_train, tmp_path, capsys):
    out = tmp_path / "mofer"
    finished = out / "rafdb" / "fear" / "CoOp" / "seed2"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")
    assert protocol.main(cell(fake_train, out, "--gpus", "0,1")) == 0
    stdout = capsys.readouterr().out
    assert f"skip {finished} (results.json exists)" in stdout
    runs = [out / "rafdb" / "fear" / m / f"seed{s}" for m in ("PromptEmo", "CoOp") for s in (1, 2, 3)]
    todo = [r for r in runs if r != finished]
    assert all((r / "results.json").is_file() for r in runs) and not (finished / "console.log").exists()
    seen = {r: fake_lines(r) for r in todo}
    assert all(len(lines) == 2 for lines in seen.values())  # one attempt each: a start line and an end line
    assert {lines[0]["cuda"] for lines in seen.values()} == {"0", "1"}  # each run saw its one GPU
    spans = [(lines[0]["start"], lines[1]["end"]) for lines in seen.values()]
    at_once = [sum(s <= t < e for s, e in spans) for t, _ in spans]
    assert max(at_once) == 2  # both GPUs busy, never more than one run on each
    lines = stdout.strip().splitlines()
    assert sum(line.startswith("run  ") for line in lines) == 5 and sum(line.startswith("done ") for line in lines) == 5
    assert re.fullmatch(r"progress: done 6/6, running 0, failed 0, left 0, ETA 0s", lines[-1])


def test_a_failed_run_does_not_stop_the_others_and_a_rerun_retries_only_it(fake_train, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mofer"
    monkeypatch.setenv("FAKE_FAIL", "CoOp/seed2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert protocol.main(cell(fake_train, out, "--jobs", "2")) == 1
    captured = capsys.readouterr()
    failed = out / "rafdb" / "fear" / "CoOp" / "seed2"
    assert f"failed {failed} (exit code 3 after" in captured.out
    assert "progress: done 5/6, running 0, failed 1, left 0" in captured.out
    assert captured.err.strip() == f"1 run(s) failed: {failed}"
    assert sum((out / "rafdb" / "fear" / m / f"seed{s}" / "results.json").is_file()
               for m in ("PromptEmo", "CoOp") for s in (1, 2, 3)) == 5
    assert "failing on purpose" in (failed / "console.log").read_text()
    omp = fake_lines(out / "rafdb" / "fear" / "PromptEmo" / "seed1")[0]["omp"]
    assert omp == str(max(1, (os.cpu_count() or 1) // 2))  # CPU runs share the cores

    monkeypatch.delenv("FAKE_FAIL")
    assert protocol.main(cell(fake_train, out, "--jobs", "2")) == 0
    again = capsys.readouterr().out
    assert starting(again, "skip") == 5 and starting(again, "run ") == 1 and f"done {failed}" in again
    log = (failed / "console.log").read_text()
    assert log.count("### ") == 2 and log.index("failing on purpose") < log.rindex("### ")  # appended, not replaced


def test_fail_fast_stops_the_running_runs_and_starts_no_more(fake_train, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mofer"
    monkeypatch.setenv("FAKE_FAIL", "seed1")
    monkeypatch.setenv("FAKE_SLOW", "seed2")
    start = time.monotonic()
    assert protocol.main(cell(fake_train, out, "--jobs", "2", "--fail-fast", methods=("PromptEmo",))) == 1
    assert time.monotonic() - start < 20  # the 60 s run was stopped
    stdout = capsys.readouterr().out
    assert "--fail-fast: stopping 1 running run(s)" in stdout
    slow = out / "rafdb" / "fear" / "PromptEmo" / "seed2"
    assert not (slow / "results.json").exists() and not _alive(int((slow / "pid").read_text()))
    assert not (out / "rafdb" / "fear" / "PromptEmo" / "seed3").exists()  # never started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (ended, not reaped by its parent yet) is not running
        return f.read().split(") ")[1][0] != "Z"


def test_ctrl_c_stops_the_children_and_keeps_the_finished_runs(fake_train, tmp_path):
    out = tmp_path / "mofer"
    env = {**os.environ, "FAKE_SLOW": "seed2,seed3", "FAKE_SLEEP": "0.1"}
    command = [sys.executable, os.path.join(ROOT, "scripts", "protocol.py"),
               *cell(fake_train, out, "--jobs", "2", methods=("PromptEmo",))]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cell_dir = out / "rafdb" / "fear" / "PromptEmo"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((cell_dir / f"seed{s}" / "pid").exists() for s in (2, 3)):
        time.sleep(0.1)
    pids = [int((cell_dir / f"seed{s}" / "pid").read_text()) for s in (2, 3)]
    launcher.send_signal(signal.SIGINT)
    stdout, _ = launcher.communicate(timeout=30)
    assert launcher.returncode == 130
    assert "interrupted: stopping 2 running run(s)" in stdout
    assert (cell_dir / "seed1" / "results.json").is_file()  # finished before: intact
    assert not any(_alive(pid) for pid in pids)
    assert not any((cell_dir / f"seed{s}" / "results.json").exists() for s in (2, 3))


def test_gpus_per_run_groups_the_gpus_and_runs_torchrun(fake_train, tmp_path, capsys):
    out = tmp_path / "mofer"
    assert protocol.main(cell(fake_train, out, "--gpus", "0,1,2,3", "--gpus-per-run", "2", methods=("PromptEmo",))) == 0
    seen = [fake_lines(out / "rafdb" / "fear" / "PromptEmo" / f"seed{s}")[0] for s in (1, 2, 3)]
    assert {line["cuda"] for line in seen} == {"0,1", "2,3"}
    assert all(line["argv"][:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
               and line["argv"][4].endswith("train.py") for line in seen)


def test_gpu_slots(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert pool.gpu_slots("all", 1) == ["3", "5"] and pool.gpu_slots("all", 2) == ["3,5"]
    assert pool.gpu_slots("0,0,1", 1) == ["0", "0", "1"]  # an id twice: two runs share that GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert pool.gpu_slots("all", 1) == ["0", "1", "2"]
    with pytest.raises(UserError, match="--gpus-per-run 2 does not divide the 3 GPUs"):
        pool.gpu_slots("all", 2)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no GPU found .* use --jobs N"):
        pool.gpu_slots("all", 1)


def test_eta_from_the_finished_runs():
    # mean 15 s; 3 runs left (45 s) + the running one's 15 - 5 = 10 s, over 2 slots
    assert pool.eta_seconds([10.0, 20.0], [5.0], left=3, slots=2) == pytest.approx(27.5)
    assert pool.eta_seconds([10.0], [30.0], left=0, slots=1) == 0.0  # an overdue run counts as ending now
    assert pool.eta_seconds([], [5.0], left=3, slots=2) is None
    assert [pool.duration(s) for s in (42, 725, 11220, 187200)] == ["42s", "12m05s", "3h07m", "2d04h"]


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0", "--jobs", "2"], "--gpus and --jobs both say"),
    (["--gpus-per-run", "2"], "--gpus-per-run needs --gpus"),
    (["--launcher", "slurm"], "--launcher slurm needs --time H:MM"),
    (["--launcher", "slurm", "--time", "1:00", "--gpus", "0"], "--gpus/--jobs are for --launcher local"),
    (["--wait"], "--wait is for --launcher slurm"),
    (["--throughput", "9000"], "--throughput and --bench are for --estimate"),
    (["--estimate", "--throughput", "fast"], "--throughput takes images/s"),
    (["--launcher", "slurm", "--time", "soon"], "--time takes H:MM"),
    (["--launcher", "slurm", "--time", "1:00", "--slurm-option", "account"], "--slurm-option takes KEY=VALUE"),
])
def test_launch_mistakes_are_one_line(args, message, tmp_path, capsys):
    assert protocol.main(["--out", str(tmp_path), "--methods", "PromptEmo", "--targets", "rafdb", "--unseen", "fear",
                          *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_cluster_launcher_without_submitit_names_the_extra(fake_train, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    assert protocol.main(cell(fake_train, tmp_path, "--launcher", "slurm", "--time", "1:00")) == 2
    assert capsys.readouterr().err.strip() == "error: the cluster launcher needs submitit: pip install -e .[slurm]"


def test_parse_time():
    from launch.slurm import parse_time
    assert [parse_time(t) for t in ("90", "1:30", "1:30:00", "1:30:20", "2-0:10")] == [90, 90, 90, 91, 2890]


# --- the cluster launcher, through submitit's local executor ----------------------------------------------

def _record(out) -> dict:
    return json.loads((out / "slurm" / "jobs.json").read_text())


def test_submitit_local_submits_once_collects_and_resubmits_failures(fake_train, tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e .[dev] installs it)")
    out = tmp_path / "mofer"
    args = cell(fake_train, out, "--launcher", "submitit-local", "--time", "5", "--poll", "0.2", methods=("PromptEmo",))
    monkeypatch.setenv("FAKE_FAIL", "seed2")
    monkeypatch.setenv("FAKE_SLEEP", "2")
    assert protocol.main(args) == 0  # submitted, not waited for
    first = capsys.readouterr().out
    record = _record(out)
    assert sorted(record) == [f"rafdb/fear/PromptEmo/seed{s}" for s in (1, 2, 3)]
    assert all(e["attempts"] == 1 for e in record.values()) and starting(first, "submit") == 3

    assert protocol.main(args) == 0  # the jobs still run: none is submitted twice
    second = capsys.readouterr().out
    assert second.count("not submitted again") == 3 and starting(second, "submit") == 0 and _record(out) == record

    assert protocol.main([*args, "--wait"]) == 1  # wait, then report the failure
    third = capsys.readouterr()
    failed = out / "rafdb" / "fear" / "PromptEmo" / "seed2"
    assert f"failed {failed} (job {record['rafdb/fear/PromptEmo/seed2']['job_id']}; log" in third.out
    assert "progress: done 2/3, running 0, failed 1, left 0" in third.out
    assert "failing on purpose" in (failed / "console.log").read_text()

    assert protocol.main([*args, "--max-attempts", "1"]) == 1  # given up: reported, not submitted
    assert "not submitted again, --max-attempts allows more" in capsys.readouterr().out

    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.setenv("FAKE_SLEEP", "0.1")
    assert protocol.main([*args, "--wait"]) == 0  # collected: the failed run goes again, the others are skipped
    fourth = capsys.readouterr().out
    assert starting(fourth, "skip") == 2 and f"submit {failed} (job " in fourth and "attempt 2)" in fourth
    assert (failed / "results.json").is_file() and _record(out)["rafdb/fear/PromptEmo/seed2"]["attempts"] == 2


# --- a real single-node Slurm ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A single-node Slurm started for these tests (tests/local_slurm.py), or a skip with the reason."""
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e .[dev] installs it)")
    import local_slurm

    try:
        cluster = local_slurm.start(str(tmp_path_factory.mktemp("slurm")))
    except local_slurm.Unavailable as e:
        pytest.skip(f"no single-node Slurm here: {e}")
    yield cluster
    cluster.stop()


def test_slurm_job_array_then_collect_and_resubmit(slurm_cluster, fake_train, tmp_path, capsys, monkeypatch):
    for name, value in slurm_cluster.env.items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    out = tmp_path / "mofer"
    args = cell(fake_train, out, "--launcher", "slurm", "--partition", "debug", "--time", "0:05", "--gpus-per-run",
                "0", "--cpus-per-run", "1", "--array", "--poll", "0.5", methods=("PromptEmo",))
    monkeypatch.setenv("FAKE_FAIL", "seed2")
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    assert protocol.main(args) == 0
    assert starting(capsys.readouterr().out, "submit") == 3
    ids = [e["job_id"] for e in _record(out).values()]
    assert len({i.split("_")[0] for i in ids}) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1", "2"]

    assert protocol.main(args) == 0  # queued or running on the cluster: not submitted twice
    assert capsys.readouterr().out.count("not submitted again") == 3

    assert protocol.main([*args, "--wait"]) == 1
    assert "progress: done 2/3, running 0, failed 1, left 0" in capsys.readouterr().out
    sbatch = next((out / "slurm" / "logs").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --partition=debug" in sbatch and "#SBATCH --time=5" in sbatch and "#SBATCH --array=0-2" in sbatch

    monkeypatch.delenv("FAKE_FAIL")
    assert protocol.main([*args, "--wait"]) == 0
    last = capsys.readouterr().out
    assert starting(last, "skip") == 2 and "attempt 2)" in last
    assert all((out / "rafdb" / "fear" / "PromptEmo" / f"seed{s}" / "results.json").is_file() for s in (1, 2, 3))


# --- the estimate --------------------------------------------------------------------------------------------

def _runs(root: str, out, *opts: str, methods=("PromptEmo",)):
    args = protocol.build_parser().parse_args(
        ["--variant", "tiny", "--domains", "synth_color", "synth_gray", "synth_lab", "synth_wild", "--targets",
         "synth_wild", "--unseen", "fear", "--seeds", "1", "2", "--data", root, "--out", str(out), "--dataset-config",
         os.path.join(ROOT, "configs", "datasets", "synthetic.yaml"), "--methods", *methods, "--", *SYNTH_OPTS, *opts])
    return protocol.runs(args)


def test_estimate_sizes_a_run_as_the_engine_steps_through_it(synthetic_root, tmp_path):
    from launch.estimate import Sizer

    # 3 sources x 6 seen classes x 8 = 144 source images, 7 x 8 = 56 target training images, 7 x 4 = 28 test
    sizer = Sizer()

    def cost(*opts: str, methods=("PromptEmo",)):
        return sizer.cost(_runs(synthetic_root, tmp_path, *opts, methods=methods)[0])

    x40 = ["DATALOADER.TRAIN_X.BATCH_SIZE", "40"]
    promptemo = cost(*x40)  # TrainerXU: 144 // 40 = 3 steps (drop_last), 40 source + 40 target images each
    assert (promptemo.epochs, promptemo.train_images, promptemo.eval_images) == (15, 3 * 80 * 15, 28)
    u20 = [*x40, "DATALOADER.TRAIN_U.SAME_AS_X", "False", "DATALOADER.TRAIN_U.BATCH_SIZE", "20"]
    assert cost(*u20).train_images == 3 * 60 * 15  # steps follow the sources (TRAIN.COUNT_ITER train_x)
    assert cost(*u20, "TRAIN.COUNT_ITER", "train_u").train_images == (56 // 20) * 60 * 15
    assert cost(*x40, "TRAIN.COUNT_ITER", "smaller_one").train_images == min(3, 56 // 40) * 80 * 15
    coop = cost(*x40, methods=("CoOp",))  # TrainerX: the sources alone, 5 epochs
    assert coop.train_images == 3 * 40 * 5
    assert cost(methods=("ZSCLIP",)).train_images == 0  # zero-shot: evaluation only
    assert cost(*x40, "DATALOADER.CACHE.ENABLED", "True").cached


def test_estimate_table_per_method_and_total(synthetic_root, tmp_path, capsys):
    out = tmp_path / "mofer"
    finished = out / "synth_wild" / "fear" / "CoOp" / "seed1"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"images_per_s": {"dassl": 0.1, "fast": 0.4}, "backbone": "ViT-B/32",
                                 "device": "a GPU", "date": "2026-01-01"}))
    base = [str(a) for a in ["--variant", "tiny", "--domains", "synth_color", "synth_gray", "synth_lab", "synth_wild",
                             "--targets", "synth_wild", "--unseen", "fear", "--seeds", "1", "2", "--data", synthetic_root,
                             "--out", out, "--dataset-config", os.path.join(ROOT, "configs", "datasets", "synthetic.yaml"),
                             "--methods", "PromptEmo", "CoOp", "--estimate"]]
    assert protocol.main([*base, "--throughput", "0.1", "--throughput", "CoOp=0.05", "--", *SYNTH_OPTS]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| ") and "method" not in line}
    # PromptEmo tiny: 144 // 48 = 3 steps of 48 + 48 images, 15 epochs = 4,320, plus 28 test images, at 0.1/s
    assert rows["PromptEmo"] == ["2", "15", "4,320", "28", "0.1 (given)", f"{2 * 4348 / 0.1 / 3600:.0f}"]
    # CoOp: one run finished, one left: 3 steps of 48 images, 5 epochs, at 0.05/s
    assert rows["CoOp"][:4] == ["1", "5", "720", "28"] and rows["CoOp"][5] == f"{748 / 0.05 / 3600:.2f}"
    assert rows["total"][0] == "3" and rows["total"][5] == f"{(2 * 4348 / 0.1 + 748 / 0.05) / 3600:.0f}"

    assert protocol.main([*base, "--bench", str(bench), "--", *SYNTH_OPTS, "DATALOADER.CACHE.ENABLED", "True"]) == 0
    shown = capsys.readouterr().out
    assert "0.4 (bench fast)" in shown and f"bench: {bench}: PromptEmo, backbone ViT-B/32, a GPU, 2026-01-01" in shown
    assert "measured on ViT-B/32; CoOp, PromptEmo use(s) another backbone" in shown
    assert protocol.main([*base, "--bench", str(bench), "--", *SYNTH_OPTS]) == 0
    assert "0.1 (bench dassl)" in capsys.readouterr().out  # without the cache: the dassl pipeline's figure
