"""RAF-DB, basic (single-label) subset, as its owners ship it (domain ``rafdb``).

Layout under the domain folder (``DATASET.ROOT/rafdb`` or ``DATASET.RAFDB.DIR``)::

    basic/EmoLabel/list_patition_label.txt      lines "train_00001.jpg 5" / "test_0001.jpg 1"
    basic/Image/aligned/train_00001_aligned.jpg  (DATASET.RAFDB.IMAGE_VARIANT aligned, the default)
    basic/Image/original/train_00001.jpg         (DATASET.RAFDB.IMAGE_VARIANT original)

The split comes from the file-name prefix (``train_`` / ``test_``). Native labels 1..7 are surprise,
fear, disgust, happiness, sadness, anger, neutral, so the canonical index is ``label - 1``. Nothing is
dropped: every listed image is one of the seven classes.
"""
from __future__ import annotations

import os.path as osp

from datasets.readers._common import (check_splits, checked_choice, line_error, parse_int, require_domain_dir,
                                      require_file, require_subdir)
from datasets.readers.base import DOMAIN_REGISTRY, DomainReader, DomainSplits, Item

LABEL_FILE = osp.join("basic", "EmoLabel", "list_patition_label.txt")  # sic: the release's spelling
IMAGE_VARIANTS = ("aligned", "original")
NATIVE_CODES = range(1, 8)
SPLIT_PREFIXES = {"train_": "train", "test_": "test"}


def image_name(name: str, variant: str) -> str:
    """The image file of a label-file entry: ``train_00001.jpg`` -> ``train_00001_aligned.jpg`` when aligned."""
    return f"{osp.splitext(name)[0]}_aligned.jpg" if variant == "aligned" else name


def parse_label_line(line: str, path: str, lineno: int) -> tuple[str, str, int] | None:
    """``(split, name, canonical label)`` of one line; None for a blank line; an error naming ``path:lineno``."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) != 2:
        raise line_error(path, lineno, f"cannot parse {line.strip()!r}; expected '<train|test>_<n>.jpg <label 1-7>'")
    name, label_text = fields
    split = next((s for prefix, s in SPLIT_PREFIXES.items() if name.startswith(prefix)), None)
    if split is None:
        raise line_error(path, lineno, f"image name {name!r} starts with neither 'train_' nor 'test_'")
    code = parse_int(label_text)
    if code is None:
        raise line_error(path, lineno, f"label {label_text!r} is not a number; expected 1-7")
    if code not in NATIVE_CODES:
        raise line_error(path, lineno, f"label {code} is not a RAF-DB basic expression code; expected 1-7")
    return split, name, code - 1


@DOMAIN_REGISTRY.register(name="rafdb")
class RAFDB(DomainReader):
    """RAF-DB basic: train/test from the label file, aligned (or original) images."""

    # DATASET.RAFDB.* (DIR: the folder holding basic/)
    config_keys = {
        "IMAGE_VARIANT": "aligned",  # "aligned" (100x100 aligned faces, basic/Image/aligned) or "original"
    }

    def read(self) -> DomainSplits:
        root = require_domain_dir(self, "RAF-DB basic", LABEL_FILE)
        variant = checked_choice(self.cfg.DATASET.RAFDB.IMAGE_VARIANT, "DATASET.RAFDB.IMAGE_VARIANT", IMAGE_VARIANTS)
        label_file = require_file(osp.join(root, LABEL_FILE), "RAF-DB label file",
                                  "lines such as 'train_00001.jpg 5' from the basic subset's EmoLabel folder")
        image_dir = require_subdir(osp.join(root, "basic", "Image", variant), f"RAF-DB {variant} image folder",
                                   f"the {variant} images (the release ships them zipped: unzip them there)"
                                   + ("; or set DATASET.RAFDB.IMAGE_VARIANT original" if variant == "aligned" else ""))
        splits = DomainSplits()
        with open(label_file, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                entry = parse_label_line(line, label_file, lineno)
                if entry is not None:
                    split, name, label = entry
                    getattr(splits, split).append(Item(osp.join(image_dir, image_name(name, variant)), label))
        return check_splits(splits, self.cfg, self.name, label_file, hint=f"label file {label_file}")
