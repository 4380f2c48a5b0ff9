"""What the runs left will cost, before anything runs (``scripts/protocol.py --estimate``).

For every run its command is read as train.py reads it (the same config merge), its split is built from
the data (file lists only: no image is decoded, no model loaded) and its loaders are sized as the engine
sizes them: steps per epoch from the samplers, ``drop_last`` and ``TRAIN.COUNT_ITER`` (a ``TrainerXU``
method steps through both the source and the target loader, a ``TrainerX`` method through the sources),
images per step from the batch sizes, times ``OPTIM.MAX_EPOCH``. Evaluation adds the test split once (and
the validation split every epoch under ``TEST.FINAL_MODEL best_val``).

GPU-hours = images / throughput, with the throughput in images per second per GPU, of training steps:

- given per method or for all (``--throughput 9000``, ``--throughput DUML=20000``), or
- read from ``scripts/bench.py --json FILE`` (``--bench FILE``): its ``fast`` figure for runs with the
  decoded-image cache on (``DATALOADER.CACHE.ENABLED``), its ``dassl`` figure otherwise. bench.py times
  PromptEmo on one backbone: methods on another backbone get a note, and a figure of their own with
  ``--throughput METHOD=N``.

Evaluation images are counted at the training rate (an upper bound: a forward pass costs less than a
training step; they are a small share). Start-up (loading, decoding the cache once, compiling) is not
counted. A run on K GPUs (torchrun) costs about the same GPU-hours as on one, in a K-th of the time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

from tabulate import tabulate

from engine.utils.errors import UserError
from launch.runs import Run


@dataclass
class RunCost:
    method: str
    epochs: int
    train_images: int
    eval_images: int
    cached: bool    # DATALOADER.CACHE.ENABLED: the fast path
    backbone: str


def parse_throughputs(values: Sequence[str]) -> dict[str | None, float]:
    """``--throughput`` values: ``N`` (every method) or ``METHOD=N``; key None for every method."""
    rates: dict[str | None, float] = {}
    for value in values:
        method, sep, number = value.rpartition("=")
        try:
            rate = float(number)
        except ValueError:
            rate = -1.0
        if rate <= 0 or (sep and not method):
            raise UserError(f"--throughput takes images/s (9000) or METHOD=images/s (DUML=20000), got '{value}'")
        rates[method or None] = rate
    return rates


def read_bench(path: str) -> dict:
    """The JSON ``scripts/bench.py --json`` writes: ``images_per_s`` per pipeline, ``backbone``, ``device``..."""
    try:
        with open(path) as f:
            bench = json.load(f)
        rates = bench["images_per_s"]
        if not isinstance(rates, dict) or not rates:
            raise KeyError("images_per_s")
    except FileNotFoundError:
        raise UserError(f"--bench {path}: no such file (write one with: python scripts/bench.py --json {path})") \
            from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--bench {path}: not a bench.py --json file ({e})") from None
    return bench


def _train_argv(run: Run) -> list[str]:
    """The arguments of train.py in the run's command (after ``python train.py``)."""
    command = list(run.command)
    starts = [i for i, part in enumerate(command) if os.path.basename(part) == "train.py"]
    if not starts:
        raise UserError(f"cannot estimate {run.out}: its command does not call train.py")
    return command[starts[0] + 1:]


class Sizer:
    """Sizes runs; splits are built once per distinct dataset configuration (every method and seed of a
    protocol cell shares one) and loaders once per distinct data, loader and schedule settings."""

    def __init__(self) -> None:
        import datasets  # noqa: F401  (registers the datasets and readers)
        import trainers  # noqa: F401  (registers the trainers and their config keys)
        self._datasets: dict[str, object] = {}
        self._costs: dict[tuple, RunCost] = {}

    def cost(self, run: Run) -> RunCost:
        from engine.cli import parse_args, setup_cfg
        from engine.config import merge_from_list

        cfg = setup_cfg(parse_args(_train_argv(run)))
        cfg.defrost()
        # sizes only: no output folder written, no cache decoded, no worker processes
        merge_from_list(cfg, ["OUTPUT_DIR", "", "VERBOSE", "False", "DATALOADER.NUM_WORKERS", "0"])
        cached, cfg.DATALOADER.CACHE.ENABLED = bool(cfg.DATALOADER.CACHE.ENABLED), False
        cfg.freeze()
        seed_matters = cfg.DATALOADER.DOMAIN_EPOCH == "smallest"  # the epoch length depends on the draw
        key = (cfg.DATASET.dump(), cfg.DATALOADER.dump(), cfg.TRAIN.COUNT_ITER, cfg.TEST.dump(), cfg.OPTIM.MAX_EPOCH,
               cfg.TRAINER.NAME, cfg.SEED if seed_matters else None, cached, cfg.MODEL.BACKBONE.NAME)
        if key not in self._costs:
            self._costs[key] = self._size(cfg, cached)
        return self._costs[key]

    def _size(self, cfg, cached: bool) -> RunCost:
        from engine.data.data_manager import DataManager
        from engine.data.datasets import build_dataset
        from engine.trainer import TRAINER_REGISTRY, TrainerXU

        data_key = cfg.DATASET.dump()
        if data_key not in self._datasets:
            self._datasets[data_key] = build_dataset(cfg)
        dm = DataManager(cfg, dataset=self._datasets[data_key])
        epochs = int(cfg.OPTIM.MAX_EPOCH)

        def per_step(loader) -> int:  # a batch, or the whole split when it is smaller (no drop_last then)
            return min(loader.batch_size, len(loader.dataset)) if loader is not None else 0

        x, u = dm.train_loader_x, dm.train_loader_u
        len_x = len(x) if x is not None else 0
        if issubclass(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), TrainerXU) and u is not None:
            steps = {"train_x": len_x, "train_u": len(u), "smaller_one": min(len_x, len(u))}[cfg.TRAIN.COUNT_ITER]
            images_per_step = per_step(x) + per_step(u)
        else:
            steps, images_per_step = len_x, per_step(x)
        evaluations = 0
        if not cfg.TEST.NO_TEST:
            evaluations = len(dm.test_loader.dataset)
            if cfg.TEST.FINAL_MODEL == "best_val" and dm.val_loader is not None:
                evaluations += epochs * len(dm.val_loader.dataset)
        return RunCost(cfg.TRAINER.NAME, epochs, steps * images_per_step * epochs, evaluations, cached,
                       str(cfg.MODEL.BACKBONE.NAME))


