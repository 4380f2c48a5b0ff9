"""The generic folder domain: ``<root>/<domain>/{train,test}/<class>/*.jpg`` or, without
``train/``/``test/``, ``<root>/<domain>/<class>/*.jpg`` split by a seeded, per-class random draw
(``DATASET.FOLDER.TEST_FRACTION``, ``DATASET.FOLDER.SPLIT_SEED``).

Class folders go through the alias table (``happy`` is happiness...). Folders of expressions outside
the seven (``contempt``...) are skipped with a warning; any other folder name is an error, so a
typo never silently drops a class. As every reader, it honours ``DATASET.VERIFY_IMAGES`` (decode every image
once, up front) and ``DATASET.SKIP_MISSING_IMAGES`` (skip undecodable images, and symbolic links to nothing,
with a warning instead of stopping).
"""
from __future__ import annotations

import logging
import os
import os.path as osp

import numpy as np

from datasets.classes import CANONICAL_CLASSES, KNOWN_OTHER_EXPRESSIONS, canonical_name
from datasets.readers._common import usable_images
from datasets.readers.base import DomainReader, DomainSplits, Item
from engine.config import Bounds, CfgNode, check_config_values, register_config_hook, register_value_rules
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_DIRS = ("train", "test", "val")


@register_config_hook
def add_folder_config(cfg: CfgNode) -> None:
    """``DATASET.FOLDER.*``: the split of folder domains that have no train/test sub-folders."""
    cfg.DATASET.FOLDER = CfgNode()
    cfg.DATASET.FOLDER.TEST_FRACTION = 0.2
    cfg.DATASET.FOLDER.SPLIT_SEED = 0


FOLDER_RANGES = {"DATASET.FOLDER.TEST_FRACTION": Bounds(0, 1)}
register_value_rules(FOLDER_RANGES)


def _list_images(folder: str) -> list[str]:
    return sorted(osp.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def read_class_folders(folder: str) -> list[Item]:
    """Images of every class sub-folder of ``folder``, labelled by the folder's name."""
    items: list[Item] = []
    for entry in sorted(os.listdir(folder)):
        path = osp.join(folder, entry)
        if not osp.isdir(path) or entry.startswith("."):
            continue
        canonical = canonical_name(entry)
        if canonical is None:
            if entry.strip().lower() in KNOWN_OTHER_EXPRESSIONS:
                logger.warning("Skipping %s: '%s' is not one of the seven basic expressions", path, entry)
                continue
            raise UserError(f"unknown class folder {path}: expected folders named after the expressions "
                            f"({', '.join(CANONICAL_CLASSES)}, or aliases such as happy, sad, angry)")
        label = CANONICAL_CLASSES.index(canonical)
        items += [Item(p, label) for p in _list_images(path)]
    return items


def seeded_split(items: list[Item], test_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Per-class random split: ``round(n * test_fraction)`` test images of each class."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted({it.label for it in items}):
        group = [it for it in items if it.label == label]
        order = rng.permutation(len(group))
        n_test = int(round(len(group) * test_fraction))
        test += [group[i] for i in sorted(order[:n_test])]
        train += [group[i] for i in sorted(order[n_test:])]
    return train, test


class FolderDomain(DomainReader):
    """Any folder of labelled faces (see module docstring)."""

    def read(self) -> DomainSplits:
        d = self.domain_dir
        if not osp.isdir(d):
            raise UserError(f"domain folder not found: {d}")
        check_config_values(self.cfg, FOLDER_RANGES)
        subdirs = [s for s in SPLIT_DIRS if osp.isdir(osp.join(d, s))]
        layout = f"{d}/{{train,test}}/<class>/*.jpg or {d}/<class>/*.jpg"
        if subdirs:
            splits = {s: read_class_folders(osp.join(d, s)) for s in subdirs}
            result = DomainSplits(train=splits.get("train", []), test=splits.get("test", []), val=splits.get("val"))
        else:
            items = read_class_folders(d)
            train, test = seeded_split(items, self.cfg.DATASET.FOLDER.TEST_FRACTION, self.cfg.DATASET.FOLDER.SPLIT_SEED)
            result = DomainSplits(train=train, test=test)
        if not result.train and not result.test:
            raise UserError(f"no images found for domain '{self.name}'; expected {layout}")
        return usable_images(result, self.cfg, self.name, d)
