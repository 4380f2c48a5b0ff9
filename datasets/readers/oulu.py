"""Oulu-CASIA NIR&VIS facial expressions, visible light, strong illumination (domain ``oulu``).

Layout under the domain folder (``DATASET.ROOT/oulu`` or ``DATASET.OULU.DIR``)::

    VL/Strong/P001/Anger/000.jpeg 001.jpeg ...     subjects P001..P080, one folder per expression:
    VL/Strong/P001/Disgust/...                     Anger, Disgust, Fear, Happiness, Sadness, Surprise

``DATASET.OULU.SUBSET`` (default ``VL/Strong``) names the part read, e.g. ``VL/Weak`` or ``NI/Strong``.
Each expression folder is one sequence from neutral onset to apex; its frames are ordered by the
number in their names.

Labels: the last ``DATASET.OULU.N_LAST_FRAMES`` (3) frames of a sequence get its expression, the
first ``DATASET.OULU.N_NEUTRAL_FRAMES`` (1) get neutral, the frames in between are not used. A sequence
shorter than the two counts together is skipped with a warning: a frame cannot be both. With
``N_NEUTRAL_FRAMES 0`` the domain has no neutral class (and none is expected).

Split: there is no official one. The whole set is both the train split (the unlabelled target pool,
or a source's training set) and the test split.

Faces: the raw frames (320x240) include background and the paper cropped faces with RetinaFace. This
reader reads whatever images are in the layout: to use face crops, write them with the same folder and
file names and point ``DATASET.OULU.DIR`` at their root.
"""
from __future__ import annotations

import logging
import os
import os.path as osp

from datasets.classes import CANONICAL_CLASSES, canonical_name
from datasets.readers._common import check_splits, require_domain_dir, require_subdir, sorted_frames
from datasets.readers.base import DOMAIN_REGISTRY, DomainReader, DomainSplits, Item
from engine.config import Bounds
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

EXPRESSION_FOLDERS = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
FRAME_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
NEUTRAL = CANONICAL_CLASSES.index("neutral")


def expression_label(folder: str, path: str) -> int:
    """Canonical class of an expression folder, or an error naming the folder and the accepted names."""
    name = canonical_name(folder)
    if name is None or name == "neutral":
        raise UserError(f"unknown Oulu-CASIA expression folder {path}; expected one of {', '.join(EXPRESSION_FOLDERS)}")
    return CANONICAL_CLASSES.index(name)


def select_frames(frames: list[str], label: int, n_last: int, n_neutral: int) -> list[tuple[str, int]]:
    """``(frame, label)`` pairs of one sequence: the first ``n_neutral`` neutral, the last ``n_last`` ``label``."""
    return [(f, NEUTRAL) for f in frames[:n_neutral]] + [(f, label) for f in frames[len(frames) - n_last:]]


def label_sequences(subset: str, n_last: int, n_neutral: int) -> list[Item]:
    """Labelled frames of every ``<subject>/<Expression>`` sequence under ``subset``; sequences too short
    for the two counts are skipped with one warning."""
    items: list[Item] = []
    too_short: list[str] = []
    for subject in _subfolders(subset):
        for folder in _subfolders(osp.join(subset, subject)):
            sequence = osp.join(subset, subject, folder)
            label = expression_label(folder, sequence)
            frames = sorted_frames(f for f in os.listdir(sequence) if f.lower().endswith(FRAME_EXTENSIONS))
            if len(frames) < n_last + n_neutral:
                too_short.append(sequence)
                continue
            items += [Item(osp.join(sequence, f), lab) for f, lab in select_frames(frames, label, n_last, n_neutral)]
    if too_short:
        logger.warning("Oulu-CASIA: skipped %d sequence(s) with fewer than %d frames, e.g. %s",
                       len(too_short), n_last + n_neutral, too_short[0])
    return items


def _subfolders(path: str) -> list[str]:
    return sorted(e for e in os.listdir(path) if not e.startswith(".") and osp.isdir(osp.join(path, e)))


@DOMAIN_REGISTRY.register(name="oulu")
class OuluCASIA(DomainReader):
    """Oulu-CASIA sequences as labelled frames (see module docstring)."""

    # DATASET.OULU.* (DIR: the folder holding VL/; point it at a copy of the layout with face crops)
    config_keys = {
        # Part of the database read: <imaging system>/<illumination>
        "SUBSET": "VL/Strong",
        # Frames at the end of each sequence labelled with its expression
        "N_LAST_FRAMES": 3,
        # Frames at the start of each sequence labelled neutral (0 = no neutral class)
        "N_NEUTRAL_FRAMES": 1,
    }
    config_ranges = {"N_LAST_FRAMES": Bounds(low=1, integer=True), "N_NEUTRAL_FRAMES": Bounds(low=0, integer=True)}

    def read(self) -> DomainSplits:
        opts = self.cfg.DATASET.OULU
        n_last, n_neutral = opts.N_LAST_FRAMES, opts.N_NEUTRAL_FRAMES
        root = require_domain_dir(self, "Oulu-CASIA", f"{opts.SUBSET}/P001..P080/<Expression>/NNN.jpeg")
        subset = require_subdir(osp.join(root, *opts.SUBSET.split("/")), "Oulu-CASIA folder",
                                f"subject folders P001..P080 with one folder per expression "
                                f"({', '.join(EXPRESSION_FOLDERS)}); DATASET.OULU.SUBSET is {opts.SUBSET!r}")
        items = label_sequences(subset, n_last, n_neutral)
        if not items:
            raise UserError(f"no Oulu-CASIA sequences found in {subset}; expected P001..P080/<Expression>/NNN.jpeg")
        classes = [i for i in range(len(CANONICAL_CLASSES)) if n_neutral > 0 or i != NEUTRAL]
        splits = DomainSplits(train=items, test=list(items))
        return check_splits(splits, self.cfg, self.name, subset, classes=classes,
                            hint=f"{n_last} last and {n_neutral} first frame(s) per sequence in {subset}")
