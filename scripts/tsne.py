"""t-SNE of a trained run's image features, by domain and by class (the paper's Figure 3).

    python scripts/tsne.py output/run1
    python scripts/tsne.py output/run1 --out fig3.png --load-epoch 20 --max-per-domain 500 --root DATA

The run's configuration is rebuilt from ``RUN_DIR/config.yaml`` (defaults -> method keys -> that
file; ``--root`` replaces ``DATASET.ROOT`` when the data has moved), the trainer is built and its
saved weights loaded (``--load-epoch`` or the latest; a trainer with nothing saved, e.g. ZSCLIP, is
used as built). Image features (``trainer.image_features``, eval mode, the TEST transform, no
augmentation) are extracted for the source training images and the target test images, at most
``--max-per-domain`` of each domain (a seeded random subset), and embedded together by one t-SNE.

Two panels: (a) by domain, sources orange (one marker per source domain) and target blue;
(b) by class, the target test images coloured by seen class and the unseen-class images in black.
The PNG is exactly ``--size`` x ``--dpi`` pixels and is the only file written (default
``RUN_DIR/tsne.png``). Mistakes (a missing run folder, no config.yaml, a checkpoint epoch that does
not exist) end with one ``error: ...`` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from typing import NamedTuple, Sequence

import numpy as np
import torch

import datasets  # noqa: F401  (registers datasets and domain readers)
import trainers  # noqa: F401  (registers trainers)
from engine.config import extend_cfg, get_cfg_default, merge_from_file
from engine.data import build_data_loader
from engine.trainer import SimpleTrainer, build_trainer
from engine.utils.errors import UserError, run_command
from engine.utils.logger import setup_logger
from engine.utils.tools import atomic_write_bytes

logger = logging.getLogger("tsne")

SOURCE_COLOR = "tab:orange"   # as the paper: orange for the sources...
TARGET_COLOR = "tab:blue"     # ...blue for the target
UNSEEN_COLOR = "black"
SOURCE_MARKERS = ("s", "^", "D", "v", "P", "X", "<", ">")
# Up to this many points the exact t-SNE gradient is used: as fast as Barnes-Hut there (faster on a
# busy CPU) and without its approximation; beyond it, Barnes-Hut's O(N log N) wins.
EXACT_TSNE_MAX_POINTS = 1000


class Features(NamedTuple):
    """Everything the figure needs, one row per image."""

    features: np.ndarray       # (N, D) L2-normalised image features
    is_target: np.ndarray      # (N,) bool: target test image (else source training image)
    class_label: np.ndarray    # (N,) seen index 0..K-1, K for an unseen-class image
    domain: np.ndarray         # (N,) index into domain_names
    domain_names: list[str]    # sources..., target
    seen_classnames: list[str]
    unseen_classnames: list[str]


# ------------------------------------------------------------------ model
def load_run(run_dir: str, root: str | None = None, load_epoch: int | None = None):
    """The run's trainer with its saved weights; nothing is written into ``run_dir``."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory not found: {run_dir}")
    config_file = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_file):
        raise UserError(f"no config.yaml in {run_dir}: expected the output folder of a train.py run")
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, config_file)
    cfg.OUTPUT_DIR = ""
    cfg.VERBOSE = False
    if root is not None:
        cfg.DATASET.ROOT = root
    cfg.freeze()
    trainer = build_trainer(cfg)
    trainer.load_model(run_dir, epoch=load_epoch)
    return trainer


# --------------------------------------------------------------- features
def subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``n`` items."""
    if n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


def _set_eval(trainer) -> None:
    trainer.set_model_mode("eval")
    for value in vars(trainer).values():  # unregistered modules too (ZSCLIP's frozen CLIP)
        if isinstance(value, torch.nn.Module):
            value.eval()


@torch.no_grad()
def extract(trainer, items: Sequence) -> np.ndarray:
    """``trainer.image_features`` of ``items`` in order, with the test transform."""
    cfg = trainer.cfg
    if type(trainer).image_features is SimpleTrainer.image_features:
        raise UserError(f"trainer {cfg.TRAINER.NAME} does not provide image features (image_features)")
    loader = build_data_loader(cfg, "SequentialSampler", list(items), cfg.DATALOADER.TEST.BATCH_SIZE,
                               tfm=trainer.dm.tfm_test, is_train=False)
    chunks = [trainer.image_features(batch["img"].to(trainer.device)).float().cpu().numpy() for batch in loader]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def collect_features(trainer, max_per_domain: int = 500, seed: int = 0) -> Features:
    """Features of the source training images and the target test images, ``max_per_domain`` each."""
    ds, split = trainer.dm.dataset, trainer.split_info
    rng = np.random.default_rng(seed)
    sources = list(split.source_domains)
    items = []
    for m in range(len(sources)):
        pool = [it for it in ds.train_x if it.domain == m]
        items += [pool[i] for i in subsample(len(pool), max_per_domain, rng)]
    test = list(ds.test)
    test = [test[i] for i in subsample(len(test), max_per_domain, rng)]
    _set_eval(trainer)
    feats = extract(trainer, items + test)
    n_src = len(items)
    is_target = np.arange(len(feats)) >= n_src
    domain = np.array([it.domain for it in items] + [len(sources)] * len(test), dtype=int)
    labels = np.array([it.label for it in items + test], dtype=int)
    return Features(feats, is_target, labels, domain, sources + list(split.target_domains),
                    list(split.seen_classes), list(split.unseen_classes))


# -------------------------------------------------------------------- t-SNE
def embed(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of all features at once (perplexity capped below the number of points; the exact
    method up to :data:`EXACT_TSNE_MAX_POINTS` points, Barnes-Hut beyond)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 2:
        raise UserError(f"t-SNE needs at least two images, got {n}")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, n - 1), init="pca", random_state=seed,
                method="exact" if n <= EXACT_TSNE_MAX_POINTS else "barnes_hut")
    return tsne.fit_transform(np.asarray(features, dtype=np.float64))


# --------------------------------------------------------------------- plot
def class_colors(k: int) -> list:
    """One categorical colour per seen class (never black: black is for unseen)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def _legend(ax, title: str) -> None:
    leg = ax.legend(title=title, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
                    title_fontsize="small", markerscale=1.5, frameon=False)
    for handle in leg.legend_handles:
        handle.set_alpha(1.0)


