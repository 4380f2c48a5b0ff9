"""Trainers in Dassl's shape: ``TrainerBase -> SimpleTrainer -> TrainerX / TrainerXU``.

A method is a subclass that implements ``build_model`` (register what it trains with
``register_model``), ``forward_backward`` and ``model_inference``, decorated with
``@TRAINER_REGISTRY.register()``. Everything else (loaders, the epoch loop, logging, checkpoints,
resume, evaluation and ``results.json``) is shared.

Conventions of this project, on top of Dassl's:

- ``model_inference(images)`` returns seen-class *probabilities* (rows sum to one); the open-set
  evaluator derives predictions and the unseen score ``1 - max`` from them.
- Loss values returned by ``forward_backward`` may be tensors: they are summed on the device and
  read back (one synchronisation) only every ``TRAIN.PRINT_FREQ`` steps, when they are logged to
  the console, ``log.txt``, tensorboard and ``metrics.jsonl``.
- Checkpoints also hold RNG and sampler states, so a resumed run sees the same data order and
  augmentations as one that never stopped.
- Encoders run under ``self.autocast()`` (bf16 where ``TRAIN.PRECISION`` asks for it); trainers
  keep similarities, losses and probabilities in fp32.
- Under torchrun, gradients are averaged over ranks in ``model_update`` and predictions gathered in
  evaluation (``engine.utils.distributed``); only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os.path as osp
import time
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tabulate import tabulate
from tqdm import tqdm

from engine.data import DataManager
from engine.evaluation import METRIC_DESCRIPTIONS, build_evaluator
from engine.registry import Registry
from engine.utils import distributed
from engine.trainer.loop_state import LoaderCursor, NonFiniteWatch
from engine.utils.checkpoint import (capture_rng_state, checkpoint_candidates, checkpoint_name, latest_checkpoint,
                                     load_checkpoint, prune_step_checkpoints, restore_rng_state, save_checkpoint,
                                     step_checkpoint_name)
from engine.utils.errors import NonFiniteLossError, UserError
from engine.utils.meters import AverageMeter
from engine.utils.tools import (COMPILE_MODES, mkdir_if_missing, set_cudnn_benchmark, set_random_seed,
                                uses_cuda_graphs, write_json)

TRAINER_REGISTRY = Registry("TRAINER")
logger = logging.getLogger(__name__)


class TrainerBase:
    """Model registry, optimisation helpers, checkpointing and the epoch loop skeleton."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict[str, torch.optim.Optimizer | None] = OrderedDict()
        self._scheds: OrderedDict[str, Any] = OrderedDict()
        self._writer = None
        self._metrics_file = None
        self.is_main_process = distributed.is_main_process()
        self.use_bf16 = False

    # ----------------------------------------------------------------- models
    def register_model(self, name: str = "model", model: nn.Module | None = None,
                       optim: torch.optim.Optimizer | None = None, sched: Any = None) -> None:
        """Declare a module to be trained, saved and restored (with its optimiser and scheduler)."""
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f"a model named '{name}' is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: str | list[str] | None = None) -> list[str]:
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f"no registered model named '{name}'; registered: {names_real}")
        return names

    def set_model_mode(self, mode: str = "train", names: str | list[str] | None = None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names: str | list[str] | None = None) -> None:
        """Step the schedulers (once per epoch). The epoch loop calls it at the end of an epoch
        unless ``forward_backward`` already did, as trainers written for Dassl do."""
        self._lr_updated = True
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def get_current_lr(self, names: str | list[str] | None = None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    # ------------------------------------------------------------ checkpoints
    def run_signature(self) -> dict[str, Any]:
        """What must match for a checkpoint to belong to this run (checked on resume)."""
        return {}

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """Plain-type state saved beside the models (RNG, samplers); restored on resume."""
        return {}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        pass

    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result: float | None = None,
                   model_name: str = "", step_in_epoch: int = 0) -> None:
        """Save every registered model as ``directory/<name>/model.pth.tar-<epoch + 1>`` (Dassl's call:
        ``epoch`` is the 0-based epoch just finished). With ``step_in_epoch`` > 0 the checkpoint is taken
        ``step_in_epoch`` steps into epoch ``epoch`` (0-based) and named ``...-<epoch + 1>-step<k>``."""
        self.check_finite()
        if not self.is_main_process:
            return
        extra = self.extra_checkpoint_state()
        if step_in_epoch:
            extra["step_in_epoch"] = step_in_epoch
            model_name = model_name or step_checkpoint_name(epoch + 1, step_in_epoch)
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            self._last_checkpoint = save_checkpoint(
                {
                    "state_dict": self._models[name].state_dict(),
                    "epoch": epoch if step_in_epoch else epoch + 1,  # completed epochs
                    "optimizer": optim.state_dict() if optim is not None else None,
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "val_result": val_result,
                    "run_signature": self.run_signature(),
                    **extra,
                },
                osp.join(directory, name), is_best=is_best, model_name=model_name,
            )
            if step_in_epoch:
                prune_step_checkpoints(osp.join(directory, name))

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a step since the start had a non-finite loss
        (synchronises with the device; called when logging and before saving)."""
        bad = self._nonfinite.first_bad() if getattr(self, "_nonfinite", None) else None
        if bad is None:
            return
        epoch, batch_idx, terms = bad
        last = getattr(self, "_last_checkpoint", None)
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {batch_idx + 1} ("
            + ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) + "); stopped without saving; last good "
            f"checkpoint: {last or 'none'}. Lower the learning rate, or set TRAIN.ON_NONFINITE skip")

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore models, optimisers, schedulers and extra state from the newest readable checkpoint
        in ``directory``; returns the epoch to start from (0 when there is nothing to resume).

        A checkpoint that cannot be read (a file truncated by a crash) is skipped with a warning and the
        one before it used. A checkpoint written mid-epoch also sets ``self.resume_step``, the number of
        steps of that epoch already done."""
        self.resume_step = 0
        names = self.get_model_names()
        candidates = {name: checkpoint_candidates(osp.join(directory, name)) for name in names}
        if not names or not any(candidates.values()):
            return 0
        missing = [n for n, c in candidates.items() if not c]
        if missing:
            raise UserError(f"cannot resume from {directory}: no checkpoint for model(s) {', '.join(missing)}")
        first = names[0]
        for path in candidates[first]:
            ckpts = self._load_all(directory, names, osp.basename(path))
            if ckpts is not None:
                break
        else:
            raise UserError(f"cannot resume from {directory}: no checkpoint there can be read")
        logger.info("Found checkpoint at %s (will resume training)", directory)
        for name, (ckpt_path, ckpt) in ckpts.items():
            self._check_signature(ckpt, ckpt_path)
            self._load_state_dict(name, ckpt["state_dict"], ckpt_path)
            if self._optims[name] is not None and ckpt.get("optimizer") is not None:
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt.get("scheduler") is not None:
                self._scheds[name].load_state_dict(ckpt["scheduler"])
        ckpt = ckpts[first][1]
        self.resume_step = int(ckpt.get("step_in_epoch") or 0)
        logger.info("Loaded %s (epoch %d%s)", ckpts[first][0], ckpt["epoch"],
                    f", step {self.resume_step} of epoch {ckpt['epoch'] + 1}" if self.resume_step else "")
        self.load_extra_checkpoint_state(ckpt)
        return int(ckpt["epoch"])

    def _load_all(self, directory: str, names: list[str], filename: str) -> dict[str, tuple[str, dict]] | None:
        """Every model's checkpoint called ``filename``, or None (with a warning) if one is unreadable."""
        loaded = {}
        for name in names:
            path = osp.join(directory, name, filename)
            try:
                loaded[name] = (path, load_checkpoint(path))
            except UserError as e:
                logger.warning("Skipping checkpoint %s: %s; trying the one before it", path, e)
                return None
        return loaded

    def _check_signature(self, ckpt: dict, path: str) -> None:
        saved, current = ckpt.get("run_signature") or {}, self.run_signature()
        diffs = [f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now"
                 for k in current if k in saved and saved[k] != current[k]]
        if diffs:
            raise UserError(f"checkpoint {path} belongs to a different run ({'; '.join(diffs)}); "
                            f"use another --output-dir or remove that folder")

    def _load_state_dict(self, name: str, state_dict: dict, path: str) -> None:
        try:
            self._models[name].load_state_dict(state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = " ".join(first[1:3]).strip() if len(first) > 1 else first[0]
            raise UserError(f"checkpoint {path} does not fit model '{name}' (another backbone or class count?): "
                            f"{' '.join(detail.split())[:240]}") from None

    def load_model(self, directory: str | None, epoch: int | str | None = None) -> None:
        """Load weights for evaluation: ``model.pth.tar-<epoch>``, ``"best"`` (model-best.pth.tar), or by
        default the newest checkpoint (the index), else the best."""
        names = self.get_model_names()
        self.report_on_test = True
        if not directory:
            logger.info("No model directory given: evaluating the model as built")
            return
        if not osp.isdir(directory):
            raise UserError(f"model directory not found: {directory}")
        if not names:
            logger.info("This trainer has no trained weights to load from %s", directory)
            return
        for name in names:
            model_dir = osp.join(directory, name)
            if epoch == "best":
                path = osp.join(model_dir, "model-best.pth.tar")
                if not osp.isfile(path):
                    raise UserError(f"no best-model checkpoint: {path} does not exist "
                                    f"(it is written with TEST.FINAL_MODEL best_val)")
            elif epoch is not None:
                path = osp.join(model_dir, checkpoint_name(epoch))
                if not osp.isfile(path):
                    raise UserError(f"no checkpoint for epoch {epoch}: {path} does not exist")
            else:
                path = latest_checkpoint(model_dir) or osp.join(model_dir, "model-best.pth.tar")
                if not osp.isfile(path):
                    raise UserError(f"no checkpoint of model '{name}' in {model_dir} "
                                    f"(expected a 'checkpoint' index or model-best.pth.tar)")
            ckpt = load_checkpoint(path)
            self._load_state_dict(name, ckpt["state_dict"], path)
            self.epochs_done = int(ckpt.get("epoch") or 0)
            val = ckpt.get("val_result")  # Dassl crashes when this is absent; it is optional here
            logger.info("Loaded model weights from %s (epoch %s%s)", path, ckpt.get("epoch"),
                        f", val_result {val:.2f}" if isinstance(val, (int, float)) else "")

    # ------------------------------------------------------ logging / writer
    def init_writer(self, log_dir: str) -> None:
        if not self.is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter

        mkdir_if_missing(log_dir)
        self._writer = SummaryWriter(log_dir=osp.join(log_dir, "tensorboard"))
        self._metrics_file = open(osp.join(log_dir, "metrics.jsonl"), "a")

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def write_scalars(self, scalars: dict[str, float], global_step: int | None = None, **context: Any) -> None:
        """Write scalars to tensorboard and one JSON line (with ``context``) to metrics.jsonl."""
        if self._writer is not None:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, global_step)
        if self._metrics_file is not None:
            record = {"step": global_step, **context,
                      **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scalars.items()}}
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()

    def write_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        self.write_scalars({tag: scalar_value}, global_step)

    # -------------------------------------------------------------- the loop
    def train(self, start_epoch: int, max_epoch: int) -> None:
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self, split: str | None = None) -> float:
        raise NotImplementedError

    def parse_batch_train(self, batch: dict):
        raise NotImplementedError

    def parse_batch_test(self, batch: dict):
        raise NotImplementedError

    def forward_backward(self, batch: dict):
        raise NotImplementedError

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def progress(self, iterable, **kwargs) -> tqdm:
        """A tqdm bar on the main process (``TQDM_DISABLE=1`` in the environment silences it)."""
        if not self.is_main_process:
            kwargs["disable"] = True
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)

    # ---------------------------------------------------------- optimisation
    def model_zero_grad(self, names: str | list[str] | None = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad(set_to_none=True)

    def model_backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def model_update(self, names: str | list[str] | None = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                distributed.average_gradients(self._models[name].parameters())
                self._optims[name].step()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for forward passes when ``TRAIN.PRECISION`` asks for it, else a no-op."""
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def model_backward_and_update(self, loss: torch.Tensor, names: str | list[str] | None = None) -> None:
        if getattr(self, "skip_nonfinite", False) and not bool(torch.isfinite(loss.detach()).all()):
            # TRAIN.ON_NONFINITE skip: this check reads the loss back at every step (a synchronisation).
            self.skipped_steps += 1
            logger.warning("Skipping a step with a non-finite loss (%d skipped so far)", self.skipped_steps)
            self.model_zero_grad(names)
            return
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """A trainer with one config, one data manager, one evaluator (Dassl's ``SimpleTrainer``)."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.check_cfg(cfg)
        self.cfg = cfg
        # Seeded here as well as in train.py, so a trainer built from Python is reproducible too.
        set_random_seed(cfg.SEED)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.USE_CUDA else "cpu")
        if self.device.type == "cuda" and distributed.world_size() > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        set_cudnn_benchmark(cfg, self.device)
        self.use_bf16 = self._wants_bf16(cfg.TRAIN.PRECISION)
        self.cuda_graph_steps = uses_cuda_graphs(cfg, self.device)
        self.skip_nonfinite = cfg.TRAIN.ON_NONFINITE == "skip"
        self.skipped_steps = 0
        self._nonfinite = None if self.skip_nonfinite else NonFiniteWatch()
        self._cursor_states: dict[str, Any] | None = None  # set by a resume, used by the next epoch
        self._cursors: dict[str, LoaderCursor] = {}
        self.resume_step = 0
        # Whether test() on the test split reports (table + results.json): set for the final evaluation
        # and by load_model, so Dassl's "--eval-only: load_model(); test()" also writes results.json.
        self.report_on_test = False
        self.start_epoch = self.epoch = 0
        self.epochs_done = 0  # completed (or loaded) epochs, reported in results.json
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.build_data_loader()
        self.build_model()
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -math.inf
        self.test_results: OrderedDict[str, float] | None = None

    def _wants_bf16(self, precision: str) -> bool:
        if precision == "auto":
            return self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        return precision == "bf16"

    def begin_step(self) -> None:
        """Called before each training step. Under CUDA graphs (``MODEL.COMPILE_MODE`` reduce-overhead or
        max-autotune on a GPU) it tells them that a new step starts, so that its replays may reuse the memory
        of the last step's outputs; anything kept across steps must be a copy (see ``tools.compiled``)."""
        if self.cuda_graph_steps:
            torch.compiler.cudagraph_mark_step_begin()

    def check_cfg(self, cfg) -> None:
        """Check a trainer's requirements on the config (raise :class:`UserError`)."""
        if cfg.TRAIN.PRECISION not in ("auto", "bf16", "fp32"):
            raise UserError(f"TRAIN.PRECISION must be auto, bf16 or fp32, got '{cfg.TRAIN.PRECISION}'")
        if cfg.TRAIN.ON_NONFINITE not in ("stop", "skip"):
            raise UserError(f"TRAIN.ON_NONFINITE must be stop or skip, got '{cfg.TRAIN.ON_NONFINITE}'")
        if cfg.TEST.FINAL_MODEL not in ("last_step", "best_val"):
            raise UserError(f"TEST.FINAL_MODEL must be 'last_step' or 'best_val', got '{cfg.TEST.FINAL_MODEL}'")
        if cfg.TRAIN.COUNT_ITER not in ("train_x", "train_u", "smaller_one"):
            raise UserError(f"TRAIN.COUNT_ITER must be train_x, train_u or smaller_one, got '{cfg.TRAIN.COUNT_ITER}'")
        if cfg.MODEL.COMPILE_MODE not in COMPILE_MODES:
            raise UserError(f"MODEL.COMPILE_MODE must be one of {', '.join(COMPILE_MODES)}, "
                            f"got '{cfg.MODEL.COMPILE_MODE}'")

    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self) -> None:
        raise NotImplementedError

    def train(self) -> None:  # type: ignore[override]
        super().train(self.start_epoch, self.max_epoch)

    # --------------------------------------------------------------- resume
    def run_signature(self) -> dict[str, Any]:
        c = self.cfg
        return {"trainer": c.TRAINER.NAME, "backbone": c.MODEL.BACKBONE.NAME, "dataset": c.DATASET.NAME,
                "source_domains": list(c.DATASET.SOURCE_DOMAINS), "target_domains": list(c.DATASET.TARGET_DOMAINS),
                "unseen_classes": list(getattr(self.dm.dataset, "unseen_classnames", [])),
                "num_classes": self.num_classes}

    def _train_loaders(self) -> dict[str, Any]:
        return {"train_x": self.train_loader_x, "train_u": self.train_loader_u}

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """RNG states and where each training loader is (mid-epoch: inside its current pass)."""
        loaders = {}
        for key, loader in self._train_loaders().items():
            if loader is not None:
                loaders[key] = (self._cursors[key] if key in self._cursors else LoaderCursor(loader)).state()
        return {"rng_state": capture_rng_state(), "loader_state": loaders}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        if "rng_state" in state:
            restore_rng_state(state["rng_state"])
        self._cursor_states = state.get("loader_state") or None

    def _new_cursors(self) -> dict[str, LoaderCursor]:
        """Cursors for this epoch: from a checkpoint right after a resume, else fresh passes."""
        states, self._cursor_states = self._cursor_states or {}, None
        self._cursors = {key: LoaderCursor(loader, states.get(key) if "pass_start" in states.get(key, {}) else None)
                         for key, loader in self._train_loaders().items() if loader is not None}
        return self._cursors

    # ------------------------------------------------------------ the hooks
    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.epochs_done = self.resume_model_if_exist(directory)
        distributed.broadcast_parameters(self._models.values())
        self.init_writer(self.output_dir)
        self.time_start = time.time()

    def after_train(self) -> None:
        logger.info("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                logger.info("Deploy the last-epoch model")
            self.final_evaluation()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        logger.info("Elapsed: %s", elapsed)
        self.close_writer()

    def after_epoch(self) -> None:
        self._cursors = {}  # the next epoch starts new passes: checkpoints record the samplers as they are
        self.epochs_done = self.epoch + 1
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = (self.epoch + 1) % freq == 0 if freq > 0 else False
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            is_best = curr_result > self.best_result
            if is_best:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def test(self, split: str | None = None) -> float:
        """Evaluate on ``split`` (``TEST.SPLIT`` by default); returns the first metric (AUC-U)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val":
            if self.val_loader is None:
                raise UserError("TEST.SPLIT/FINAL_MODEL asks for a validation split, but this dataset has none "
                                "(selecting on the target test set would leak its labels)")
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        if len(data_loader.dataset) == 0:
            raise UserError(f"the {split} split is empty: nothing to evaluate")
        logger.info("Evaluate on the *%s* set", split)
        for batch in self.progress(data_loader, desc=f"eval {split}"):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            self.evaluator.process(output.float(), label)
        results = self.evaluator.evaluate()
        self.write_scalars({f"{split}/{k}": v for k, v in results.items()}, self.epoch, epoch=self.epoch + 1)
        if split == "test":
            self.test_results = results
            if self.report_on_test and self.is_main_process:
                self.report_results(results)
        return next(iter(results.values()))

    def final_evaluation(self) -> OrderedDict[str, float]:
        """Test, print the results table and write ``OUTPUT_DIR/results.json``."""
        self.report_on_test = True
        self.test()
        return self.test_results

    def results_record(self, metrics: dict[str, float]) -> dict[str, Any]:
        c = self.cfg
        dataset = self.dm.dataset
        return {
            "trainer": c.TRAINER.NAME,
            "source_domains": list(c.DATASET.SOURCE_DOMAINS),
            "target_domain": c.DATASET.TARGET_DOMAINS[0] if c.DATASET.TARGET_DOMAINS else None,
            "unseen_classes": list(getattr(dataset, "unseen_classnames", [])),
            "seed": c.SEED,
            "backbone": c.MODEL.BACKBONE.NAME,
            "dataset": c.DATASET.NAME,
            "epochs_trained": self.epochs_done,
            "num_test_images": len(self.test_loader.dataset),
            "metrics": dict(metrics),
        }

    def report_results(self, metrics: dict[str, float]) -> None:
        rows = []
        for key, value in metrics.items():
            desc_key = "acc_class_<k>" if key.startswith("acc_") and key not in METRIC_DESCRIPTIONS else key
            desc = METRIC_DESCRIPTIONS.get(desc_key, "")
            if desc_key == "acc_class_<k>":
                desc = f"recall of seen class {key[4:]} (%), higher is better"
            rows.append([key, "n/a" if math.isnan(value) else f"{value:.2f}", desc])
        logger.info("Results (%s -> %s, unseen: %s)\n%s", ", ".join(self.cfg.DATASET.SOURCE_DOMAINS),
                    ", ".join(self.cfg.DATASET.TARGET_DOMAINS),
                    ", ".join(getattr(self.dm.dataset, "unseen_classnames", [])) or "none",
                    tabulate(rows, headers=["metric", "value", "meaning"], tablefmt="simple"))
        path = osp.join(self.output_dir, "results.json")
        try:
            mkdir_if_missing(self.output_dir)
            write_json(self.results_record(metrics), path)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        if self.cfg.TEST.SAVE_PREDICTIONS:
            probs, labels, unseen = self.evaluator.arrays
            np.savez(osp.join(self.output_dir, "predictions.npz"), probs=probs, labels=labels, unseen=unseen,
                     classnames=np.array([self.lab2cname[k] for k in sorted(self.lab2cname)]))
        logger.info("* auc_u: %.2f", metrics.get("auc_u", float("nan")))
        logger.info("* acc_s: %.2f", metrics.get("acc_s", float("nan")))
        logger.info("* results: %s", path)

    def parse_batch_train(self, batch: dict):
        return self.to_device(batch["img"]), self.to_device(batch["label"])

    def parse_batch_test(self, batch: dict):
        return self.to_device(batch["img"]), self.to_device(batch["label"])

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy to the training device without waiting (loaders pin memory on CUDA)."""
        return tensor.to(self.device, non_blocking=True)

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``(N, D)`` of the model as it stands (for t-SNE figures and
        analysis). CLIP trainers return their image encoder's output."""
        raise NotImplementedError

    # ------------------------------------------------------------- logging
    def _log_progress(self, sums: dict[str, torch.Tensor], count: int, num_batches: int,
                      batch_time: AverageMeter, data_time: AverageMeter) -> None:
        """Average the accumulated losses (one device sync), print them and write the scalars."""
        names = list(sums)
        values = torch.stack([sums[n].detach().float().reshape(()) for n in names]).cpu().tolist() if names else []
        avgs = {n: v / count for n, v in zip(names, values)}
        self.check_finite()
        n_iter = self.epoch * num_batches + self.batch_idx + 1
        remaining = num_batches - self.batch_idx - 1 + (self.max_epoch - self.epoch - 1) * num_batches
        eta = str(datetime.timedelta(seconds=int(batch_time.avg * remaining)))
        lr = self.get_current_lr() if self._optims and any(o is not None for o in self._optims.values()) else 0.0
        logger.info("epoch [%d/%d] batch [%d/%d] time %.3f (%.3f) data %.3f (%.3f) %s lr %.4e eta %s",
                    self.epoch + 1, self.max_epoch, self.batch_idx + 1, num_batches, batch_time.val,
                    batch_time.avg, data_time.val, data_time.avg,
                    " ".join(f"{n} {v:.4f}" for n, v in avgs.items()), lr, eta)
        self.write_scalars({**{f"train/{n}": v for n, v in avgs.items()}, "train/lr": lr}, n_iter,
                           epoch=self.epoch + 1)

    def _run_batches(self, num_batches: int, next_batch, step) -> None:
        """The shared epoch loop of TrainerX and TrainerXU: fetch, step, accumulate, log, checkpoint.
        After a mid-epoch resume the epoch starts at ``self.resume_step``."""
        self.set_model_mode("train")
        self.num_batches = num_batches
        start, self.resume_step = self.resume_step, 0
        batch_time, data_time = AverageMeter(), AverageMeter()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        count = 0
        print_freq = max(1, self.cfg.TRAIN.PRINT_FREQ)
        step_ckpt = self.cfg.TRAIN.CHECKPOINT_STEPS
        end = time.time()
        self._lr_updated = False
        bar = self.progress(range(start, num_batches), desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
                            initial=start, total=num_batches)
        for self.batch_idx in bar:
            batches = next_batch()
            data_time.update(time.time() - end)
            self.begin_step()
            loss_summary = step(*batches) or {}
            if self._nonfinite is not None:
                self._nonfinite.observe(loss_summary, self.epoch, self.batch_idx)
            for name, value in loss_summary.items():
                sums[name] = sums[name] + (value.detach() if torch.is_tensor(value) else float(value))
            count += 1
            batch_time.update(time.time() - end)
            if (self.batch_idx + 1) % print_freq == 0 or self.batch_idx + 1 == num_batches:
                self._log_progress(sums, count, num_batches, batch_time, data_time)
                sums.clear()
                count = 0
            if step_ckpt > 0 and (self.batch_idx + 1) % step_ckpt == 0:
                self.save_model(self.epoch, self.output_dir, step_in_epoch=self.batch_idx + 1)
            end = time.time()
        bar.close()
        if not self._lr_updated:
            self.update_lr()


class TrainerX(SimpleTrainer):
    """Trains on labelled data only (``train_loader_x``)."""

    def run_epoch(self) -> None:
        cursors = self._new_cursors()
        self._run_batches(len(self.train_loader_x), lambda: (cursors["train_x"].next(),), self.forward_backward)


class TrainerXU(SimpleTrainer):
    """Trains on labelled sources (``train_loader_x``) and the unlabelled target (``train_loader_u``).

    The number of steps per epoch follows ``TRAIN.COUNT_ITER`` (train_x, train_u or smaller_one);
    the other loader restarts (a new shuffled pass) whenever it runs out.
    """

    def run_epoch(self) -> None:
        if self.train_loader_u is None:
            raise UserError(f"trainer {self.cfg.TRAINER.NAME} needs unlabelled target training images, "
                            f"but the target domain has none")
        len_x, len_u = len(self.train_loader_x), len(self.train_loader_u)
        count_iter = self.cfg.TRAIN.COUNT_ITER
        num_batches = {"train_x": len_x, "train_u": len_u, "smaller_one": min(len_x, len_u)}[count_iter]
        cursors = self._new_cursors()
        self._run_batches(num_batches, lambda: (cursors["train_x"].next(), cursors["train_u"].next()),
                          self.forward_backward)

    def parse_batch_train(self, batch_x: dict, batch_u: dict):  # type: ignore[override]
        return self.to_device(batch_x["img"]), self.to_device(batch_x["label"]), self.to_device(batch_u["img"])


def build_trainer(cfg) -> SimpleTrainer:
    """Instantiate the trainer registered under ``cfg.TRAINER.NAME``."""
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
