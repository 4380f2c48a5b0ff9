"""A run's scalar log: tensorboard events and ``metrics.jsonl`` (one JSON object a line) in the output
folder, written by the main process only."""
from __future__ import annotations

import json
import math
import os.path as osp
from typing import Any

from engine.utils.tools import mkdir_if_missing


class RunLog:
    """Tensorboard writer and ``metrics.jsonl`` of one output folder; closed, it writes nothing."""

    def __init__(self) -> None:
        self._writer = None
        self._metrics_file = None

    def open(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import: only when a run logs

        mkdir_if_missing(log_dir)
        self._writer = SummaryWriter(log_dir=osp.join(log_dir, "tensorboard"))
        self._metrics_file = open(osp.join(log_dir, "metrics.jsonl"), "a")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def write(self, scalars: dict[str, float], global_step: int | None = None, **context: Any) -> None:
        """Each scalar to tensorboard, and one JSON line with ``context`` to metrics.jsonl (NaN as null)."""
        if self._writer is not None:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, global_step)
        if self._metrics_file is not None:
            record = {"step": global_step, **context,
                      **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scalars.items()}}
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()
