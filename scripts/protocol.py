"""The MO-FER protocol: every target x unseen class x seed x method, one train.py run each.

    python scripts/protocol.py                       # all 4 targets x 7 classes x 3 seeds x 9 methods
    python scripts/protocol.py --dry-run > jobs.txt  # one command per line, for your own scheduler
    python scripts/protocol.py --methods PromptEmo --targets rafdb --unseen fear -- OPTIM.MAX_EPOCH 30
    python scripts/protocol.py --estimate --throughput 9000       # runs left, images, GPU-hours
    python scripts/protocol.py --gpus all                        # one run per GPU of this machine
    python scripts/protocol.py --launcher slurm --partition gpu --time 2:00 --wait   # a Slurm cluster

Each run goes to ``OUT/<target>/<unseen>/<method>/seed<k>``; the sources are the other domains of
``--domains``; runs whose ``results.json`` exists are skipped (so an interrupted protocol continues where
it stopped, and a run killed mid-way resumes from its own checkpoint). Arguments after ``--`` are passed
to every train.py call as trailing ``KEY VALUE`` pairs. ``scripts/promptemo.sh`` and
``scripts/baselines.sh`` are this runner restricted to one cell.

Where the runs go: by default one after another in this console. ``--gpus 0,1,2,3`` (or ``all``) keeps one
run per GPU going and ``--jobs N`` N runs on CPUs (package ``launch.pool``: a console log per run, a
progress line); ``--launcher slurm`` submits them to a cluster through submitit (``launch.slurm``);
``--estimate`` prints what they will cost (``launch.estimate``).

Configs: ``configs/trainers/<method>/<variant>.yaml``. The default variant, ``paper``, is each method's
config with the original's settings: the one file of its folder not named ``tiny*`` (it is named after the
backbone: ``vit_b32.yaml``, ``resnet18.yaml``, ``resnet34.yaml``); ``tiny`` and ``tiny_pretrained`` are
every method's CPU sizes.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the launch package of this checkout, installed or not
from engine.utils.errors import run_command  # noqa: E402
from launch.runs import Run  # noqa: E402

DOMAINS = ("rafdb", "ferplus", "affectnet", "oulu")
CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
METHODS = ("PromptEmo", "Baseline", "CoOp", "ZSCLIP", "NENO", "OSFER", "DUML", "LACMFER", "LACMFERCLIP")
PAPER_VARIANT = "paper"


def in_repo(*parts: str) -> str:
    """A path inside the repository, relative to the current folder (short commands, any cwd)."""
    return os.path.relpath(os.path.join(REPO, *parts))


def method_config(method: str, variant: str) -> str:
    """The config of ``method`` for ``variant`` (see the module docstring); for ``paper``, an error message
    when the method's folder does not hold exactly one such file."""
    if variant != PAPER_VARIANT:
        return in_repo("configs", "trainers", method, f"{variant}.yaml")
    folder = os.path.join(REPO, "configs", "trainers", method)
    found = sorted(f for f in os.listdir(folder) if f.endswith(".yaml") and not f.startswith("tiny")) \
        if os.path.isdir(folder) else []
    if len(found) != 1:
        where = f"{', '.join(found)} in {folder}" if found else f"none in {folder}"
        raise ValueError(f"no single config with the original's settings for {method} ({where}); give --config "
                         f"or --variant")
    return in_repo("configs", "trainers", method, found[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="registered trainer names")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), help="all domains; each target's sources are the others")
    p.add_argument("--targets", nargs="+", default=None, help="targets to run (default: every domain)")
    p.add_argument("--unseen", nargs="+", default=list(CLASSES), help="unseen classes to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--data", default="./data", help="dataset root (DATASET.ROOT)")
    p.add_argument("--out", default="output/mofer", help="output root")
    p.add_argument("--dataset-config", default=in_repo("configs", "datasets", "mofer.yaml"))
    p.add_argument("--variant", default=PAPER_VARIANT,
                   help="config file name under configs/trainers/<method>/ (default: paper, each method's "
                        "config with the original's settings)")
    p.add_argument("--config", default=None, help="explicit trainer config (only with a single method)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--dry-run", action="store_true", help="print the commands of unfinished runs, run nothing")
    p.add_argument("--keep-going", action="store_true",
                   help="one after another: continue after a failed run (default: stop)")
    p.add_argument("opts", nargs="*", help="after --: KEY VALUE pairs for every run")
    many = p.add_argument_group("several runs at once on this machine (console output to <run>/console.log)")
    many.add_argument("--gpus", default=None, metavar="IDS",
                      help="GPU ids (0,1,2,3; as CUDA_VISIBLE_DEVICES takes them) or 'all': one run per GPU")
    many.add_argument("--jobs", type=int, default=None, metavar="N", help="N runs at once (CPU machines)")
    many.add_argument("--gpus-per-run", type=int, default=None, metavar="K",
                      help="K GPUs per run, through torchrun --nproc_per_node K (default 1)")
    many.add_argument("--fail-fast", action="store_true", help="stop every run at the first failure")
    cluster = p.add_argument_group("a Slurm cluster, through submitit (pip install -e .[slurm])")
    cluster.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                         help="local: this machine (default); slurm: one job per run; submitit-local: "
                              "submitit's local executor (the cluster launcher without a cluster)")
    cluster.add_argument("--partition", default=None, help="Slurm partition")
    cluster.add_argument("--time", default=None, metavar="H:MM", help="time limit of one run (required)")
    cluster.add_argument("--cpus-per-run", type=int, default=None, help="CPUs of one run's job")
    cluster.add_argument("--mem-gb", type=float, default=None, help="memory of one run's job")
    cluster.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                         help="any other sbatch option (account=abc, qos=normal, constraint=h100); repeatable")
    cluster.add_argument("--array", action="store_true", help="submit one job array instead of one job per run")
    cluster.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                         help="at most N array tasks at once")
    cluster.add_argument("--wait", action="store_true",
                         help="wait for the jobs and report (default: submit and exit; re-run to collect)")
    cluster.add_argument("--poll", type=float, default=60.0, metavar="S", help="seconds between checks with --wait")
    cluster.add_argument("--max-attempts", type=int, default=3,
                         help="submissions of a run before a failure is final (default 3)")
    cost = p.add_argument_group("the cost before anything runs")
    cost.add_argument("--estimate", action="store_true",
                      help="print runs left, images per run and GPU-hours per method, run nothing")
    cost.add_argument("--throughput", action="append", default=[], metavar="[METHOD=]IMAGES_PER_S",
                      help="training images/s per GPU, for all methods or one; repeatable")
    cost.add_argument("--bench", default=None, metavar="FILE",
                      help="throughput from scripts/bench.py --json FILE (fast or dassl figure per run)")
    return p