def _rate(cost: RunCost, method: str, throughputs: dict[str | None, float],
          bench: dict | None) -> tuple[float | None, str]:
    """(images/s, where the figure comes from) for one run."""
    if method in throughputs:
        return throughputs[method], "given"
    if None in throughputs:
        return throughputs[None], "given"
    if bench is not None:
        pipeline = "fast" if cost.cached else "dassl"
        if pipeline in bench["images_per_s"]:
            return float(bench["images_per_s"][pipeline]), f"bench {pipeline}"
    return None, ""


def hours_text(hours: float | None) -> str:
    return "—" if hours is None else f"{hours:,.2f}" if hours < 10 else f"{hours:,.0f}"


def estimate_table(runs: Sequence[Run], throughputs: dict[str | None, float], bench_path: str | None = None,
                   parallel_gpus: int | None = None) -> str:
    """The estimate of ``runs`` (the unfinished ones) as printed text: one row per method and a total row,
    then notes. ``parallel_gpus``: GPUs used at once (``--gpus``), for a wall-clock line."""
    bench = read_bench(bench_path) if bench_path else None
    sizer = Sizer()
    by_method: dict[str, list[RunCost]] = {}
    hours: dict[str, float | None] = {}
    sources: dict[str, set[str]] = {}
    for run in runs:
        cost = sizer.cost(run)
        by_method.setdefault(run.method, []).append(cost)
        rate, source = _rate(cost, run.method, throughputs, bench)
        images = cost.train_images + cost.eval_images
        previous = hours.get(run.method, 0.0)
        hours[run.method] = None if rate is None or previous is None else previous + images / rate / 3600
        if rate is not None:
            sources.setdefault(run.method, set()).add(f"{rate:,.6g} ({source})")
    rows, total_hours, total_runs = [], 0.0, 0
    for method, costs in by_method.items():
        n = len(costs)
        total_runs += n
        h = hours[method]
        total_hours = None if h is None or total_hours is None else total_hours + h
        epochs = sorted({c.epochs for c in costs})
        rate = ", ".join(sorted(sources.get(method, []))) or "—"
        rows.append([method, n, "/".join(map(str, epochs)), f"{sum(c.train_images for c in costs) / n:,.0f}",
                     f"{sum(c.eval_images for c in costs) / n:,.0f}", rate, hours_text(h)])
    rows.append(["total", total_runs, "", "", "", "", hours_text(total_hours)])
    table = tabulate(rows, headers=["method", "runs left", "epochs", "train images/run", "eval images/run",
                                    "images/s per GPU", "GPU-hours"], tablefmt="github", disable_numparse=True)
    notes = []
    if bench is not None:
        notes.append(f"bench: {bench_path}: PromptEmo, backbone {bench.get('backbone', '?')}, "
                     f"{bench.get('device', '?')}, {bench.get('date', '?')}")
        others = sorted({m for m, costs in by_method.items() for c in costs
                         if m not in throughputs and None not in throughputs
                         and bench.get("backbone") and c.backbone != bench.get("backbone")})
        if others:
            notes.append(f"measured on {bench.get('backbone')}; {', '.join(others)} use(s) another backbone: give "
                         f"--throughput METHOD=images/s for a figure of their own")
    if total_hours is None:
        notes.append("GPU-hours need a throughput: --throughput IMAGES_PER_S (or METHOD=IMAGES_PER_S), or "
                     "--bench FILE from scripts/bench.py --json FILE")
    elif parallel_gpus:
        notes.append(f"on {parallel_gpus} GPU(s) at once: about {total_hours / parallel_gpus:,.1f} hours of wall-clock")
    notes.append("images: training steps (images/run averaged over the runs left) plus evaluation; "
                 "start-up and compilation not counted")
    return table + "\n" + "\n".join(notes)
