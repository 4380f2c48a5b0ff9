"""Host work of one PromptEmo training step: the ATen operations it dispatches one at a time in eager
mode, counted by part.

    python scripts/host_ops.py                       # tiny backbone
    python scripts/host_ops.py --backbone ViT-B/32   # the paper's architecture (random weights), on the CPU

On a fast GPU every eagerly dispatched operation is a kernel launch that costs the host several
microseconds, whatever the size of its tensors; when a step's launches take longer than its kernels, the
GPU waits for the host (``bench.py --profile`` prints how busy the GPU is). ``MODEL.COMPILE`` turns the
encoders, PromptEmo's losses and the augmentation's pixel work into compiled graphs; this script shows
how much eager work each part would otherwise be. It runs the fast path's trainer (decoded-image cache,
device augmentation) without compiling: the counter cannot see inside compiled graphs. The counts do not
depend on the batch size.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from typing import Callable

import torch
from tabulate import tabulate
from torch.utils._python_dispatch import TorchDispatchMode

import bench
from engine.modeling.clip_backbone import encode_images
from engine.utils.logger import setup_logger


class OpCounter(TorchDispatchMode):
    """Counts every ATen operation dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count(fn: Callable[[], object]) -> tuple[int, object]:
    """(operations dispatched by ``fn()``, its result)."""
    with OpCounter() as counter:
        result = fn()
    return counter.total, result


def count_step(trainer) -> dict[str, tuple[int, int]]:
    """``{part: (forward, backward)}`` operations of one PromptEmo step, each part counted on its own."""
    trainer.set_model_mode("train")
    xs, us = bench.endless(trainer.train_loader_x), bench.endless(trainer.train_loader_u)
    trainer.forward_backward(next(xs), next(us))  # first-call work (lazy initialisation) stays out
    data, (batch_x, batch_u) = count(lambda: (next(xs), next(us)))
    input_x, label_x, domain_x, input_u = trainer.parse_batch_train(batch_x, batch_u)
    images = torch.cat([input_x, input_u])

    image_fwd, features = count(lambda: encode_images(trainer.encoder, images, trainer.use_bf16))
    image_bwd, _ = count(lambda: features.sum().backward())
    text_fwd, h_p = count(trainer.positive_features)
    text_bwd, _ = count(lambda: h_p.sum().backward())

    f = features.detach().requires_grad_(True)
    f_s, f_t = f[: input_x.shape[0]], f[input_x.shape[0]:]
    h = h_p.detach().requires_grad_(True)
    loss_fwd, losses = count(lambda: trainer.step_losses(f_s, f_t, label_x, domain_x, h, trainer.neg_features,
                                                          trainer.loss_settings))
    loss_bwd, _ = count(lambda: losses["loss"].backward())
    optimiser, _ = count(lambda: trainer.model_update(None))
    trainer.model_zero_grad(None)
    step, _ = count(lambda: trainer.forward_backward(batch_x, batch_u))
    return {"data (source + target batch)": (data, 0), "image encoder": (image_fwd, image_bwd),
            "text encoder (positive prompts)": (text_fwd, text_bwd), "losses": (loss_fwd, loss_bwd),
            "optimiser update": (optimiser, 0), "whole step (without data)": (step, 0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", help="tiny, ViT-B/32 or ViT-B/16")
    p.add_argument("--batch", type=int, default=12, help="source batch (the target batch is equal)")
    p.add_argument("--work-dir", default=None, help="where images and caches go (default: a temporary folder)")
    args = p.parse_args(argv)
    setup_logger(None, console=False)
    work = args.work_dir or tempfile.mkdtemp(prefix="promptemo-host-ops-")
    data_root = bench.prepare_images(work, 64, 3)
    bench_args = argparse.Namespace(backbone=args.backbone, batch=args.batch, workers=0, no_compile=True)
    trainer = bench.build(bench_args, data_root, True, os.path.join(work, "cache"), os.path.join(work, "out"))
    parts = count_step(trainer)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"Eager ATen operations of one PromptEmo step, backbone {args.backbone}, {device}, "
          f"optimiser {'fused' if trainer.cfg.OPTIM.FUSED and device != 'CPU' else 'not fused'}")
    rows = [[name, fwd, bwd or "", fwd + bwd] for name, (fwd, bwd) in parts.items()]
    print(tabulate(rows, headers=["part", "forward", "backward", "total"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
