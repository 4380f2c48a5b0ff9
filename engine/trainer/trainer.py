"""The training loop in Dassl's shape: ``TrainerBase -> SimpleTrainer -> TrainerX / TrainerXU``.

A method is a subclass that implements ``build_model`` (register what it trains with
``register_model``), ``forward_backward`` and ``model_inference``, decorated with
``@TRAINER_REGISTRY.register()``. Everything else (loaders, the epoch loop, logging, checkpoints,
resume, evaluation and ``results.json``) is shared: this module holds the loop and evaluation,
:mod:`engine.trainer.base` the model registry and optimisation helpers, :mod:`engine.trainer.checkpointing`
the checkpoint files, :mod:`engine.trainer.run_log` the scalar log and :mod:`engine.trainer.results` what an
evaluation writes. What the loop needs to know about the data (class names, unseen classes, domains) comes
from the dataset's :meth:`~engine.data.datasets.DatasetBase.split_info`.

Conventions of this project, on top of Dassl's:

- ``model_inference(images)`` returns seen-class *probabilities* (rows sum to one); the open-set
  evaluator derives predictions and the unseen score ``1 - max`` from them. A method that decides
  "unseen" with its own score returns an :class:`~engine.evaluation.OpenSetPrediction` (probabilities and
  a per-sample knownness) and names its score in the class attribute ``UNSEEN_SCORE``; ``results.json``
  records the score a run used (``"unseen_score"``: that name, or ``"msp"``).
- Loss values returned by ``forward_backward`` may be tensors: they are summed on the device and
  read back (one synchronisation) only every ``TRAIN.PRINT_FREQ`` steps, when they are logged to
  the console, ``log.txt``, tensorboard and ``metrics.jsonl``.
- Checkpoints also hold RNG and sampler states, so a resumed run sees the same data order and
  augmentations as one that never stopped.
- Encoders run under ``self.autocast()`` (bf16 where ``TRAIN.PRECISION`` asks for it); trainers
  keep similarities, losses and probabilities in fp32.
- Under torchrun, a trainer's step calls its trained parts through DistributedDataParallel, which averages
  the gradients over ranks, losses that couple samples take every rank's rows, and predictions are gathered
  in evaluation (``engine.utils.distributed``); only rank 0 writes.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os.path as osp
import time
from collections import OrderedDict, defaultdict
from typing import Any

import torch

from engine.config import check_config_values
from engine.data import DataManager
from engine.evaluation import MSP, build_evaluator, split_prediction
from engine.optim.lr_scheduler import LR_UPDATES
from engine.registry import Registry
from engine.trainer.base import TrainerBase
from engine.trainer.loop_state import LoaderCursor, NonFiniteWatch
from engine.trainer.results import report_results, results_record
from engine.utils import distributed
from engine.utils.checkpoint import capture_rng_state, restore_rng_state
from engine.utils.errors import UserError
from engine.utils.meters import AverageMeter
from engine.utils.tools import (COMPILE_MODES, atomic_write_bytes, mkdir_if_missing, set_cudnn_benchmark,
                                set_random_seed, uses_cuda_graphs)

TRAINER_REGISTRY = Registry("TRAINER")
logger = logging.getLogger(__name__)


class SimpleTrainer(TrainerBase):
    """A trainer with one config, one data manager, one evaluator (Dassl's ``SimpleTrainer``)."""

    # The name of the method's own unseen score, for a trainer whose model_inference returns an
    # OpenSetPrediction (e.g. "nn_similarity"); the MSP otherwise.
    UNSEEN_SCORE: str = MSP

    def __init__(self, cfg) -> None:
        super().__init__()
        self.check_cfg(cfg)
        self.cfg = cfg
        # Seeded here as well as in train.py, so a trainer built from Python is reproducible too.
        set_random_seed(cfg.SEED)
        self.device = distributed.training_device(cfg.USE_CUDA)
        set_cudnn_benchmark(cfg, self.device)
        self.use_bf16 = self._wants_bf16(cfg.TRAIN.PRECISION)
        self.cuda_graph_steps = uses_cuda_graphs(cfg, self.device)
        self.skip_nonfinite = cfg.TRAIN.ON_NONFINITE == "skip"
        self.skipped_steps = 0
        self._nonfinite = None if self.skip_nonfinite else NonFiniteWatch()
        self._cursor_states: dict[str, Any] | None = None  # set by a resume, used by the next epoch
        self._cursors: dict[str, LoaderCursor] = {}
        # Whether test() on the test split reports (table + results.json): set for the final evaluation
        # and by load_model, so Dassl's "--eval-only: load_model(); test()" also writes results.json.
        self.report_on_test = False
        self._run_files_written = False
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
        """Check a trainer's requirements on the config (raise :class:`UserError`): every numeric key in its
        range (:func:`engine.config.check_config_values`, also for configs not built by ``engine.cli``), and the
        engine's choices."""
        check_config_values(cfg)
        if cfg.RESUME and not osp.isdir(cfg.RESUME):
            raise UserError(f"--resume folder not found: {cfg.RESUME} (RESUME names the output folder of the run "
                            f"to continue)")
        if cfg.TRAIN.PRECISION not in ("auto", "bf16", "fp32"):
            raise UserError(f"TRAIN.PRECISION must be auto, bf16 or fp32, got '{cfg.TRAIN.PRECISION}'")
        if cfg.TRAIN.ON_NONFINITE not in ("stop", "skip"):
            raise UserError(f"TRAIN.ON_NONFINITE must be stop or skip, got '{cfg.TRAIN.ON_NONFINITE}'")
        if cfg.TEST.FINAL_MODEL not in ("last_step", "best_val"):
            raise UserError(f"TEST.FINAL_MODEL must be 'last_step' or 'best_val', got '{cfg.TEST.FINAL_MODEL}'")
        if cfg.TRAIN.COUNT_ITER not in ("train_x", "train_u", "smaller_one"):
            raise UserError(f"TRAIN.COUNT_ITER must be train_x, train_u or smaller_one, got '{cfg.TRAIN.COUNT_ITER}'")
        if cfg.OPTIM.LR_UPDATE not in LR_UPDATES:
            raise UserError(f"OPTIM.LR_UPDATE must be epoch or step, got '{cfg.OPTIM.LR_UPDATE}'")
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
        self.split_info = dm.split_info
        self.dm = dm

    def build_model(self) -> None:
        raise NotImplementedError

    def train(self) -> None:  # type: ignore[override]
        super().train(self.start_epoch, self.max_epoch)

    def load_model(self, directory: str | None, epoch: int | str | None = None) -> None:
        # Dassl's --eval-only is "load_model(); test()": the test that follows reports and writes results.json
        self.report_on_test = True
        super().load_model(directory, epoch)
        self.write_run_files()

    # --------------------------------------------------------------- resume
    def run_signature(self) -> dict[str, Any]:
        c, split = self.cfg, self.split_info
        return {"trainer": c.TRAINER.NAME, "backbone": c.MODEL.BACKBONE.NAME, "dataset": c.DATASET.NAME,
                "source_domains": list(split.source_domains), "target_domains": list(split.target_domains),
                "unseen_classes": list(split.unseen_classes), "num_classes": self.num_classes}

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
        if self.cfg.RESUME and not self.start_epoch and not self.resume_step and self._models:
            logger.warning("RESUME %s holds no checkpoint of this run's models (%s): training starts from scratch",
                           self.cfg.RESUME, ", ".join(self._models))
        self.check_resumed_position(directory)
        distributed.broadcast_parameters(self._models.values())
        self.write_run_files()
        self.init_writer(self.output_dir)
        self.time_start = time.time()

    def check_resumed_position(self, directory: str) -> None:
        """Refuse a resumed checkpoint beyond ``OPTIM.MAX_EPOCH``: the run would train nothing and report the
        longer run's model under a config that says otherwise."""
        if (self.start_epoch, self.resume_step) > (self.max_epoch, 0):
            done = f"{self.start_epoch} epochs" + (f" and {self.resume_step} steps" if self.resume_step else "")
            raise UserError(f"{directory} holds a run trained for {done}, more than OPTIM.MAX_EPOCH {self.max_epoch}: "
                            f"use another --output-dir, or OPTIM.MAX_EPOCH {self.start_epoch + bool(self.resume_step)} "
                            f"or more to continue that run")

    def write_run_files(self) -> None:
        """Write ``config.yaml`` and the dataset's run files (MO-FER's ``splits.json``) into the output folder.

        Called once the run is accepted (before the first epoch, after any checkpoint there was resumed and
        checked; or when a model was loaded for evaluation), never earlier: a run refused on the way (another
        split than the checkpoints', a bad value, a missing epoch) leaves the folder of a finished run as it was.
        """
        if self._run_files_written or not self.is_main_process or not self.output_dir:
            return
        files = {"config.yaml": self.cfg.dump().encode()}
        dataset_files = getattr(self.dm.dataset, "run_files", dict)()  # a Dassl dataset has none
        files.update({name: (json.dumps(content, indent=2) + "\n").encode() for name, content in dataset_files.items()})
        for name, data in files.items():
            path = osp.join(self.output_dir, name)
            try:
                mkdir_if_missing(self.output_dir)
                atomic_write_bytes(path, data)
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        self._run_files_written = True

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
            probs, knownness = split_prediction(self.model_inference(input))
            if (knownness is None) != (self.UNSEEN_SCORE == MSP):
                raise RuntimeError(f"{type(self).__name__}.UNSEEN_SCORE is '{self.UNSEEN_SCORE}' but its model_inference "
                                   f"returned {'no' if knownness is None else 'a'} knownness")
            self.evaluator.process(probs.float(), label, knownness=knownness)
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

    def report_results(self, metrics: dict[str, float]) -> None:
        """Print the results table and write ``results.json`` (and ``predictions.npz``); see
        :mod:`engine.trainer.results`."""
        record = results_record(self.cfg, self.split_info, metrics, self.epochs_done, len(self.test_loader.dataset),
                                self.UNSEEN_SCORE)
        predictions = self.evaluator.arrays if self.cfg.TEST.SAVE_PREDICTIONS else None
        report_results(self.output_dir, record, predictions, self.split_info.seen_classes)

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
        analysis). CLIP trainers return their image encoder's output (:class:`CLIPTrainer`)."""
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
        lr_per_step = self.cfg.OPTIM.LR_UPDATE == "step"
        end = time.time()
        self._lr_updated = False
        bar = self.progress(range(start, num_batches), desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
                            initial=start, total=num_batches)
        for self.batch_idx in bar:
            batches = next_batch()
            data_time.update(time.time() - end)
            self.begin_step()
            loss_summary = step(*batches) or {}
            if lr_per_step:
                self.update_lr()
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
