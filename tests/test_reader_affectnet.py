"""AffectNet reader: the release with file lists and face boxes, and the release with cropped faces."""
from __future__ import annotations

import logging
import os
import os.path as osp
import shutil
from collections import Counter

import numpy as np
import pytest

from datasets.classes import CANONICAL_CLASSES
from datasets.readers.affectnet import read_npy_scalar
from engine.data.image_io import read_image
from engine.utils.errors import UserError
from real_layouts import (AFFECTNET_DROPPED, AFFECTNET_NATIVE, BACKGROUND_VALUE, FACE_VALUE, affectnet_box,
                          affectnet_npy_rows, affectnet_rows, make_affectnet, read_domain, write_affectnet_csv,
                          write_affectnet_npy)

LISTS = "Manually_Annotated_file_lists"


def _counts(items) -> dict[str, int]:
    return dict(Counter(CANONICAL_CLASSES[it.label] for it in items))


# ---------------------------------------------------------------------------- release with file lists
def test_csv_release_counts_and_dropped_codes(tmp_path, caplog):
    make_affectnet(str(tmp_path), n_train=3, n_val=2)
    with caplog.at_level(logging.INFO):
        splits = read_domain(str(tmp_path), "affectnet")
    assert _counts(splits.train) == {c: 3 for c in CANONICAL_CLASSES}
    assert _counts(splits.test) == {c: 2 for c in CANONICAL_CLASSES}  # test = validation.csv
    for reason in ("5 contempt (code 7)", "5 none (code 8)", "5 uncertain (code 9)", "5 non-face (code 10)"):
        assert reason in caplog.text


def test_every_expression_code_maps_to_its_class(tmp_path):
    train, val = affectnet_rows(1), affectnet_rows(1, start=100)
    write_affectnet_csv(str(tmp_path / "affectnet"), train, val)
    splits = read_domain(str(tmp_path), "affectnet")
    got = {osp.relpath(it.impath, tmp_path / "affectnet" / "Manually_Annotated_Images"): CANONICAL_CLASSES[it.label]
           for it in splits.train + splits.test}
    for path, _, code in train + val:
        assert got.get(path) == AFFECTNET_NATIVE.get(code)  # codes 7-10: absent
    assert len(got) == 14 and all(code in AFFECTNET_DROPPED for p, _, code in train + val if p not in got)


def test_face_box_is_cropped_when_read(tmp_path):
    make_affectnet(str(tmp_path))
    splits = read_domain(str(tmp_path), "affectnet")
    for it in splits.train[:5] + splits.test[:3]:
        left, upper, right, lower = it.crop
        face = np.asarray(read_image(it.impath, it.crop))
        assert face.shape == (lower - upper, right - left, 3) and (face == FACE_VALUE).all()
        whole = np.asarray(read_image(it.impath))
        assert (whole == BACKGROUND_VALUE).any()  # the box really removed something
    x, y, w, h = affectnet_box(0)
    assert splits.train[0].crop == (x, y, x + w, y + h)


def test_file_lists_without_header_are_read_alike(tmp_path):
    rows = affectnet_rows(1), affectnet_rows(1, start=100)
    write_affectnet_csv(str(tmp_path / "a" / "affectnet"), *rows)
    write_affectnet_csv(str(tmp_path / "b" / "affectnet"), *rows, header=False)
    with_header, without = read_domain(str(tmp_path / "a"), "affectnet"), read_domain(str(tmp_path / "b"), "affectnet")
    assert [(it.label, it.crop) for it in with_header.train] == [(it.label, it.crop) for it in without.train]


