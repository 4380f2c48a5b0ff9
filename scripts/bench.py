"""Throughput of the real PromptEmo training step: a Dassl-style pipeline against this project's fast path.

    python scripts/bench.py                                # CPU: tiny backbone, well under a minute
    python scripts/bench.py --backbone ViT-B/32 --batch 256  # GPU: the paper's architecture (random weights)

Both pipelines run the same trainer (``PromptEmo``: source and target images through the image encoder,
prompts through the text encoder, every loss, the optimiser step) on the same synthetic images, saved
as JPEG files of ``--image-size`` pixels so that decoding costs what it costs on real data:

- ``dassl``: PIL decoding and augmentation in DataLoader workers on every step, fp32, plain AdamW
  (how Dassl/CoOp-style code trains);
- ``fast``: the decoded-image cache with augmentation on the device (resident on the GPU there),
  bf16 autocast where the device has it, fused AdamW, ``torch.compile`` of the encoders and the losses
  on GPUs (``MODEL.COMPILE``).

``--compare-patch-embed`` adds a third row, ``fast+matmul``: the fast path with the ViT's patch embedding
computed as one matrix product (``MODEL.PATCH_EMBED_MATMUL``) instead of cuDNN's convolution.
``--cuda-graphs`` (GPUs) adds the last fast row again with ``MODEL.COMPILE_MODE reduce-overhead``
(``...+graphs``): the compiled encoders and losses replayed as CUDA graphs, one launch per graph. These
extra rows are experiments: one that fails is reported and left out, and the others are still timed.
When anything was compiled, a line counts the compiled graphs and the graph breaks of all pipelines.

Images/s counts every image through the encoder (source + target). ``--repeats`` rounds measure the
pipelines in turn; the table gives each one's median and range (a difference between pipelines within
the range is noise). ``--profile`` adds, per fast pipeline, its costliest GPU kernels and the share of
the step the GPU is busy (below 100%: the host's launches set the pace), and the GPU time and launches
per step by kind of kernel (matrix products, attention, Triton kernels of compiled graphs, other ATen
kernels...). The last line is exactly ``speedup <fast / dassl>``. ``--backbone ViT-B/32`` uses the
released architecture with random weights (``random:ViT-B/32``): throughput does not depend on the weights.
``--json FILE`` also writes the figures for other tools (``scripts/protocol.py --estimate --bench FILE``):
``images_per_s`` and ``ms_per_step`` (median per pipeline), ``backbone``, ``batch``, ``image_size``,
``device``, ``torch``, ``date``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from typing import Sequence

import torch
from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

import datasets  # noqa: F401  (registers the datasets and trainers)
import trainers  # noqa: F401  (registers the datasets and trainers)
from datasets import synthetic
from engine.config import extend_cfg, get_cfg_default, merge_from_file, merge_from_list
from engine.trainer import build_trainer
from engine.utils.logger import setup_logger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES, TARGET = ["synth_color", "synth_gray", "synth_lab"], "synth_wild"
PREFIX = "bench_"  # the JPEG copies are plain folder domains, e.g. bench_synth_color


def prepare_images(root: str, image_size: int, per_class: int) -> str:
    """Synthetic domains as JPEG folder domains of ``image_size`` pixels; returns their root."""
    raw = os.path.join(root, "raw")
    synthetic.ensure_domains(raw, SOURCES + [TARGET], n_train_per_class=per_class, n_test_per_class=4,
                             size=64, seed=0, progress=False)
    out = os.path.join(root, f"jpeg{image_size}")
    if os.path.isdir(out):
        return out
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    files = [(dirpath, f) for dirpath, _, names in os.walk(raw) for f in names if f.endswith(".png")]
    for dirpath, name in tqdm(files, desc=f"JPEG copies at {image_size}px", leave=False):
        rel = PREFIX + os.path.relpath(dirpath, raw)
        os.makedirs(os.path.join(tmp, rel), exist_ok=True)
        with Image.open(os.path.join(dirpath, name)) as img:
            img.convert("RGB").resize((image_size, image_size), Image.BICUBIC).save(
                os.path.join(tmp, rel, name[:-4] + ".jpg"), quality=90)
    os.replace(tmp, out)
    return out


REQUIRED = ("dassl", "fast")  # the rows of the speedup line; the others are optional experiments


def pipelines(args: argparse.Namespace) -> list[tuple[str, bool, list[str]]]:
    """``(name, fast, config options)`` of each pipeline to time, in the order they are timed."""
    chosen = [("dassl", False, []), ("fast", True, [])]
    if args.compare_patch_embed:
        chosen.append(("fast+matmul", True, ["MODEL.PATCH_EMBED_MATMUL", "True"]))
    if args.cuda_graphs:
        if torch.cuda.is_available() and not args.no_compile:
            name, _, opts = chosen[-1]
            chosen.append((name + "+graphs", True, opts + ["MODEL.COMPILE_MODE", "reduce-overhead"]))
        else:
            print("--cuda-graphs: CUDA graphs need a GPU and torch.compile; that row is not timed")
    return chosen


def build(args: argparse.Namespace, data_root: str, fast: bool, cache_dir: str, out_dir: str,
          extra_opts: Sequence[str] = ()):
    cuda = torch.cuda.is_available()
    cfg = get_cfg_default()
    extend_cfg(cfg)
    config = "vit_b32.yaml" if args.backbone != "tiny" else "tiny.yaml"
    merge_from_file(cfg, os.path.join(REPO, "configs", "trainers", "PromptEmo", config))
    merge_from_file(cfg, os.path.join(REPO, "configs", "datasets", "synthetic.yaml"))
    domains = ["DATASET.SOURCE_DOMAINS", ",".join(PREFIX + d for d in SOURCES), "DATASET.TARGET_DOMAINS", PREFIX + TARGET]
    backbone = args.backbone if args.backbone == "tiny" else f"random:{args.backbone}"
    size = 32 if args.backbone == "tiny" else 224
    opts = ["DATASET.ROOT", data_root, "OUTPUT_DIR", out_dir, "VERBOSE", "False", "MODEL.BACKBONE.NAME", backbone,
            "INPUT.SIZE", f"({size}, {size})", "INPUT.TRANSFORMS", "['random_resized_crop','random_flip','normalize']",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch), "DATALOADER.NUM_WORKERS", str(args.workers),
            "DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler", "TRAIN.PRINT_FREQ", str(10**9), "SEED", "1",
            *domains]
    if fast:
        opts += ["DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR", cache_dir,
                 "DATALOADER.CACHE.ON_DEVICE", str(cuda), "TRAIN.PRECISION", "auto", "OPTIM.FUSED", "True",
                 "MODEL.COMPILE", str(cuda and not args.no_compile), *extra_opts]
    else:
        opts += ["TRAIN.PRECISION", "fp32", "OPTIM.FUSED", "False", "MODEL.COMPILE", "False"]
    merge_from_list(cfg, opts)
    cfg.freeze()
    return build_trainer(cfg)


def endless(loader):
    while True:
        yield from loader


def measure(trainer, warmup: int, steps: int) -> tuple[float, float]:
    """(images/s, ms/step) of ``forward_backward`` fed by the trainer's own loaders."""
    trainer.set_model_mode("train")
    xs, us = endless(trainer.train_loader_x), endless(trainer.train_loader_u)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    images = 0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
            images = 0
        trainer.begin_step()  # as the training loop does (CUDA graphs: a new step may reuse the last one's memory)
        batch_x, batch_u = next(xs), next(us)
        images += len(batch_x["index"]) + len(batch_u["index"])
        trainer.forward_backward(batch_x, batch_u)
    sync()
    elapsed = time.perf_counter() - start
    return images / elapsed, 1000 * elapsed / steps


