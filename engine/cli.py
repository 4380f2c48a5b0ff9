"""Train or evaluate a registered trainer on a registered dataset (Dassl/CoOp's ``train.py``).

The command line of the engine; a project's ``train.py`` imports the packages that register its trainers
and datasets, then calls :func:`cli`::

    python train.py --root DATA --dataset-config-file configs/datasets/mofer.yaml \
        --config-file configs/trainers/PromptEmo/vit_b32.yaml --trainer PromptEmo \
        --source-domains ferplus affectnet oulu --target-domains rafdb \
        --output-dir output/run1 --seed 1 DATASET.UNSEEN_CLASSES fear

Merge order: defaults -> trainer hooks -> dataset yaml -> method yaml -> flags -> trailing KEY VALUE, then
every numeric key checked against its range (:mod:`engine.config.checks`). A flag left out never overrides the
YAML. User mistakes (argparse's included) end with one line on stderr and exit code 2.

The output folder: the main process takes its lock (:mod:`engine.utils.output_lock`) before writing anything
there and removes the temporaries of writes a kill interrupted; the trainer writes ``config.yaml`` and the
dataset's ``splits.json`` once the run is accepted, so a refused run leaves a finished run's folder as it was;
an evaluation (``--eval-only``) into a trained run's folder is refused.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import torch

from engine.config import check_config_values, extend_cfg, get_cfg_default, merge_from_file, merge_from_list
from engine.data.datasets import build_dataset
from engine.trainer import build_trainer
from engine.utils import distributed
from engine.utils.errors import UserError, interrupt_on_sigterm, run_command
from engine.utils.logger import setup_logger
from engine.utils.output_lock import OutputLock
from engine.utils.tools import remove_write_leftovers, set_random_seed, temporary_name

logger = logging.getLogger("train")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a mistake on the command line is one line (a :class:`UserError`, exit code 2)
    with a hint, instead of the whole usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (python {self.prog} --help lists the flags)")


def build_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=str, default=None, help="path to dataset")
    p.add_argument("--output-dir", type=str, default=None, help="output directory")
    p.add_argument("--resume", type=str, default=None, help="checkpoint directory (from which the training resumes)")
    p.add_argument("--seed", type=int, default=None, help="only non-negative value enables a fixed seed (0 included)")
    p.add_argument("--source-domains", type=str, nargs="+", default=None, help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", default=None, help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", default=None, help="data augmentation methods")
    p.add_argument("--config-file", type=str, default=None, help="path to config file")
    p.add_argument("--dataset-config-file", type=str, default=None, help="path to config file for dataset setup")
    p.add_argument("--trainer", type=str, default=None, help="name of trainer")
    p.add_argument("--backbone", type=str, default=None, help="name of CNN backbone")
    p.add_argument("--head", type=str, default=None, help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default=None, help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=str, default=None,
                   help="load model weights at this epoch for evaluation (a number, 'last' or 'best')")
    p.add_argument("--no-train", action="store_true",
                   help="do not train: print the data split (no model is loaded) and exit")
    p.add_argument("opts", default=None, nargs="*",
                   help="modify config options using the command-line (KEY VALUE pairs)")
    return p


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags. A list flag followed directly by trailing ``KEY VALUE`` pairs
    (``--target-domains rafdb DATASET.UNSEEN_CLASSES fear``) would swallow them in plain argparse;
    everything from the first config key on goes back to the trailing options. Flags may also come
    after the options (intermixed parsing)."""
    args = build_parser().parse_intermixed_args(argv)
    for flag in ("source_domains", "target_domains", "transforms"):
        values = getattr(args, flag)
        if values:
            cut = next((i for i, v in enumerate(values) if _CONFIG_KEY.match(v)), None)
            if cut is not None:
                setattr(args, flag, values[:cut] or None)
                args.opts = values[cut:] + list(args.opts or [])
    return args


def reset_cfg(cfg, args: argparse.Namespace) -> None:
    """Copy the flags the user actually gave into the config (None means 'not given')."""
    flag_to_key = {
        "root": "DATASET.ROOT", "output_dir": "OUTPUT_DIR", "resume": "RESUME", "seed": "SEED",
        "source_domains": "DATASET.SOURCE_DOMAINS", "target_domains": "DATASET.TARGET_DOMAINS",
        "transforms": "INPUT.TRANSFORMS", "trainer": "TRAINER.NAME", "backbone": "MODEL.BACKBONE.NAME",
        "head": "MODEL.HEAD.NAME",
    }
    pairs = []
    for flag, key in flag_to_key.items():
        value = getattr(args, flag)
        if value is not None:
            pairs += [key, value]
    if pairs:
        # Through the same merge as KEY VALUE pairs, so types are checked the same way.
        node_pairs = []
        for key, value in zip(pairs[0::2], pairs[1::2]):
            node_pairs += [key, repr(list(value)) if isinstance(value, list) else
                           (repr(value) if isinstance(value, str) else str(value))]
        merge_from_list(cfg, node_pairs, where="the command-line flags")