def check(args: argparse.Namespace) -> str | None:
    """The first mistake that would otherwise fail once per run, or None."""
    targets = args.targets or args.domains
    unknown = [t for t in targets if t not in args.domains]
    if unknown:
        return f"target '{unknown[0]}' is not one of the domains ({' '.join(args.domains)})"
    if args.config and len(args.methods) != 1:
        return "--config applies to one method; give --methods NAME"
    for method in args.methods:
        try:
            config = args.config or method_config(method, args.variant)
        except ValueError as e:
            return str(e)
        if not os.path.isfile(config):
            return f"no config for {method}: {config} does not exist"
    return check_launch(args)


def check_launch(args: argparse.Namespace) -> str | None:
    """Mistakes in how the runs are to be launched, or None."""
    cluster = args.launcher != "local"
    if args.gpus is not None and args.jobs is not None:
        return "--gpus and --jobs both say how many runs go at once; give one"
    if args.jobs is not None and args.jobs < 1:
        return f"--jobs must be at least 1, got {args.jobs}"
    if args.gpus_per_run is not None and (args.gpus_per_run < (0 if cluster else 1)):
        return f"--gpus-per-run must be at least {0 if cluster else 1}, got {args.gpus_per_run}"
    if args.gpus_per_run is not None and not cluster and args.gpus is None:
        return "--gpus-per-run needs --gpus (the GPUs to share out) or --launcher slurm"
    if cluster and (args.gpus is not None or args.jobs is not None):
        return f"--launcher {args.launcher} runs each run as a job; --gpus/--jobs are for --launcher local"
    cluster_only = {"--partition": args.partition, "--time": args.time, "--cpus-per-run": args.cpus_per_run,
                    "--mem-gb": args.mem_gb, "--slurm-option": args.slurm_option, "--array": args.array,
                    "--array-parallelism": args.array_parallelism, "--wait": args.wait}
    given = [flag for flag, value in cluster_only.items() if value not in (None, False, [])]
    if given and not cluster:
        return f"{given[0]} is for --launcher slurm (or submitit-local)"
    if cluster and not args.time and not (args.dry_run or args.estimate):
        return f"--launcher {args.launcher} needs --time H:MM, the time limit of one run (see --estimate)"
    if args.fail_fast and args.keep_going:
        return "--fail-fast and --keep-going contradict each other"
    if (args.throughput or args.bench) and not args.estimate:
        return "--throughput and --bench are for --estimate"
    return None


