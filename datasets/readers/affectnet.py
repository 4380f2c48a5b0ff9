"""AffectNet, manually annotated part, in either of its two releases (domain ``affectnet``).

Under the domain folder (``DATASET.ROOT/affectnet`` or ``DATASET.AFFECTNET.DIR``), the release is
recognised from what is there (``DATASET.AFFECTNET.RELEASE auto``; ``csv`` or ``npy`` to force one):

Release with file lists and face boxes (``csv``)::

    Manually_Annotated_file_lists/training.csv    subDirectory_filePath,face_x,face_y,face_width,
    Manually_Annotated_file_lists/validation.csv  face_height,facial_landmarks,expression,valence,arousal
    Manually_Annotated_Images/<subDirectory_filePath>

  The face box ``(face_x, face_y, face_width, face_height)`` (top-left corner and size, pixels) is
  cropped when the image is read. A header row is recognised and checked; a file without one is
  read with the columns in the order above.

Release with cropped faces (``npy``)::

    train_set/images/<id>.jpg   train_set/annotations/<id>_exp.npy   (and _val, _aro, _lnd: unused)
    val_set/images/<id>.jpg     val_set/annotations/<id>_exp.npy

When both are present the ``csv`` release is read (it is the one with the original images).

Expression codes: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt,
8 none, 9 uncertain, 10 non-face. 0-6 map to the canonical order; 7-10 are dropped (contempt is not
one of the seven; the others are not an expression). Any other code is an error.

Splits: train = the training list; test = the official validation set (the test set is not public).
``DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS`` > 0 keeps at most that many training images per class,
drawn without replacement by a generator seeded with ``(CAP_SEED, class)``, in file order; the chosen
list is written to ``OUTPUT_DIR/affectnet_train_cap.txt`` so a run records exactly what it trained on.
The default (0) keeps them all, as the paper did.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import os.path as osp
import re
from collections import Counter, defaultdict

import numpy as np

from datasets.classes import CANONICAL_CLASSES
from datasets.readers._common import (check_header, check_splits, checked_choice, line_error, log_dropped,
                                      parse_int, require_domain_dir, require_file, require_subdir, sorted_frames)
from datasets.readers.base import DOMAIN_REGISTRY, DomainReader, DomainSplits, Item
from engine.config import Bounds
from engine.utils.errors import UserError
from engine.utils.tools import atomic_write_bytes

logger = logging.getLogger(__name__)

LISTS_DIR = "Manually_Annotated_file_lists"
IMAGES_DIR = "Manually_Annotated_Images"
LIST_FILES = {"train": "training.csv", "test": "validation.csv"}
CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
               "expression", "valence", "arousal")
EXPRESSION_COLUMN = CSV_COLUMNS.index("expression")
NPY_SPLITS = {"train": "train_set", "test": "val_set"}
EXP_SUFFIX = "_exp.npy"
NATIVE_TO_CANONICAL = {0: 6, 1: 3, 2: 4, 3: 0, 4: 1, 5: 2, 6: 5}
DROPPED_CODES = {7: "contempt", 8: "none", 9: "uncertain", 10: "non-face"}
RELEASES = ("auto", "csv", "npy")
CAP_LIST_FILE = "affectnet_train_cap.txt"


def _code_error(code: int) -> str:
    return f"expression {code} is not an AffectNet code; expected 0-10"


# ---------------------------------------------------------------------------- release with file lists
def _parse_box(fields: list[str], path: str, lineno: int) -> tuple[int, int, int, int]:
    x, y, w, h = (parse_int(v) for v in fields[1:5])
    if x is None or y is None or w is None or h is None or x < 0 or y < 0 or w <= 0 or h <= 0:
        raise line_error(path, lineno, f"face box {','.join(fields[1:5])!r} is not face_x,face_y >= 0 and "
                                       f"face_width,face_height > 0 (whole pixels)")
    return x, y, x + w, y + h


def read_csv_list(path: str, image_dir: str, dropped: Counter) -> list[Item]:
    """Items of one AffectNet file list (training.csv / validation.csv), face boxes as crops."""
    items: list[Item] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for fields in reader:
            if not fields:
                continue
            lineno = reader.line_num
            if lineno == 1 and fields[0].strip() == CSV_COLUMNS[0]:  # a header row (optional, see module docstring)
                check_header(fields, path, CSV_COLUMNS, "AffectNet")
                continue
            if len(fields) != len(CSV_COLUMNS):
                raise line_error(path, lineno, f"{len(fields)} fields; expected {len(CSV_COLUMNS)} "
                                               f"({','.join(CSV_COLUMNS)})")
            code = parse_int(fields[EXPRESSION_COLUMN])
            if code is None:
                raise line_error(path, lineno, f"expression {fields[EXPRESSION_COLUMN]!r} is not a number; "
                                               f"expected 0-10")
            if code in DROPPED_CODES:
                dropped[f"{DROPPED_CODES[code]} (code {code})"] += 1
                continue
            if code not in NATIVE_TO_CANONICAL:
                raise line_error(path, lineno, _code_error(code))
            items.append(Item(osp.join(image_dir, fields[0].strip()), NATIVE_TO_CANONICAL[code],
                              _parse_box(fields, path, lineno)))
    return items


# ---------------------------------------------------------------------------- release with .npy labels
_NPY_MAGIC = b"\x93NUMPY\x01"
_NPY_DESCR = re.compile(r"'descr':\s*'([^']+)'")
_NPY_SCALAR = re.compile(r"'shape':\s*\(\)")


def read_npy_scalar(path: str) -> object:
    """The single value stored in a small ``.npy`` file.

    The training set has ~290k annotation files: the version-1 header of a 0-d array is read here
    directly (about 3x faster than ``np.load``, which evaluates the header as Python); anything else
    goes through ``np.load``.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(_NPY_MAGIC) and len(raw) > 10:
        header_end = 10 + int.from_bytes(raw[8:10], "little")
        header = raw[10:header_end].decode("latin1")
        descr = _NPY_DESCR.search(header)
        if descr and _NPY_SCALAR.search(header):
            return np.frombuffer(raw, dtype=np.dtype(descr.group(1)), count=1, offset=header_end)[0].item()
    return np.load(io.BytesIO(raw), allow_pickle=False).item()


