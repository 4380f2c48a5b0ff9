"""Miniature copies of the official layouts of RAF-DB, FERPlus, AffectNet and Oulu-CASIA.

File names, CSV columns, label files and folder trees are exactly those of the real releases; the
images are small generated ones. Each ``write_*`` function writes the rows it is given (so a test can
plant a bad line); each ``make_*`` writes a default miniature with every native code present.

The native tables below are written from the datasets' documentation (docs/datasets.md),
independently of the readers, so that the tests check the readers' mappings against them.
"""
from __future__ import annotations

import csv
import os
import os.path as osp
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from engine.config import extend_cfg, get_cfg_default, merge_from_list

# Native label -> canonical class name, per docs/datasets.md
RAFDB_NATIVE = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FERPLUS_HEADER = ["Usage", "Image name", *FERPLUS_COLUMNS]
FERPLUS_KEPT = {"neutral": "neutral", "happiness": "happiness", "surprise": "surprise", "sadness": "sadness",
                "anger": "anger", "disgust": "disgust", "fear": "fear"}
FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
AFFECTNET_NATIVE = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger"}
AFFECTNET_DROPPED = (7, 8, 9, 10)
AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]
OULU_EXPRESSIONS = {"Anger": "anger", "Disgust": "disgust", "Fear": "fear", "Happiness": "happiness",
                    "Sadness": "sadness", "Surprise": "surprise"}

SIDE = 16  # image side in pixels: small keeps the suite fast


def save_image(path: str, value: int = 0, size: tuple[int, int] = (SIDE, SIDE), mode: str = "RGB") -> None:
    """A flat image of grey level ``value`` (JPEG or PNG from the extension)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.new(mode, size, (value,) * len(mode) if mode != "L" else value).save(path)


def reader_cfg(root: str, *opts: str, output_dir: str = ""):
    """A frozen config with ``DATASET.ROOT`` = ``root`` and extra ``KEY VALUE`` pairs."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_list(cfg, ["DATASET.ROOT", str(root), "OUTPUT_DIR", str(output_dir), *opts])
    cfg.freeze()
    return cfg


def read_domain(root: str, name: str, *opts: str, output_dir: str = ""):
    """The :class:`DomainSplits` the registered reader ``name`` makes of ``root/name``."""
    from datasets.readers import build_domain_reader

    return build_domain_reader(reader_cfg(root, *opts, output_dir=output_dir), name).read()


# ---------------------------------------------------------------------------- RAF-DB
def rafdb_rows(n_train: int = 2, n_test: int = 1) -> list[tuple[str, int]]:
    """Label-file rows with ``n_train``/``n_test`` images of every native code 1..7."""
    rows, n = [], {"train": 0, "test": 0}
    for code in RAFDB_NATIVE:
        for split, count, width in (("train", n_train, 5), ("test", n_test, 4)):
            for _ in range(count):
                n[split] += 1
                rows.append((f"{split}_{n[split]:0{width}d}.jpg", code))
    return rows


def write_rafdb(domain_dir: str, rows: Sequence[tuple[str, int | str]], lines: Iterable[str] = (),
                images: bool = True) -> None:
    """``basic/EmoLabel/list_patition_label.txt`` with ``rows`` (then raw ``lines``), and both image variants."""
    label_dir = osp.join(domain_dir, "basic", "EmoLabel")
    os.makedirs(label_dir, exist_ok=True)
    with open(osp.join(label_dir, "list_patition_label.txt"), "w") as f:
        f.writelines(f"{name} {label}\n" for name, label in rows)
        f.writelines(f"{line}\n" for line in lines)
    for i, (name, _) in enumerate(rows):
        stem = osp.splitext(name)[0]
        if images:
            save_image(osp.join(domain_dir, "basic", "Image", "aligned", f"{stem}_aligned.jpg"), value=i)
            save_image(osp.join(domain_dir, "basic", "Image", "original", name), value=i, size=(24, 20))


def make_rafdb(root: str, n_train: int = 2, n_test: int = 1) -> str:
    d = osp.join(root, "rafdb")
    write_rafdb(d, rafdb_rows(n_train, n_test))
    return d