# GPU kernels by what they do, first match wins (kernel names as CUDA libraries and Triton give them)
KERNEL_KINDS = [
    ("attention", re.compile(r"flash|fmha|attention", re.I)),
    ("convolution (cuDNN)", re.compile(r"cudnn|conv|fprop|dgrad|wgrad|implicit_gemm", re.I)),
    ("matrix products", re.compile(r"gemm|nvjet|cutlass|xmma|cublas", re.I)),
    ("optimiser", re.compile(r"adam|multi_tensor", re.I)),
    ("compiled (Triton)", re.compile(r"^triton_")),
    ("memory copies", re.compile(r"^mem(cpy|set)", re.I)),
]


def kernel_kind(name: str) -> str:
    """The :data:`KERNEL_KINDS` group of a GPU kernel's name, else ``other ATen kernels`` (PyTorch's own
    elementwise, reduction, indexing... kernels, launched eagerly or by a compiled graph as a fallback)."""
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "other ATen kernels")


def kernel_summary(events, steps: int) -> tuple[list[list[str]], float]:
    """Rows ``[kind, ms per step, share, kernels per step]`` of profiler ``key_averages()`` events
    (costliest kind first), and the GPU kernel time per step in ms. The kernel count per step is what
    the host launches; the time is the GPU's."""
    time_us: dict[str, float] = {}
    count: dict[str, int] = {}
    for e in events:
        us = getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))
        kind = kernel_kind(e.key)
        time_us[kind] = time_us.get(kind, 0.0) + us
        count[kind] = count.get(kind, 0) + e.count
    total = sum(time_us.values())
    rows = [[kind, f"{us / 1000 / steps:.2f}", f"{100 * us / max(total, 1e-9):.0f}%", f"{count[kind] / steps:.0f}"]
            for kind, us in sorted(time_us.items(), key=lambda kv: -kv[1])]
    return rows, total / 1000 / steps