def read_expression_code(path: str) -> int:
    """The expression code of one ``<id>_exp.npy`` (stored as text such as ``'3'``, or as a number)."""
    try:  # raises only for a corrupt file, never in the normal path
        value = read_npy_scalar(path)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read AffectNet annotation {path}: {e}; expected a .npy file holding one "
                        f"expression code") from None
    code = parse_int(value) if isinstance(value, str) else (int(value) if float(value).is_integer() else None)
    if code is None:
        raise UserError(f"AffectNet annotation {path} holds {value!r}; expected an expression code 0-10")
    return code


def read_npy_split(split_dir: str, dropped: Counter) -> list[Item]:
    """Items of one split folder (``train_set`` / ``val_set``) of the cropped-faces release."""
    from tqdm import tqdm

    images_dir = require_subdir(osp.join(split_dir, "images"), "AffectNet image folder", "<id>.jpg face images")
    annotations_dir = require_subdir(osp.join(split_dir, "annotations"), "AffectNet annotation folder",
                                     f"<id>{EXP_SUFFIX} expression labels")
    label_files = sorted_frames(n[: -len("_exp.npy")] for n in os.listdir(annotations_dir) if n.endswith(EXP_SUFFIX))
    if not label_files:
        raise UserError(f"AffectNet label files not found: no *{EXP_SUFFIX} in {annotations_dir} "
                        f"(expected one <id>{EXP_SUFFIX} per image of {images_dir})")
    items: list[Item] = []
    for image_id in tqdm(label_files, desc=f"reading AffectNet {osp.basename(split_dir)} labels", unit="file"):
        path = osp.join(annotations_dir, image_id + EXP_SUFFIX)
        code = read_expression_code(path)
        if code in DROPPED_CODES:
            dropped[f"{DROPPED_CODES[code]} (code {code})"] += 1
        elif code in NATIVE_TO_CANONICAL:
            items.append(Item(osp.join(images_dir, f"{image_id}.jpg"), NATIVE_TO_CANONICAL[code]))
        else:
            raise UserError(f"AffectNet annotation {path}: {_code_error(code)}")
    return items


