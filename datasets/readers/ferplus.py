"""FERPlus: Microsoft's crowd votes on the FER2013 images (domain ``ferplus``).

Layout under the domain folder (``DATASET.ROOT/ferplus`` or ``DATASET.FERPLUS.DIR``)::

    fer2013new.csv            Microsoft's labels: Usage,Image name,neutral,happiness,surprise,sadness,
                              anger,disgust,fear,contempt,unknown,NF (10 votes per row, rows in the
                              order of Kaggle's fer2013.csv)
    and the images, either
    FER2013Train/ FER2013Valid/ FER2013Test/   fer0000000.png ... (made by Microsoft's
                              generate_training_data.py: Training, PublicTest, PrivateTest rows)
    or
    fer2013.csv               Kaggle's FER2013 (emotion,pixels,Usage: 48x48 grey pixel strings); the
                              images are made from it once into fer2013_images/FER2013{Train,Valid,Test}/

Splits: train = Training, test = PrivateTest, val = PublicTest (kept as ``DomainSplits.val``).

Labels (``DATASET.FERPLUS.LABEL_RULE``):

- ``argmax`` (default): the column with the most votes wins. A tie for the most votes is dropped
  (``DATASET.FERPLUS.TIE_BREAK drop``, the default: such a face has no single expression most
  annotators saw) or goes to the first tied column in the CSV's column order
  (``TIE_BREAK first``, what ``numpy.argmax`` does, as many public FERPlus loaders).
- ``majority``: Microsoft's "majority" training mode (FERPlus repository, ``ferplus.py``): votes of 1
  are removed as outliers; the column with the most remaining votes wins only if it holds strictly
  more than half of the remaining votes; otherwise the image is unknown and dropped.

Dropped: rows with an empty ``Image name`` (non-faces Microsoft did not export), and images whose
winner is contempt (not one of the seven), unknown or NF (not a face).
"""
from __future__ import annotations

import csv
import logging
import os
import os.path as osp
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from datasets.classes import CANONICAL_CLASSES
from datasets.readers._common import (check_header, check_splits, checked_choice, line_error, log_dropped,
                                      parse_int, require_domain_dir, require_file, require_subdir)
from datasets.readers.base import DOMAIN_REGISTRY, DomainReader, DomainSplits, Item
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

LABEL_FILE = "fer2013new.csv"
KAGGLE_FILE = "fer2013.csv"
MADE_IMAGES_DIR = "fer2013_images"
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
HEADER = ("Usage", "Image name") + VOTE_COLUMNS
KAGGLE_HEADER = ("emotion", "pixels", "Usage")
# Vote column -> canonical class; contempt, unknown and NF have none (their winners are dropped)
COLUMN_TO_CANONICAL = {i: CANONICAL_CLASSES.index(c) for i, c in enumerate(VOTE_COLUMNS) if c in CANONICAL_CLASSES}
USAGE_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
IMAGE_SIDE = 48
LABEL_RULES = ("argmax", "majority")
TIE_BREAKS = ("drop", "first")
IMAGE_SOURCES = ("auto", "folders", "fer2013csv")


@dataclass(frozen=True)
class VoteRow:
    """One row of fer2013new.csv."""

    lineno: int
    usage: str
    name: str
    votes: tuple[int, ...]


def argmax_winner(votes: Sequence[int], tie_break: str) -> tuple[int | None, str]:
    """``(column, "")`` of the most-voted column, or ``(None, reason)``; see module docstring for ties."""
    top = max(votes)
    if top == 0:
        return None, "rows without votes"
    tied = [i for i, v in enumerate(votes) if v == top]
    if len(tied) > 1 and tie_break == "drop":
        return None, "ties"
    return tied[0], ""


def majority_winner(votes: Sequence[int]) -> tuple[int | None, str]:
    """``(column, "")`` under Microsoft's majority rule, or ``(None, reason)`` (see module docstring)."""
    kept = [v if v > 1 else 0 for v in votes]  # a single vote is an outlier
    top = max(kept)
    if 2 * top <= sum(kept):  # also covers "no votes left"
        return None, "no majority"
    return kept.index(top), ""