def _clean(ax, title: str) -> None:
    ax.set_title(title, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])


def plot(xy: np.ndarray, feats: Features, title: str, size=(12.0, 5.0), dpi: int = 150):
    """The two-panel figure (a matplotlib ``Figure``, not attached to pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=tuple(size), dpi=dpi, layout="constrained")
    ax_dom, ax_cls = fig.subplots(1, 2)
    s = float(np.clip(3000.0 / max(len(xy), 1), 4.0, 30.0))
    src, tgt = ~feats.is_target, feats.is_target

    # (a) by domain: every source orange (one marker each), the target blue
    for m, name in enumerate(feats.domain_names[:-1]):
        sel = src & (feats.domain == m)
        ax_dom.scatter(xy[sel, 0], xy[sel, 1], s=s, c=SOURCE_COLOR, marker=SOURCE_MARKERS[m % len(SOURCE_MARKERS)],
                       alpha=0.6, linewidths=0, label=f"{name} (source)")
    ax_dom.scatter(xy[tgt, 0], xy[tgt, 1], s=s, c=TARGET_COLOR, marker="o", alpha=0.6, linewidths=0,
                   label=f"{feats.domain_names[-1]} (target)")
    _clean(ax_dom, "(a) by domain")
    _legend(ax_dom, "domain")

    # (b) by class: target test images, seen classes in colour, unseen in black
    k = len(feats.seen_classnames)
    for c, (name, color) in enumerate(zip(feats.seen_classnames, class_colors(k))):
        sel = tgt & (feats.class_label == c)
        ax_cls.scatter(xy[sel, 0], xy[sel, 1], s=s, color=color, marker="o", alpha=0.85, linewidths=0, label=name)
    sel = tgt & (feats.class_label >= k)
    if sel.any():
        unseen = ", ".join(feats.unseen_classnames) or "unseen"
        ax_cls.scatter(xy[sel, 0], xy[sel, 1], s=s * 1.3, color=UNSEEN_COLOR, marker="X", linewidths=0,
                       label=f"{unseen} (unseen)")
    # Same axes as (a): the embedding is shared, so positions compare across panels
    ax_cls.set_xlim(ax_dom.get_xlim())
    ax_cls.set_ylim(ax_dom.get_ylim())
    _clean(ax_cls, f"(b) by class, {feats.domain_names[-1]} test")
    _legend(ax_cls, "class")
    fig.suptitle(title, fontsize="medium")
    return fig


def save_png(fig, path: str) -> None:
    """Write the figure at its own size and dpi (no tight bbox, which would change the pixel size)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="output folder of a train.py run (holds config.yaml)")
    p.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/tsne.png)")
    p.add_argument("--load-epoch", type=int, default=None, help="checkpoint epoch (default: the latest)")
    p.add_argument("--max-per-domain", type=int, default=500, help="at most this many images per domain")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (capped at N-1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsampling and the t-SNE")
    p.add_argument("--size", type=float, nargs=2, default=[12.0, 5.0], metavar=("W", "H"),
                   help="figure size in inches")
    p.add_argument("--dpi", type=int, default=150, help="dots per inch (pixels = size * dpi)")
    p.add_argument("--root", default=None, help="dataset root, when the data has moved since training")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.max_per_domain < 1:
        raise UserError(f"--max-per-domain must be at least 1, got {args.max_per_domain}")
    if args.perplexity <= 0:
        raise UserError(f"--perplexity must be positive, got {args.perplexity}")
    if min(args.size) <= 0 or args.dpi <= 0:
        raise UserError(f"--size and --dpi must be positive, got {args.size} and {args.dpi}")


def run(args: argparse.Namespace) -> str:
    check_args(args)
    out = args.out or os.path.join(args.run_dir, "tsne.png")
    trainer = load_run(args.run_dir, args.root, args.load_epoch)
    feats = collect_features(trainer, args.max_per_domain, args.seed)
    logger.info("t-SNE of %d source and %d target images (%d-d features)", int((~feats.is_target).sum()),
                int(feats.is_target.sum()), feats.features.shape[1])
    xy = embed(feats.features, args.perplexity, args.seed)
    unseen = ", ".join(feats.unseen_classnames) or "none"
    title = (f"{trainer.cfg.TRAINER.NAME} (epoch {trainer.epochs_done}): sources "
             f"{', '.join(feats.domain_names[:-1])} -> target {feats.domain_names[-1]}, unseen: {unseen}")
    save_png(plot(xy, feats, title, args.size, args.dpi), out)
    logger.info("t-SNE figure: %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(None)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