def profile(trainer, steps: int = 3) -> float:
    """Print the ten GPU kernels that take the most time over a few fast-path steps and the GPU time
    per step by kind of kernel; return the GPU kernel time per step in ms (all kernels, one stream after
    another)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        measure(trainer, 0, steps)
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60))
    rows, gpu_ms = kernel_summary(averages, steps)
    print(tabulate(rows, headers=["kernels", "GPU ms/step", "share", "launches/step"], tablefmt="github"))
    return gpu_ms


def compile_summary() -> str | None:
    """One line on what ``torch.compile`` did in this process (all pipelines), or None if nothing was
    compiled. A graph break splits a graph and runs the code between the parts eagerly."""
    from torch._dynamo.utils import counters

    if not counters["stats"]["unique_graphs"]:
        return None
    reasons = counters["graph_break"]
    line = f"torch.compile: {counters['stats']['unique_graphs']} graphs, {sum(reasons.values())} graph breaks"
    return line + (f" (first: {next(iter(reasons))[:200]})" if reasons else "")


class optional_row(contextlib.AbstractContextManager):
    """``with optional_row(name, what) as ok:`` runs the block; for an optional pipeline (not in
    :data:`REQUIRED`) an exception is printed as one line and swallowed, and ``ok`` becomes False."""

    def __init__(self, name: str, what: str) -> None:
        self.name, self.what, self.ok = name, what, True

    def __enter__(self) -> "optional_row":
        return self

    def __exit__(self, kind, error, _tb) -> bool:
        if error is None or self.name in REQUIRED or not isinstance(error, Exception):
            return False
        self.ok = False
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        print(f"{self.name}: {self.what} failed ({kind.__name__}: {first_line}); left out", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    def __bool__(self) -> bool:
        return self.ok


def write_figures(path: str, args: argparse.Namespace, device: str, images_per_s: dict[str, float],
                  ms_per_step: dict[str, float]) -> None:
    """The measured figures as JSON, for tools that size a workload from them (protocol.py --estimate)."""
    figures = {"images_per_s": {k: round(v, 1) for k, v in images_per_s.items()},
               "ms_per_step": {k: round(v, 2) for k, v in ms_per_step.items()},
               "backbone": args.backbone, "batch": args.batch, "image_size": args.image_size, "device": device,
               "torch": torch.__version__, "date": datetime.date.today().isoformat(),
               "images": "source + target images through the encoder per second (PromptEmo training step)"}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(figures, f, indent=1)
        f.write("\n")


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="ViT-B/32" if cuda else "tiny", help="tiny, ViT-B/32 or ViT-B/16")
    p.add_argument("--batch", type=int, default=256 if cuda else 48, help="source batch (the target batch is equal)")
    p.add_argument("--steps", type=int, default=30 if cuda else 8, help="timed steps per pipeline")
    p.add_argument("--dassl-steps", type=int, default=None,
                   help="timed steps of the dassl pipeline (default --steps; it is the slow one, ~1 s a step on GPUs)")
    p.add_argument("--warmup", type=int, default=10 if cuda else 2, help="untimed steps first (compilation...)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="DataLoader workers (dassl)")
    p.add_argument("--image-size", type=int, default=256 if cuda else 64, help="JPEG size on disk")
    p.add_argument("--per-class", type=int, default=150 if cuda else 40,
                   help="synthetic training images per class and domain (the target pool should hold several batches)")
    p.add_argument("--profile", action="store_true", help="also print the fast path's most expensive GPU kernels")
    p.add_argument("--work-dir", default=None, help="where images and caches go (default: a temporary folder)")
    p.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
    p.add_argument("--repeats", type=int, default=3 if cuda else 1,
                   help="measurement rounds, pipelines in turn; the table gives each one's median and range")
    p.add_argument("--compare-patch-embed", action="store_true",
                   help="also time the fast path with the patch embedding as one matrix product (MODEL.PATCH_EMBED_MATMUL)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="GPUs: also time the last fast row with MODEL.COMPILE_MODE reduce-overhead (CUDA graphs)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the figures to FILE (read by scripts/protocol.py --estimate --bench FILE)")
    args = p.parse_args(argv)

    setup_logger(None, console=False)
    work = args.work_dir or tempfile.mkdtemp(prefix="promptemo-bench-")
    data_root = prepare_images(work, args.image_size, args.per_class)
    chosen = pipelines(args)
    trainers_by_name = {}
    for name, fast, opts in chosen:
        with optional_row(name, "build"):
            trainers_by_name[name] = build(args, data_root, fast, os.path.join(work, "cache"),
                                           os.path.join(work, "out", name), opts)
    # Rounds in turn (dassl, fast, fast+matmul, dassl, ...): a drift of the machine over time (clocks,
    # other load) then spreads over every pipeline instead of favouring the one measured first.
    rates: dict[str, list[float]] = {name: [] for name in trainers_by_name}
    step_ms: dict[str, list[float]] = {name: [] for name in trainers_by_name}
    for round_no in range(1, args.repeats + 1):
        for name, trainer in list(trainers_by_name.items()):
            steps = args.dassl_steps if name == "dassl" and args.dassl_steps else args.steps
            with optional_row(name, "run") as ok:
                ips, ms = measure(trainer, args.warmup, steps)
            if not ok:
                del trainers_by_name[name], rates[name], step_ms[name]
                continue
            rates[name].append(ips)
            step_ms[name].append(ms)
        if args.repeats > 1:  # as it comes, so that a run cut short by a time limit still reports something
            print(f"round {round_no}/{args.repeats}: " + ", ".join(f"{n} {r[-1]:,.0f}" for n, r in rates.items())
                  + " images/s", flush=True)
    rows = [[name, f"{statistics.median(values):,.0f}", f"{statistics.median(step_ms[name]):.1f}",
             f"{min(values):,.0f}-{max(values):,.0f}"] for name, values in rates.items()]
    if args.profile and cuda:
        for name, trainer in trainers_by_name.items():
            if name != "dassl":
                print(f"most expensive GPU kernels, {name}:")
                with optional_row(name, "profile"):
                    gpu_ms = profile(trainer)
                    wall_ms = statistics.median(step_ms[name])
                    print(f"{name}: GPU kernels {gpu_ms:.1f} ms per step of {wall_ms:.1f} ms "
                          f"({100 * gpu_ms / wall_ms:.0f}% busy; the rest is the GPU waiting for the host)")
    if summary := compile_summary():
        print(summary)
    median = {name: statistics.median(values) for name, values in rates.items()}
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"PromptEmo training step, backbone {args.backbone}, batch {args.batch} source + {args.batch} target, "
          f"{args.image_size}px JPEGs, {device}, torch {torch.__version__}, median of {args.repeats} round(s)")
    print(tabulate(rows, headers=["pipeline", "images/s", "ms/step", "range images/s"], tablefmt="github"))
    if args.json:
        write_figures(args.json, args, device, median, {name: statistics.median(v) for name, v in step_ms.items()})
    if "fast+matmul" in median:
        print(f"patch embedding as matmul / convolution (fast path): {median['fast+matmul'] / median['fast']:.2f}")
    print(f"speedup {median['fast'] / median['dassl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
