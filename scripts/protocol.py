"""The MO-FER protocol: every target x unseen class x seed x method, one train.py run each.

    python scripts/protocol.py                       # all 4 targets x 7 classes x 3 seeds x 7 methods
    python scripts/protocol.py --dry-run > jobs.txt  # one command per line, for your own scheduler
    python scripts/protocol.py --methods PromptEmo --targets rafdb --unseen fear -- OPTIM.MAX_EPOCH 30

Each run goes to ``OUT/<target>/<unseen>/<method>/seed<k>``; the sources are the other domains of
``--domains``; runs whose ``results.json`` exists are skipped (so an interrupted protocol continues where
it stopped, and a run killed mid-way resumes from its own checkpoint). Arguments after ``--`` are passed
to every train.py call as trailing ``KEY VALUE`` pairs. ``scripts/promptemo.sh`` and
``scripts/baselines.sh`` are this runner restricted to one cell.

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
from typing import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("rafdb", "ferplus", "affectnet", "oulu")
CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
METHODS = ("PromptEmo", "Baseline", "CoOp", "ZSCLIP", "DUML", "LACMFER", "LACMFERCLIP")
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
    p.add_argument("--keep-going", action="store_true", help="continue after a failed run (default: stop)")
    p.add_argument("opts", nargs="*", help="after --: KEY VALUE pairs for every run")
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
    return None


def runs(args: argparse.Namespace) -> Iterator[tuple[str, list[str]]]:
    """(output dir, command) of every run of the protocol, in target, class, method, seed order."""
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
                    yield out, cmd


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    error = check(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = 0
    for out, cmd in runs(args):
        if os.path.isfile(os.path.join(out, "results.json")):
            if not args.dry_run:
                print(f"skip {out} (results.json exists)", flush=True)
            continue
        if args.dry_run:
            print(shlex.join(cmd))
            continue
        print(f"run  {out}", flush=True)
        code = subprocess.call(cmd)
        if code:
            failed += 1
            if not args.keep_going:
                return code
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