@pytest.mark.parametrize("line, message", [
    ("1/x.jpg,1,1,10,10,1;2,11,0.1,0.2", "expression 11 is not an AffectNet code; expected 0-10"),
    ("1/x.jpg,1,1,10,10,1;2,-1,0.1,0.2", "expression -1 is not an AffectNet code"),
    ("1/x.jpg,1,1,10,10,1;2,happy,0.1,0.2", "expression 'happy' is not a number; expected 0-10"),
    ("1/x.jpg,1,1,10,10,1;2,3", "7 fields; expected 9"),
    ("1/x.jpg,1,1,0,10,1;2,3,0.1,0.2", "face box '1,1,0,10' is not face_x,face_y >= 0 and face_width,face_height > 0"),
    ("1/x.jpg,a,1,10,10,1;2,3,0.1,0.2", "face box 'a,1,10,10'"),
])
def test_bad_list_rows_report_file_and_line(tmp_path, line, message):
    train = affectnet_rows(1)
    write_affectnet_csv(str(tmp_path / "affectnet"), train, affectnet_rows(1, start=100), train_lines=[line])
    with pytest.raises(UserError) as e:
        read_domain(str(tmp_path), "affectnet")
    assert str(e.value).startswith(f"{tmp_path / 'affectnet' / LISTS / 'training.csv'}:{len(train) + 2}: ")
    assert message in str(e.value)


def test_bad_header(tmp_path):
    d = tmp_path / "affectnet"
    write_affectnet_csv(str(d), affectnet_rows(1), affectnet_rows(1, start=100))
    path = d / LISTS / "validation.csv"
    path.write_text(path.read_text().replace("expression,", "emotion,", 1))
    with pytest.raises(UserError, match=r"validation.csv:1: header .* is not AffectNet's; expected 'subDirectory_filePath,"):
        read_domain(str(tmp_path), "affectnet")


def test_missing_files_and_images(tmp_path, caplog):
    with pytest.raises(UserError, match=rf"dataset 'affectnet' \(AffectNet\) not found: expected the folder {tmp_path}/affectnet"):
        read_domain(str(tmp_path), "affectnet")
    os.makedirs(tmp_path / "affectnet" / "Other")
    with pytest.raises(UserError, match=r"AffectNet files not found in .*affectnet: expected Manually_Annotated_file_lists/"
                                        r"training.csv and validation.csv .* or train_set/ and val_set/"):
        read_domain(str(tmp_path), "affectnet")
    d = make_affectnet(str(tmp_path), n_train=2)
    os.remove(osp.join(d, LISTS, "validation.csv"))
    with pytest.raises(UserError, match=r"AffectNet file list not found: .*Manually_Annotated_file_lists/validation.csv"):
        read_domain(str(tmp_path), "affectnet")
    shutil.rmtree(d)
    d = make_affectnet(str(tmp_path), n_train=2)
    image = osp.join(d, "Manually_Annotated_Images", affectnet_rows(2)[0][0])
    os.remove(image)
    with pytest.raises(UserError, match=rf"^1 image\(s\) listed in .*{LISTS} for domain 'affectnet' are missing: {image};"):
        read_domain(str(tmp_path), "affectnet")
    with caplog.at_level(logging.WARNING):
        splits = read_domain(str(tmp_path), "affectnet", "DATASET.SKIP_MISSING_IMAGES", "True")
    assert len(splits.train) == 13 and "skipping 1 image(s)" in caplog.text


# ---------------------------------------------------------------------------- release with cropped faces
@pytest.mark.parametrize("as_text", [True, False], ids=["codes-as-text", "codes-as-numbers"])
def test_npy_release_counts_and_mapping(tmp_path, as_text):
    train, val = affectnet_npy_rows(2), affectnet_npy_rows(1, start=1000)
    write_affectnet_npy(str(tmp_path / "affectnet"), {"train_set": train, "val_set": val}, as_text=as_text)
    splits = read_domain(str(tmp_path), "affectnet")
    assert _counts(splits.train) == {c: 2 for c in CANONICAL_CLASSES}
    assert _counts(splits.test) == {c: 1 for c in CANONICAL_CLASSES}
    got = {osp.basename(it.impath): CANONICAL_CLASSES[it.label] for it in splits.train + splits.test}
    for image_id, code in train + val:
        assert got.get(f"{image_id}.jpg") == AFFECTNET_NATIVE.get(code)
    assert all(it.crop is None for it in splits.train)  # faces already cropped
    assert osp.dirname(splits.test[0].impath) == str(tmp_path / "affectnet" / "val_set" / "images")


