"""``TrainerBase`` (Dassl's): the models a trainer registers, the epoch loop's skeleton, optimisation
helpers, and the checkpoint and scalar-log calls a Dassl trainer makes (:mod:`engine.trainer.checkpointing`
and :mod:`engine.trainer.run_log` do the work)."""
from __future__ import annotations

import contextlib
import logging
import os.path as osp
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from engine.trainer.checkpointing import ModelCheckpoints
from engine.trainer.loop_state import NonFiniteWatch
from engine.trainer.run_log import RunLog
from engine.utils import distributed
from engine.utils.checkpoint import checkpoint_candidates, step_checkpoint_name
from engine.utils.errors import NonFiniteLossError

logger = logging.getLogger(__name__)


class TrainerBase:
    """Model registry, optimisation helpers, checkpoints, scalar logging and the epoch loop skeleton."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict[str, torch.optim.Optimizer | None] = OrderedDict()
        self._scheds: OrderedDict[str, Any] = OrderedDict()
        self.checkpoints = ModelCheckpoints(self._models, self._optims, self._scheds)
        self.run_log = RunLog()
        self.is_main_process = distributed.is_main_process()
        self.use_bf16 = False
        self.resume_step = 0
        self._nonfinite: NonFiniteWatch | None = None
        self._last_checkpoint: str | None = None

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
        """Step the schedulers. The epoch loop calls it after every step with ``OPTIM.LR_UPDATE step``, else at
        the end of an epoch unless ``forward_backward`` already did, as trainers written for Dassl do."""
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
        shared = {"epoch": epoch if step_in_epoch else epoch + 1,  # completed epochs
                  "val_result": val_result, "run_signature": self.run_signature(), **self.extra_checkpoint_state()}
        if step_in_epoch:
            shared["step_in_epoch"] = step_in_epoch
            model_name = model_name or step_checkpoint_name(epoch + 1, step_in_epoch)
        path = self.checkpoints.save(directory, shared, is_best=is_best, model_name=model_name,
                                     inside_epoch=bool(step_in_epoch))
        self._last_checkpoint = path or self._last_checkpoint

    def saved_checkpoints(self, directory: str) -> list[str]:
        """The checkpoints of the registered models in ``directory`` (a training run's output folder), newest
        first; empty when it holds none."""
        return [path for name in self._models for path in checkpoint_candidates(osp.join(directory, name))]

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore models, optimisers, schedulers and extra state from the newest readable checkpoint
        in ``directory``; returns the epoch to start from (0 when there is nothing to resume).
        A checkpoint written mid-epoch also sets ``self.resume_step``, the steps of that epoch already done."""
        self.resume_step = 0
        ckpt = self.checkpoints.resume(directory, self.run_signature())
        if ckpt is None:
            return 0
        self.resume_step = int(ckpt.get("step_in_epoch") or 0)
        self.load_extra_checkpoint_state(ckpt)
        return int(ckpt["epoch"])

    def load_model(self, directory: str | None, epoch: int | str | None = None) -> None:
        """Load weights for evaluation: ``model.pth.tar-<epoch>``, ``"best"`` (model-best.pth.tar), or by
        default the newest checkpoint (the index), else the best."""
        if not directory:
            logger.info("No model directory given: evaluating the model as built")
            return
        epochs = self.checkpoints.load_weights(directory, epoch)
        if epochs is not None:
            self.epochs_done = epochs

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a step since the start had a non-finite loss
        (synchronises with the device; called when logging and before saving)."""
        bad = self._nonfinite.first_bad() if self._nonfinite is not None else None
        if bad is None:
            return
        epoch, batch_idx, terms = bad
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {batch_idx + 1} ("
            + ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) + "); stopped without saving; last good "
            f"checkpoint: {self._last_checkpoint or 'none'}. Lower the learning rate, or set TRAIN.ON_NONFINITE skip")

    # -------------------------------------------------------- scalar logging
    def init_writer(self, log_dir: str) -> None:
        if self.is_main_process:
            self.run_log.open(log_dir)

    def close_writer(self) -> None:
        self.run_log.close()

    def write_scalars(self, scalars: dict[str, float], global_step: int | None = None, **context: Any) -> None:
        """Write scalars to tensorboard and one JSON line (with ``context``) to metrics.jsonl."""
        self.run_log.write(scalars, global_step, **context)

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
                self._optims[name].step()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for forward passes when ``TRAIN.PRECISION`` asks for it, else a no-op."""
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def model_backward_and_update(self, loss: torch.Tensor, names: str | list[str] | None = None) -> None:
        if getattr(self, "skip_nonfinite", False) and \
                not distributed.all_ranks_agree(bool(torch.isfinite(loss.detach()).all())):
            # TRAIN.ON_NONFINITE skip: this check reads the loss back at every step (a synchronisation); under
            # torchrun every rank skips when one must, or the others would wait in DDP's gradient reduction.
            self.skipped_steps += 1
            logger.warning("Skipping a step with a non-finite loss (%d skipped so far)", self.skipped_steps)
            self.model_zero_grad(names)
            return
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