# ---------------------------------------------------------------------------- FERPlus
def votes_for(winner: str, n: int = 8, runner_up: str = "unknown") -> list[int]:
    """Ten votes: ``n`` for ``winner``, the rest (10 - n) for ``runner_up``."""
    votes = [0] * len(FERPLUS_COLUMNS)
    votes[FERPLUS_COLUMNS.index(winner)] += n
    votes[FERPLUS_COLUMNS.index(runner_up)] += 10 - n
    return votes


def ferplus_rows(n_per_column: int = 2) -> list[tuple[str, str, list[int]]]:
    """``(Usage, Image name, votes)`` rows: in every Usage, ``n_per_column`` clear winners (8 of 10 votes)
    of every vote column, then one non-face row (empty name, 10 NF votes). Names are ``fer<row>.png``
    with the row index, so non-face rows leave gaps, as in Microsoft's file."""
    rows: list[tuple[str, bool, list[int]]] = []
    for usage in FERPLUS_FOLDERS:
        for column in FERPLUS_COLUMNS:
            rows += [(usage, True, votes_for(column)) for _ in range(n_per_column)]
        rows.append((usage, False, votes_for("NF", 10)))
    return [(usage, f"fer{i:07d}.png" if named else "", votes) for i, (usage, named, votes) in enumerate(rows)]


def kaggle_pixels(row_index: int) -> np.ndarray:
    """The 48x48 grey image of row ``row_index`` in the miniature fer2013.csv."""
    return ((np.arange(48 * 48) + 7 * row_index) % 256).astype(np.uint8).reshape(48, 48)