def test_npy_release_errors(tmp_path):
    d = str(tmp_path / "affectnet")
    write_affectnet_npy(d, {"train_set": affectnet_npy_rows(1), "val_set": affectnet_npy_rows(1, 1000)})
    bad = osp.join(d, "train_set", "annotations", "3_exp.npy")
    np.save(bad, np.array("12"))
    with pytest.raises(UserError, match=f"AffectNet annotation {bad}: expression 12 is not an AffectNet code; expected 0-10"):
        read_domain(str(tmp_path), "affectnet")
    with open(bad, "wb") as f:
        f.write(b"not a numpy file")
    with pytest.raises(UserError, match=f"cannot read AffectNet annotation {bad}: "):
        read_domain(str(tmp_path), "affectnet")
    np.save(bad, np.array("sad"))
    with pytest.raises(UserError, match=f"AffectNet annotation {bad} holds 'sad'; expected an expression code 0-10"):
        read_domain(str(tmp_path), "affectnet")
    for name in os.listdir(osp.join(d, "train_set", "annotations")):
        os.remove(osp.join(d, "train_set", "annotations", name))
    with pytest.raises(UserError, match=r"AffectNet label files not found: no \*_exp.npy in .*train_set/annotations"):
        read_domain(str(tmp_path), "affectnet")
    shutil.rmtree(osp.join(d, "train_set", "annotations"))
    with pytest.raises(UserError, match=r"AffectNet annotation folder not found: .*train_set/annotations"):
        read_domain(str(tmp_path), "affectnet")
    shutil.rmtree(osp.join(d, "val_set"))
    with pytest.raises(UserError, match=r"AffectNet split folder not found: .*affectnet/val_set"):
        read_domain(str(tmp_path), "affectnet")


def test_release_detection_and_override(tmp_path):
    d = make_affectnet(str(tmp_path), release="csv", n_train=2)
    write_affectnet_npy(d, {"train_set": affectnet_npy_rows(3), "val_set": affectnet_npy_rows(1, 1000)})
    assert len(read_domain(str(tmp_path), "affectnet").train) == 14  # both present: the file lists win
    assert len(read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.RELEASE", "npy").train) == 21
    with pytest.raises(UserError, match="DATASET.AFFECTNET.RELEASE is 'v2'; expected one of auto, csv, npy"):
        read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.RELEASE", "v2")


@pytest.mark.parametrize("value", [np.array("3"), np.array("10"), np.array(4), np.array(5.0), np.array(6, dtype=np.uint8),
                                   np.array([2])])
def test_npy_scalar_reader_agrees_with_numpy(tmp_path, value):
    path = str(tmp_path / "x_exp.npy")
    np.save(path, value)
    assert read_npy_scalar(path) == np.load(path).item()


# ---------------------------------------------------------------------------- capped training set
def test_training_cap_is_seeded_saved_and_leaves_test_alone(tmp_path):
    make_affectnet(str(tmp_path), n_train=3, n_val=2)
    out = tmp_path / "run"
    capped = read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS", "2",
                         output_dir=str(out))
    assert _counts(capped.train) == {c: 2 for c in CANONICAL_CLASSES}
    assert _counts(capped.test) == {c: 2 for c in CANONICAL_CLASSES}
    lines = (out / "affectnet_train_cap.txt").read_text().splitlines()
    assert lines[0].startswith("# AffectNet training images, at most 2 per class, seed 0")
    assert lines[1:] == [f"{osp.relpath(it.impath, tmp_path / 'affectnet')} {CANONICAL_CLASSES[it.label]}"
                         for it in capped.train]
    again = read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS", "2")
    other_seed = read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS", "2",
                             "DATASET.AFFECTNET.CAP_SEED", "1")
    assert again.train == capped.train and other_seed.train != capped.train
    uncapped = read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS", "5")
    assert len(uncapped.train) == 21  # fewer than the cap: all kept
    with pytest.raises(UserError, match=r"DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS must be an integer >= 0, got -1"):
        read_domain(str(tmp_path), "affectnet", "DATASET.AFFECTNET.TRAIN_CAP_PER_CLASS", "-1")