def setup_cfg(args: argparse.Namespace):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list(cfg, args.opts or [])
    if not cfg.TRAINER.NAME:
        raise UserError("no trainer given: pass --trainer NAME or set TRAINER.NAME in the config file")
    if not cfg.DATASET.NAME:
        raise UserError("no dataset given: pass --dataset-config-file FILE (or set DATASET.NAME)")
    check_config_values(cfg)
    cfg.freeze()
    return cfg


def main(args: argparse.Namespace) -> None:
    cfg = setup_cfg(args)
    if args.no_train and not args.eval_only:
        # Inspect the data only: no model, no files written.
        cfg.defrost()
        cfg.OUTPUT_DIR = ""
        cfg.freeze()
        setup_logger(None)
        build_dataset(cfg)
        return
    distributed.init_distributed(cfg.USE_CUDA)
    main_process = distributed.is_main_process()
    lock = None
    if main_process:
        check_writable(cfg.OUTPUT_DIR)
        # Before anything is written there: a second run into the folder stops here, naming the first
        lock = OutputLock.acquire(cfg.OUTPUT_DIR, cfg.OUTPUT_LOCK_STALE_S)
    try:
        run(cfg, args, main_process, lock)
    finally:
        if lock is not None:
            lock.release()


def run(cfg, args: argparse.Namespace, main_process: bool, lock: OutputLock | None) -> None:
    """Train or evaluate, with the output folder locked (on the main process)."""
    # Under torchrun only rank 0 writes log.txt; the others report warnings and errors on the console.
    setup_logger(cfg.OUTPUT_DIR if main_process else None, level=logging.INFO if main_process else logging.WARNING)
    set_random_seed(cfg.SEED)
    logger.info("Command: %s", " ".join(sys.argv))
    if lock is not None and lock.took_over:
        logger.warning("Output folder %s: %s", cfg.OUTPUT_DIR, lock.took_over)
    if main_process:
        removed = remove_write_leftovers(cfg.OUTPUT_DIR, locked=True)
        if removed:
            logger.info("Removed %d temporary file(s) of interrupted writes: %s", len(removed), ", ".join(removed))
    logger.info("torch %s, device %s, processes %d", torch.__version__, distributed.training_device(cfg.USE_CUDA),
                distributed.world_size())
    # config.yaml and splits.json are written by the trainer once the run is accepted (Trainer.write_run_files)
    trainer = build_trainer(cfg)
    if args.eval_only:
        refuse_trained_output_dir(trainer, cfg.OUTPUT_DIR)
        trainer.load_model(args.model_dir, epoch=parse_load_epoch(args.load_epoch))
        trainer.test()  # as Dassl's train.py: after load_model, test() reports and writes results.json
        return
    trainer.train()


def refuse_trained_output_dir(trainer, output_dir: str) -> None:
    """An evaluation writes results.json and config.yaml: never into the folder of a trained run, whose
    results they would replace (a ``--load-epoch 5`` evaluation in place of the finished run's)."""
    saved = trainer.saved_checkpoints(output_dir)
    if saved:
        raise UserError(f"--output-dir {output_dir} holds a trained run ({saved[0]}); an evaluation there would "
                        f"replace its results.json: write the evaluation to another --output-dir (--model-dir reads "
                        f"the run)")


def check_writable(folder: str) -> None:
    """Fail now, with the folder's name, rather than after hours of training at the first save."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = temporary_name(os.path.join(folder, "write-test"))  # this process's own name: runs may race here
        open(probe, "wb").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable: {e.strerror or e} (--output-dir / OUTPUT_DIR)") from None


def parse_load_epoch(value: str | None) -> int | str | None:
    """``--load-epoch``: an epoch number, ``last`` (the newest checkpoint) or ``best`` (model-best)."""
    if value is None or value == "last":
        return None
    if value == "best":
        return "best"
    if value.isdigit():
        return int(value)
    raise UserError(f"--load-epoch takes an epoch number, 'last' or 'best'; got '{value}'")


def cli(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status. SIGTERM ends it as
    Ctrl-C does (``interrupted``, 130), releasing the output folder's lock on the way."""
    restore = interrupt_on_sigterm()
    try:
        return run_command(lambda: main(parse_args(argv)))
    finally:
        restore()