def read_vote_rows(path: str) -> list[VoteRow]:
    """Every data row of fer2013new.csv (non-faces included, to stay aligned with fer2013.csv)."""
    rows: list[VoteRow] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        check_header(next(reader, None), path, HEADER, "FERPlus")
        for fields in reader:
            if not fields:
                continue
            lineno = reader.line_num
            if len(fields) != len(HEADER):
                raise line_error(path, lineno, f"{len(fields)} fields; expected {len(HEADER)} ({','.join(HEADER)})")
            usage, name = fields[0].strip(), fields[1].strip()
            if usage not in USAGE_SPLITS:
                raise line_error(path, lineno, f"Usage {usage!r} is not one of {', '.join(USAGE_SPLITS)}")
            votes = tuple(parse_int(v) for v in fields[2:])
            if any(v is None or v < 0 for v in votes):
                raise line_error(path, lineno, f"votes {','.join(fields[2:])!r} are not all counts "
                                               f"(whole numbers >= 0)")
            rows.append(VoteRow(lineno, usage, name, votes))
    return rows


def make_images_from_fer2013_csv(domain_dir: str, rows: list[VoteRow], progress: bool = True) -> str:
    """Write the FERPlus images from Kaggle's fer2013.csv into ``<domain_dir>/fer2013_images`` once.

    Row ``i`` of fer2013.csv is the image of row ``i`` of fer2013new.csv (Microsoft's statement); the
    Usage columns must agree row by row, so a file from another source or order is caught. Images are
    written into a temporary sibling folder renamed into place at the end, so a half-made folder is
    never used; a leftover temporary folder (a killed run) is ignored and can be deleted.
    """
    target = osp.join(domain_dir, MADE_IMAGES_DIR)
    if osp.isdir(target):
        return target
    source = require_file(osp.join(domain_dir, KAGGLE_FILE), "FER2013 pixel file",
                          f"Kaggle's fer2013.csv ({','.join(KAGGLE_HEADER)}) to make the images from, or Microsoft's "
                          f"image folders {', '.join(USAGE_FOLDERS.values())} in {domain_dir}")
    tmp = tempfile.mkdtemp(prefix=f".{MADE_IMAGES_DIR}.tmp-", dir=domain_dir)
    try:
        for folder in USAGE_FOLDERS.values():
            os.makedirs(osp.join(tmp, folder))
        _write_images(source, rows, tmp, progress)
        try:
            os.replace(tmp, target)
        except OSError:
            if not osp.isdir(target):  # else another process finished first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Made the FERPlus images from %s in %s", source, target)
    return target


def _write_images(source: str, rows: list[VoteRow], out_dir: str, progress: bool) -> None:
    from tqdm import tqdm

    with open(source, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        check_header(next(reader, None), source, KAGGLE_HEADER, "FER2013")
        kaggle_rows = (fields for fields in reader if fields)
        bar = tqdm(total=len(rows), desc="making FERPlus images from fer2013.csv", unit="img", disable=not progress)
        with bar:
            for row in rows:
                fields = next(kaggle_rows, None)
                if fields is None:
                    raise UserError(f"{source} ends before {LABEL_FILE} (at its line {row.lineno}); "
                                    f"expected the same {len(rows)} rows in the same order")
                lineno = reader.line_num
                if len(fields) != len(KAGGLE_HEADER) or fields[2].strip() != row.usage:
                    raise line_error(source, lineno, f"row does not match {LABEL_FILE} line {row.lineno} (Usage "
                                                     f"{row.usage}); expected emotion,pixels,Usage rows in the same order")
                if row.name:
                    pixels = _parse_pixels(fields[1], source, lineno)
                    Image.fromarray(pixels).save(osp.join(out_dir, USAGE_FOLDERS[row.usage], row.name))
                bar.update()
        if next(kaggle_rows, None) is not None:
            raise UserError(f"{source} has more rows than {LABEL_FILE} ({len(rows)}); "
                            f"expected the same rows in the same order")


def _parse_pixels(text: str, path: str, lineno: int) -> np.ndarray:
    expected = f"pixels are not {IMAGE_SIDE * IMAGE_SIDE} space-separated grey levels 0-255"
    values = text.split()
    if len(values) != IMAGE_SIDE * IMAGE_SIDE:
        raise line_error(path, lineno, f"{expected} ({len(values)} values)")
    try:  # raises only on a corrupt row, never in the normal path
        pixels = np.array(values, dtype=np.int32)
    except (ValueError, OverflowError):
        raise line_error(path, lineno, expected) from None
    if pixels.min() < 0 or pixels.max() > 255:
        raise line_error(path, lineno, expected)
    return pixels.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)