def write_ferplus(domain_dir: str, rows: Sequence[tuple[str, str, Sequence[int | str]]], images: str = "folders",
                  lines: Iterable[str] = ()) -> None:
    """``fer2013new.csv`` with ``rows`` (then raw ``lines``), and the images: Microsoft's folders
    (``images="folders"``), Kaggle's ``fer2013.csv`` (``"kaggle"``), or none (``""``)."""
    os.makedirs(domain_dir, exist_ok=True)
    with open(osp.join(domain_dir, "fer2013new.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FERPLUS_HEADER)
        writer.writerows([usage, name, *votes] for usage, name, votes in rows)
        f.writelines(f"{line}\n" for line in lines)
    if images == "folders":
        for folder in FERPLUS_FOLDERS.values():
            os.makedirs(osp.join(domain_dir, folder), exist_ok=True)
        for i, (usage, name, _) in enumerate(rows):
            if name:
                Image.fromarray(kaggle_pixels(i)).save(osp.join(domain_dir, FERPLUS_FOLDERS[usage], name))
    elif images == "kaggle":
        write_fer2013_csv(domain_dir, [usage for usage, _, _ in rows])


def write_fer2013_csv(domain_dir: str, usages: Sequence[str], pixels: dict[int, str] | None = None) -> None:
    """Kaggle's ``fer2013.csv``: one row per Usage, pixels from :func:`kaggle_pixels` unless overridden."""
    pixels = pixels or {}
    with open(osp.join(domain_dir, "fer2013.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for i, usage in enumerate(usages):
            writer.writerow([i % 7, pixels.get(i, " ".join(map(str, kaggle_pixels(i).ravel()))), usage])


def make_ferplus(root: str, images: str = "folders") -> str:
    d = osp.join(root, "ferplus")
    write_ferplus(d, ferplus_rows(), images=images)
    return d


# ---------------------------------------------------------------------------- AffectNet
AFFECTNET_IMAGE_SIZE = (40, 32)
FACE_VALUE, BACKGROUND_VALUE = 200, 30


def affectnet_box(i: int) -> tuple[int, int, int, int]:
    """``(face_x, face_y, face_width, face_height)`` of row ``i``: different for every row."""
    return 2 + i % 7, 1 + i % 5, 18 + i % 3, 14 + i % 4


def affectnet_rows(n_per_code: int, start: int = 0) -> list[tuple[str, tuple[int, int, int, int], int]]:
    """``(subDirectory_filePath, face box, expression)`` rows, ``n_per_code`` of every code 0..10."""
    rows = []
    for code in list(AFFECTNET_NATIVE) + list(AFFECTNET_DROPPED):
        for _ in range(n_per_code):
            i = start + len(rows)
            rows.append((f"{i % 3 + 1}/{i:056x}.jpg", affectnet_box(i), code))
    return rows


def write_affectnet_image(path: str, box: tuple[int, int, int, int]) -> None:
    """A PNG-coded (lossless, for the pixel check) image: the face box at FACE_VALUE, the rest BACKGROUND_VALUE."""
    x, y, w, h = box
    img = np.full(AFFECTNET_IMAGE_SIZE[::-1] + (3,), BACKGROUND_VALUE, dtype=np.uint8)
    img[y:y + h, x:x + w] = FACE_VALUE
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")


def write_affectnet_csv(domain_dir: str, train_rows: Sequence, val_rows: Sequence, header: bool = True,
                        train_lines: Iterable[str] = (), images: bool = True) -> None:
    """The release with file lists: both CSVs (``train_lines`` appended raw to training.csv) and the images."""
    lists_dir = osp.join(domain_dir, "Manually_Annotated_file_lists")
    os.makedirs(lists_dir, exist_ok=True)
    for name, rows, lines in (("training.csv", train_rows, train_lines), ("validation.csv", val_rows, ())):
        with open(osp.join(lists_dir, name), "w", newline="") as f:
            writer = csv.writer(f)
            if header:
                writer.writerow(AFFECTNET_HEADER)
            for path, (x, y, w, h), code in rows:
                landmarks = ";".join(f"{x + k:.2f};{y + k:.2f}" for k in range(4))
                writer.writerow([path, x, y, w, h, landmarks, code, "0.25", "-0.5"])
            f.writelines(f"{line}\n" for line in lines)
        if images:
            for path, box, _ in rows:
                write_affectnet_image(osp.join(domain_dir, "Manually_Annotated_Images", path), box)


def write_affectnet_npy(domain_dir: str, splits: dict[str, Sequence[tuple[str, int | str]]],
                        as_text: bool = True) -> None:
    """The release with cropped faces: ``<split>/images/<id>.jpg`` and ``<split>/annotations/<id>_*.npy``
    (the expression stored as text, as the release does, or as a number)."""
    for split, rows in splits.items():
        for i, (image_id, code) in enumerate(rows):
            save_image(osp.join(domain_dir, split, "images", f"{image_id}.jpg"), value=i)
            ann = osp.join(domain_dir, split, "annotations")
            os.makedirs(ann, exist_ok=True)
            np.save(osp.join(ann, f"{image_id}_exp.npy"), np.array(str(code) if as_text else code))
            np.save(osp.join(ann, f"{image_id}_val.npy"), np.array("0.25"))
            np.save(osp.join(ann, f"{image_id}_aro.npy"), np.array("-0.5"))
            np.save(osp.join(ann, f"{image_id}_lnd.npy"), np.zeros(136, dtype=np.float32))


def affectnet_npy_rows(n_per_code: int, start: int = 0) -> list[tuple[str, int]]:
    """``(id, expression)`` rows, ``n_per_code`` of every code 0..10, ids counting from ``start``."""
    codes = list(AFFECTNET_NATIVE) + list(AFFECTNET_DROPPED)
    return [(str(start + i), code) for i, code in enumerate(c for c in codes for _ in range(n_per_code))]


def make_affectnet(root: str, release: str = "csv", n_train: int = 2, n_val: int = 1) -> str:
    d = osp.join(root, "affectnet")
    if release == "csv":
        write_affectnet_csv(d, affectnet_rows(n_train), affectnet_rows(n_val, start=1000))
    else:
        write_affectnet_npy(d, {"train_set": affectnet_npy_rows(n_train), "val_set": affectnet_npy_rows(n_val, 1000)})
    return d


# ---------------------------------------------------------------------------- Oulu-CASIA
def write_oulu(domain_dir: str, subjects: Sequence[str] = ("P001", "P002"), n_frames: int = 6,
               expressions: Iterable[str] = tuple(OULU_EXPRESSIONS), subset: str = "VL/Strong") -> None:
    """``<subset>/<subject>/<Expression>/000.jpeg ...``: frame ``k`` has grey level ``10 * k``."""
    for subject in subjects:
        for expression in expressions:
            for k in range(n_frames):
                save_image(osp.join(domain_dir, *subset.split("/"), subject, expression, f"{k:03d}.jpeg"), value=10 * k)


def make_oulu(root: str) -> str:
    d = osp.join(root, "oulu")
    write_oulu(d)
    return d


def make_all(root: str) -> None:
    """The four domains under ``root`` (AffectNet in its file-list release)."""
    make_rafdb(root)
    make_ferplus(root)
    make_affectnet(root)
    make_oulu(root)