# ---------------------------------------------------------------------------- capped training set
def cap_per_class(items: list[Item], cap: int, seed: int) -> list[Item]:
    """At most ``cap`` items of each class (see module docstring), in their original order."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_class[it.label].append(i)
    keep: set[int] = set()
    for label, indices in by_class.items():
        if len(indices) <= cap:
            keep.update(indices)
        else:
            rng = np.random.default_rng([seed, label])
            keep.update(indices[j] for j in rng.choice(len(indices), size=cap, replace=False))
    return [it for i, it in enumerate(items) if i in keep]


def save_cap_list(items: list[Item], domain_dir: str, output_dir: str, cap: int, seed: int) -> str:
    """Write the capped training list (paths relative to the domain folder, class name) to ``output_dir``."""
    lines = [f"# AffectNet training images, at most {cap} per class, seed {seed}; paths relative to {domain_dir}"]
    lines += [f"{osp.relpath(it.impath, domain_dir)} {CANONICAL_CLASSES[it.label]}" for it in items]
    os.makedirs(output_dir, exist_ok=True)
    path = osp.join(output_dir, CAP_LIST_FILE)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


@DOMAIN_REGISTRY.register(name="affectnet")
class AffectNet(DomainReader):
    """AffectNet in either release (see module docstring)."""

    # DATASET.AFFECTNET.* (DIR: the folder holding the release)
    config_keys = {
        # "auto" (recognise it), "csv" (file lists + face boxes) or "npy" (train_set/ val_set/ with *_exp.npy)
        "RELEASE": "auto",
        # At most this many training images per class (0 = all, as the paper); the test set is never capped
        "TRAIN_CAP_PER_CLASS": 0,
        # Seed of the capped draw
        "CAP_SEED": 0,
    }
    config_ranges = {"TRAIN_CAP_PER_CLASS": Bounds(low=0, integer=True)}  # 0: no cap

    def read(self) -> DomainSplits:
        opts = self.cfg.DATASET.AFFECTNET
        release = checked_choice(opts.RELEASE, "DATASET.AFFECTNET.RELEASE", RELEASES)
        root = require_domain_dir(self, "AffectNet", f"{LISTS_DIR}/ and {IMAGES_DIR}/, or train_set/ and val_set/")
        release = self.detect_release(root) if release == "auto" else release
        dropped: Counter = Counter()
        if release == "csv":
            splits, listed_in = self.read_csv_release(root, dropped), osp.join(root, LISTS_DIR)
        else:
            splits, listed_in = self.read_npy_release(root, dropped), root
        log_dropped(self.name, dropped)
        splits = check_splits(splits, self.cfg, self.name, listed_in, hint=f"{release} release in {root}")
        if opts.TRAIN_CAP_PER_CLASS > 0:
            splits.train = self.capped(splits.train, root, opts.TRAIN_CAP_PER_CLASS, opts.CAP_SEED)
        return splits

    @staticmethod
    def detect_release(root: str) -> str:
        if osp.isdir(osp.join(root, LISTS_DIR)):
            return "csv"
        if any(osp.isdir(osp.join(root, d)) for d in NPY_SPLITS.values()):
            return "npy"
        raise UserError(f"AffectNet files not found in {root}: expected {LISTS_DIR}/training.csv and validation.csv "
                        f"with {IMAGES_DIR}/ (release with face boxes), or train_set/ and val_set/ each holding "
                        f"images/ and annotations/ (release with cropped faces)")

    @staticmethod
    def read_csv_release(root: str, dropped: Counter) -> DomainSplits:
        image_dir = require_subdir(osp.join(root, IMAGES_DIR), "AffectNet image folder",
                                   "the images listed in the file lists, as <subDirectory>/<file>")
        lists = {split: require_file(osp.join(root, LISTS_DIR, name), "AffectNet file list", ",".join(CSV_COLUMNS))
                 for split, name in LIST_FILES.items()}
        return DomainSplits(train=read_csv_list(lists["train"], image_dir, dropped),
                            test=read_csv_list(lists["test"], image_dir, dropped))

    @staticmethod
    def read_npy_release(root: str, dropped: Counter) -> DomainSplits:
        split_dirs = {split: require_subdir(osp.join(root, name), "AffectNet split folder",
                                            "images/ and annotations/ of the release with cropped faces")
                      for split, name in NPY_SPLITS.items()}
        return DomainSplits(train=read_npy_split(split_dirs["train"], dropped),
                            test=read_npy_split(split_dirs["test"], dropped))

    def capped(self, train: list[Item], root: str, cap: int, seed: int) -> list[Item]:
        kept = cap_per_class(train, cap, seed)
        where = "not saved: no OUTPUT_DIR"
        if self.cfg.OUTPUT_DIR:
            where = "list in " + save_cap_list(kept, root, self.cfg.OUTPUT_DIR, cap, seed)
        logger.info("AffectNet training set capped at %d per class (seed %d): %d of %d images (%s)",
                    cap, seed, len(kept), len(train), where)
        return kept