@DOMAIN_REGISTRY.register(name="ferplus")
class FERPlus(DomainReader):
    """FERPlus with Microsoft's folders or images made from fer2013.csv (see module docstring)."""

    # DATASET.FERPLUS.* (DIR: the folder holding fer2013new.csv)
    config_keys = {
        # "argmax" (most votes) or "majority" (Microsoft's rule: > half of the votes left after removing single votes)
        "LABEL_RULE": "argmax",
        # argmax ties: "drop" the image, or "first" = the first tied column in the CSV's order
        "TIE_BREAK": "drop",
        # "auto" (Microsoft's folders if present, else images made from fer2013.csv), "folders" or "fer2013csv"
        "IMAGE_SOURCE": "auto",
    }

    def read(self) -> DomainSplits:
        opts = self.cfg.DATASET.FERPLUS
        rule = checked_choice(opts.LABEL_RULE, "DATASET.FERPLUS.LABEL_RULE", LABEL_RULES)
        tie_break = checked_choice(opts.TIE_BREAK, "DATASET.FERPLUS.TIE_BREAK", TIE_BREAKS)
        image_source = checked_choice(opts.IMAGE_SOURCE, "DATASET.FERPLUS.IMAGE_SOURCE", IMAGE_SOURCES)
        root = require_domain_dir(self, "FERPlus", f"{LABEL_FILE} and the images")
        label_file = require_file(osp.join(root, LABEL_FILE), "FERPlus label file",
                                  f"Microsoft's FERPlus votes ({','.join(HEADER)})")
        rows = read_vote_rows(label_file)
        image_root = self.image_root(root, rows, image_source)

        splits = DomainSplits(val=[])
        dropped: Counter = Counter()
        for row in rows:
            if not row.name:
                dropped["non-face rows (no image name)"] += 1
                continue
            column, reason = majority_winner(row.votes) if rule == "majority" else argmax_winner(row.votes, tie_break)
            if column is None:
                dropped[reason] += 1
            elif column not in COLUMN_TO_CANONICAL:
                dropped[f"{VOTE_COLUMNS[column]} winners"] += 1
            else:
                path = osp.join(image_root, USAGE_FOLDERS[row.usage], row.name)
                getattr(splits, USAGE_SPLITS[row.usage]).append(Item(path, COLUMN_TO_CANONICAL[column]))
        log_dropped(self.name, dropped)
        hint = f"label rule {rule}" + (f", ties {tie_break}" if rule == "argmax" else "") + f", {label_file}"
        return check_splits(splits, self.cfg, self.name, label_file, hint=hint)

    def image_root(self, root: str, rows: list[VoteRow], image_source: str) -> str:
        """The folder holding FER2013Train/Valid/Test: the domain folder, or the one made from fer2013.csv."""
        has_folders = any(osp.isdir(osp.join(root, d)) for d in USAGE_FOLDERS.values())
        if image_source == "folders" or (image_source == "auto" and has_folders):
            for folder in USAGE_FOLDERS.values():
                require_subdir(osp.join(root, folder), "FERPlus image folder",
                               "the PNG images made by Microsoft's generate_training_data.py, or set "
                               "DATASET.FERPLUS.IMAGE_SOURCE fer2013csv to make them from Kaggle's fer2013.csv")
            return root
        return make_images_from_fer2013_csv(root, rows)
