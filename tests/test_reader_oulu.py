"""Oulu-CASIA VIS reader: frame selection per sequence, the whole set as train and test."""
from __future__ import annotations

import logging
import os
import os.path as osp
import shutil
from collections import Counter

import pytest

from datasets.classes import CANONICAL_CLASSES
from engine.utils.errors import UserError
from real_layouts import OULU_EXPRESSIONS, make_oulu, read_domain, save_image, write_oulu


def _counts(items) -> dict[str, int]:
    return dict(Counter(CANONICAL_CLASSES[it.label] for it in items))


def _frames(items, subject: str, expression: str) -> dict[str, str]:
    """Frame file -> class name of one sequence."""
    prefix = osp.join("VL", "Strong", subject, expression) + os.sep
    return {osp.basename(it.impath): CANONICAL_CLASSES[it.label] for it in items if prefix in it.impath}


def test_last_frames_get_the_expression_first_frame_neutral(tmp_path):
    make_oulu(str(tmp_path))  # 2 subjects x 6 expressions x 6 frames
    splits = read_domain(str(tmp_path), "oulu")
    assert _counts(splits.train) == {**{c: 2 * 3 for c in OULU_EXPRESSIONS.values()}, "neutral": 2 * 6}
    for folder, name in OULU_EXPRESSIONS.items():  # every expression folder maps to its class
        assert _frames(splits.train, "P002", folder) == {
            "000.jpeg": "neutral", "003.jpeg": name, "004.jpeg": name, "005.jpeg": name}
    assert splits.test == splits.train and splits.test is not splits.train  # no official split


def test_frame_counts_are_configurable(tmp_path):
    make_oulu(str(tmp_path))
    splits = read_domain(str(tmp_path), "oulu", "DATASET.OULU.N_LAST_FRAMES", "2", "DATASET.OULU.N_NEUTRAL_FRAMES", "2")
    assert _frames(splits.train, "P001", "Sadness") == {
        "000.jpeg": "neutral", "001.jpeg": "neutral", "004.jpeg": "sadness", "005.jpeg": "sadness"}
    no_neutral = read_domain(str(tmp_path), "oulu", "DATASET.OULU.N_NEUTRAL_FRAMES", "0")
    assert "neutral" not in _counts(no_neutral.train) and len(no_neutral.train) == 2 * 6 * 3
    with pytest.raises(UserError, match="DATASET.OULU.N_LAST_FRAMES must be an integer >= 1, got 0"):
        read_domain(str(tmp_path), "oulu", "DATASET.OULU.N_LAST_FRAMES", "0")


def test_frames_in_numeric_order_and_short_sequences_skipped(tmp_path, caplog):
    d = make_oulu(str(tmp_path))
    sequence = osp.join(d, "VL", "Strong", "P001", "Fear")
    shutil.rmtree(sequence)
    for k in (8, 9, 10, 11):  # unpadded names: 10 sorts after 9
        save_image(osp.join(sequence, f"{k}.jpeg"))
    short = osp.join(d, "VL", "Strong", "P002", "Anger")
    for k in (3, 4, 5):
        os.remove(osp.join(short, f"{k:03d}.jpeg"))
    with caplog.at_level(logging.WARNING):
        splits = read_domain(str(tmp_path), "oulu")
    assert _frames(splits.train, "P001", "Fear") == {"8.jpeg": "neutral", "9.jpeg": "fear", "10.jpeg": "fear",
                                                     "11.jpeg": "fear"}
    assert _frames(splits.train, "P002", "Anger") == {}
    assert "skipped 1 sequence(s) with fewer than 4 frames" in caplog.text and short in caplog.text


def test_other_subset(tmp_path):
    write_oulu(str(tmp_path / "oulu"), subjects=("P010",), subset="VL/Weak", n_frames=4)
    splits = read_domain(str(tmp_path), "oulu", "DATASET.OULU.SUBSET", "VL/Weak")
    assert len(splits.train) == 6 * 4 and all("/VL/Weak/P010/" in it.impath for it in splits.train)


def test_missing_folders(tmp_path):
    with pytest.raises(UserError, match=rf"dataset 'oulu' \(Oulu-CASIA\) not found: expected the folder {tmp_path}/oulu "
                                        r"holding VL/Strong/P001..P080/<Expression>/NNN.jpeg"):
        read_domain(str(tmp_path), "oulu")
    write_oulu(str(tmp_path / "oulu"), subset="NI/Strong")
    with pytest.raises(UserError, match=r"Oulu-CASIA folder not found: .*oulu/VL/Strong \(expected subject folders"):
        read_domain(str(tmp_path), "oulu")
    os.makedirs(tmp_path / "empty" / "VL" / "Strong" / "P001")
    with pytest.raises(UserError, match="no Oulu-CASIA sequences found in .*empty/VL/Strong"):
        read_domain(str(tmp_path), "oulu", "DATASET.OULU.DIR", str(tmp_path / "empty"))


def test_unknown_expression_folder(tmp_path):
    d = make_oulu(str(tmp_path))
    bad = osp.join(d, "VL", "Strong", "P002", "Contempt")
    save_image(osp.join(bad, "000.jpeg"))
    with pytest.raises(UserError, match=f"unknown Oulu-CASIA expression folder {bad}; expected one of Anger, Disgust, Fear"):
        read_domain(str(tmp_path), "oulu")


def test_empty_class_names_class_and_domain(tmp_path):
    d = make_oulu(str(tmp_path))
    for subject in ("P001", "P002"):
        shutil.rmtree(osp.join(d, "VL", "Strong", subject, "Disgust"))
    with pytest.raises(UserError, match="domain 'oulu' has no train images of class 'disgust' after filtering"):
        read_domain(str(tmp_path), "oulu")
