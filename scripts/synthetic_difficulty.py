"""How hard are the synthetic domains? A reference a CLIP-free model reaches on them.

Trains a small convolutional network (closed set, all 7 classes) on three synthetic domains and tests
it on the held-out fourth, for each target asked for, and prints one table: accuracy on the sources'
test images (in-domain) and on the target's test images (cross-domain), against chance (1/7).

    python scripts/synthetic_difficulty.py --root data                 # every target, ~4 min each on 2 cores
    python scripts/synthetic_difficulty.py --root data --targets synth_color --epochs 30

The images are read from disk through the generic folder reader's class-folder listing, as train.py reads them (generated
there first when missing, with the sizes of configs/datasets/synthetic.yaml unless told otherwise).
The point is the benchmark, not the network: the CNN (batch norm, 64 px, one-cycle AdamW) is what a
from-scratch model needs to show the domains are neither trivial nor impossible; the tiny random-weight
CLIP of the demo is a much weaker learner on 840 images (see README, "What the demo shows").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

from datasets.classes import CANONICAL_CLASSES
from datasets.readers.folder import read_class_folders
from datasets.synthetic import DOMAINS, ensure_domains
from engine.utils.errors import UserError, run_command


def load_split(root: str, domain: str, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one split as a normalised float tensor (N, 3, size, size) and their labels."""
    items = read_class_folders(os.path.join(root, domain, split))
    images = np.stack([np.asarray(Image.open(it.impath).convert("RGB").resize((size, size), Image.BICUBIC))
                       for it in items])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    return (x - 0.5) / 0.25, torch.tensor([it.label for it in items])


def small_cnn(num_classes: int) -> nn.Sequential:
    """Four conv blocks (two 3x3 convs with batch norm each, then 2x2 max pooling), global pooling."""
    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, num_classes))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(chunk).argmax(1) for chunk in x.split(256)])
    return float((pred == y).float().mean()) * 100.0


def train_and_test(data: dict, target: str, epochs: int, seed: int) -> dict:
    """Train on every domain but ``target``; accuracies (%) on the sources' and the target's test sets."""
    torch.manual_seed(seed)
    sources = [d for d in data if d != target]
    x = torch.cat([data[d]["train"][0] for d in sources])
    y = torch.cat([data[d]["train"][1] for d in sources])
    model = small_cnn(len(CANONICAL_CLASSES))
    batch = 64
    steps_per_epoch = (len(x) + batch - 1) // batch
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    for _ in tqdm(range(epochs), desc=f"target {target}", leave=False):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = x[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    src_x = torch.cat([data[d]["test"][0] for d in sources])
    src_y = torch.cat([data[d]["test"][1] for d in sources])
    return {"sources": accuracy(model, src_x, src_y), "target": accuracy(model, *data[target]["test"])}


def run(args: argparse.Namespace) -> None:
    try:
        ensure_domains(args.root, DOMAINS, args.n_train, args.n_test, args.image_size)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    data = {d: {s: load_split(args.root, d, s, args.size) for s in ("train", "test")} for d in DOMAINS}
    rows = []
    for target in args.targets:
        start = time.time()
        acc = train_and_test(data, target, args.epochs, args.seed)
        rows.append([target, f"{acc['sources']:.1f}", f"{acc['target']:.1f}", f"{time.time() - start:.0f}"])
    print(f"Small CNN, {args.epochs} epochs, {args.size} px, trained on the other three domains "
          f"(all 7 classes; chance {100 / len(CANONICAL_CLASSES):.1f}%)")
    print(tabulate(rows, headers=["target", "source test acc (%)", "target test acc (%)", "seconds"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data", help="folder holding (or receiving) the synthetic domains")
    p.add_argument("--targets", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--size", type=int, default=64, help="input side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=40, help="generated training images per class and domain")
    p.add_argument("--n-test", type=int, default=20, help="generated test images per class and domain")
    p.add_argument("--image-size", type=int, default=64, help="generated image side in pixels")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