def runs(args: argparse.Namespace) -> list[Run]:
    """Every run of the protocol, in target, class, method, seed order."""
    found = []
    for target in args.targets or args.domains:
        sources = [d for d in args.domains if d != target]
        for unseen in args.unseen:
            for method in args.methods:
                config = args.config or method_config(method, args.variant)
                for seed in args.seeds:
                    out = os.path.join(args.out, target, unseen, method, f"seed{seed}")
                    cmd = [args.python, in_repo("train.py"), "--root", args.data, "--dataset-config-file", args.dataset_config,
                           "--config-file", config, "--trainer", method, "--source-domains", *sources,
                           "--target-domains", target, "--seed", str(seed), "--output-dir", out,
                           "DATASET.UNSEEN_CLASSES", unseen, *args.opts]
                    found.append(Run(out, tuple(cmd), method))
    return found


def one_after_another(todo: list[Run], keep_going: bool) -> int:
    """Each run in this console, in turn (the default launcher)."""
    failed = 0
    for run in todo:
        print(f"run  {run.out}", flush=True)
        code = subprocess.call(run.command)
        if code:
            failed += 1
            if not keep_going:
                return code
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
        return 1
    return 0


def start_runs(args: argparse.Namespace, todo: list[Run], done_before: int) -> int:
    """Run ``todo`` (the unfinished runs) where ``args`` say."""
    if args.estimate:
        from launch.estimate import estimate_table, parse_throughputs
        slots = None
        if args.gpus is not None:
            from launch.pool import gpu_slots
            slots = len(gpu_slots(args.gpus, args.gpus_per_run or 1)) * (args.gpus_per_run or 1)
        print(estimate_table(todo, parse_throughputs(args.throughput), args.bench, parallel_gpus=slots))
        return 0
    if args.launcher != "local":
        from launch.slurm import ClusterSettings, parse_options, parse_time, run_on_cluster
        slurm = args.launcher == "slurm"
        settings = ClusterSettings(
            cluster="slurm" if slurm else "local", time_min=parse_time(args.time),
            gpus_per_run=args.gpus_per_run if args.gpus_per_run is not None else (1 if slurm else 0),
            cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb, partition=args.partition,
            options=parse_options(args.slurm_option), array=args.array, array_parallelism=args.array_parallelism,
            wait=args.wait, poll_s=args.poll, max_attempts=args.max_attempts)
        return run_on_cluster(todo, args.out, settings, done_before=done_before)
    if args.gpus is None and args.jobs is None:
        return one_after_another(todo, args.keep_going)
    from launch.pool import gpu_slots, run_pool
    per_run = args.gpus_per_run or 1
    slots = gpu_slots(args.gpus, per_run) if args.gpus is not None else [None] * args.jobs
    return run_pool(todo, slots, per_run=per_run, fail_fast=args.fail_fast, done_before=done_before)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    error = check(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    todo = []
    all_runs = runs(args)
    for run in all_runs:
        if run.finished:
            if not (args.dry_run or args.estimate):
                print(f"skip {run.out} (results.json exists)", flush=True)
            continue
        if args.dry_run:
            print(shlex.join(run.command))
            continue
        todo.append(run)
    if args.dry_run:
        return 0
    status = 0

    def body() -> None:
        nonlocal status
        status = start_runs(args, todo, done_before=len(all_runs) - len(todo))

    return run_command(body) or status


if __name__ == "__main__":
    sys.exit(main())
