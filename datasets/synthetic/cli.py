"""The generator's command line (``scripts/make_synthetic.py``) and its preview grid."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.classes import CANONICAL_CLASSES
from datasets.synthetic.render import render_face
from datasets.synthetic.storage import _stable_hash, _style, ensure_domains
from datasets.synthetic.styles import DOMAINS


def make_preview(
    out: str | Path,
    domains: Sequence[str] = DOMAINS,
    samples_per_class: int = 2,
    size: int = 64,
    cell: int = 96,
    seed: int = 0,
    intensity: float | None = 1.0,
) -> Path:
    """Write a grid (rows = domains, columns = classes x samples) to ``out``.

    With ``intensity=None`` intensities are random as in the data; otherwise
    the first sample of each class uses ``intensity`` and the others random.
    """
    font = ImageFont.load_default()
    label_w, header_h, pad = 90, 18, 4
    n_cols = len(CANONICAL_CLASSES) * samples_per_class
    width = label_w + n_cols * cell + (len(CANONICAL_CLASSES) - 1) * pad
    height = header_h + len(domains) * cell
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(CANONICAL_CLASSES):
        x0 = label_w + c * (samples_per_class * cell + pad)
        draw.text((x0 + 4, 3), name, fill=(0, 0, 0), font=font)
    for r, domain in enumerate(domains):
        style = _style(domain)
        y0 = header_h + r * cell
        draw.text((4, y0 + cell // 2 - 6), domain, fill=(0, 0, 0), font=font)
        for c in range(len(CANONICAL_CLASSES)):
            for k in range(samples_per_class):
                rng = np.random.default_rng([seed, _stable_hash(domain), c, k, 99])
                inten = intensity if (k == 0 and intensity is not None) else None
                img = render_face(c, style, rng, size=size, intensity=inten)
                x0 = label_w + c * (samples_per_class * cell + pad) + k * cell
                grid.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (x0, y0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate synthetic facial-expression domains.")
    parser.add_argument("--root", required=True, help="output folder (domains go to ROOT/<domain>)")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--n-train", type=int, default=40, help="training images per class")
    parser.add_argument("--n-test", type=int, default=20, help="test images per class")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default=None, help="also write a PNG preview grid to this path")
    parser.add_argument("--preview-samples", type=int, default=2, help="samples per class in the preview")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    ensure_domains(args.root, args.domains, args.n_train, args.n_test, args.size, args.seed, not args.no_progress)
    for d in args.domains:
        print(f"{Path(args.root) / d}: ready")
    if args.preview:
        path = make_preview(args.preview, args.domains, args.preview_samples, args.size, seed=args.seed)
        print(f"preview written to {path}")


if __name__ == "__main__":
    main()
