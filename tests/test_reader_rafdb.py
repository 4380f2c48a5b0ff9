"""RAF-DB basic reader on a miniature copy of the official layout."""
from __future__ import annotations

import logging
import os
import os.path as osp
from collections import Counter

import pytest

from datasets.classes import CANONICAL_CLASSES
from engine.data.image_io import read_image
from engine.utils.errors import UserError
from real_layouts import RAFDB_NATIVE, make_rafdb, rafdb_rows, read_domain, write_rafdb


def _counts(items) -> dict[str, int]:
    return dict(Counter(CANONICAL_CLASSES[it.label] for it in items))


def test_counts_per_split_and_class(tmp_path):
    make_rafdb(str(tmp_path), n_train=3, n_test=2)
    splits = read_domain(str(tmp_path), "rafdb")
    assert _counts(splits.train) == {c: 3 for c in CANONICAL_CLASSES}
    assert _counts(splits.test) == {c: 2 for c in CANONICAL_CLASSES}
    assert splits.val is None
    assert all(osp.basename(it.impath).startswith("train_") for it in splits.train)
    assert all(osp.basename(it.impath).startswith("test_") for it in splits.test)
    assert all(it.crop is None for it in splits.train + splits.test)


def test_every_native_code_maps_to_its_class(tmp_path):
    rows = [(f"train_{code:05d}.jpg", code) for code in RAFDB_NATIVE] + [(f"test_{c:04d}.jpg", c) for c in RAFDB_NATIVE]
    write_rafdb(str(tmp_path / "rafdb"), rows)
    splits = read_domain(str(tmp_path), "rafdb")
    got = {osp.basename(it.impath): CANONICAL_CLASSES[it.label] for it in splits.train + splits.test}
    for code, name in RAFDB_NATIVE.items():
        assert got[f"train_{code:05d}_aligned.jpg"] == name
        assert got[f"test_{code:04d}_aligned.jpg"] == name


def test_aligned_and_original_variants(tmp_path):
    make_rafdb(str(tmp_path))
    aligned = read_domain(str(tmp_path), "rafdb")
    original = read_domain(str(tmp_path), "rafdb", "DATASET.RAFDB.IMAGE_VARIANT", "original")
    assert aligned.train[0].impath == str(tmp_path / "rafdb/basic/Image/aligned/train_00001_aligned.jpg")
    assert original.train[0].impath == str(tmp_path / "rafdb/basic/Image/original/train_00001.jpg")
    assert [it.label for it in aligned.train] == [it.label for it in original.train]
    assert read_image(original.train[0].impath).size == (24, 20)
    with pytest.raises(UserError, match="DATASET.RAFDB.IMAGE_VARIANT is 'cropped'; expected one of aligned, original"):
        read_domain(str(tmp_path), "rafdb", "DATASET.RAFDB.IMAGE_VARIANT", "cropped")


def test_domain_folder_elsewhere(tmp_path):
    make_rafdb(str(tmp_path / "elsewhere"))
    splits = read_domain(str(tmp_path / "root"), "rafdb", "DATASET.RAFDB.DIR", str(tmp_path / "elsewhere" / "rafdb"))
    assert len(splits.train) == 14 and splits.train[0].impath.startswith(str(tmp_path / "elsewhere"))


def test_missing_dataset_folder_names_domain_and_path(tmp_path):
    with pytest.raises(UserError) as e:
        read_domain(str(tmp_path), "rafdb")
    message = str(e.value)
    assert "dataset 'rafdb' (RAF-DB basic) not found" in message and str(tmp_path / "rafdb") in message
    assert "basic/EmoLabel/list_patition_label.txt" in message and "DATASET.RAFDB.DIR" in message


def test_missing_label_file_and_image_folder(tmp_path):
    os.makedirs(tmp_path / "rafdb" / "basic" / "Image" / "aligned")
    with pytest.raises(UserError, match=r"RAF-DB label file not found: .*rafdb/basic/EmoLabel/list_patition_label.txt"):
        read_domain(str(tmp_path), "rafdb")
    write_rafdb(str(tmp_path / "rafdb2"), rafdb_rows(), images=False)
    with pytest.raises(UserError, match=r"RAF-DB aligned image folder not found: .*basic/Image/aligned .*unzip"):
        read_domain(str(tmp_path), "rafdb", "DATASET.RAFDB.DIR", str(tmp_path / "rafdb2"))


@pytest.mark.parametrize("line, message", [
    ("train_00099.jpg", "cannot parse 'train_00099.jpg'; expected '<train|test>_<n>.jpg <label 1-7>'"),
    ("train_00099.jpg 5 extra", "cannot parse"),
    ("val_0001.jpg 3", "image name 'val_0001.jpg' starts with neither 'train_' nor 'test_'"),
    ("train_00099.jpg five", "label 'five' is not a number; expected 1-7"),
    ("train_00099.jpg 8", "label 8 is not a RAF-DB basic expression code; expected 1-7"),
    ("test_0099.jpg 0", "label 0 is not a RAF-DB basic expression code"),
])
def test_bad_label_line_reports_file_and_line(tmp_path, line, message):
    rows = rafdb_rows(1, 1)
    write_rafdb(str(tmp_path / "rafdb"), rows, lines=["", line])  # a blank line is fine
    with pytest.raises(UserError) as e:
        read_domain(str(tmp_path), "rafdb")
    assert str(e.value).startswith(f"{tmp_path / 'rafdb/basic/EmoLabel/list_patition_label.txt'}:{len(rows) + 2}: ")
    assert message in str(e.value)


def test_missing_images_error_or_skip_with_warning(tmp_path, caplog):
    d = make_rafdb(str(tmp_path), n_train=3, n_test=2)
    for name in ("train_00001", "train_00004", "test_0003", "train_00009"):
        os.remove(osp.join(d, "basic", "Image", "aligned", f"{name}_aligned.jpg"))
    with pytest.raises(UserError) as e:
        read_domain(str(tmp_path), "rafdb")
    message = str(e.value)
    assert message.startswith("4 image(s) listed in ") and "list_patition_label.txt" in message
    assert "test_0003_aligned.jpg" in message and ", ..." in message  # the first three, then "..."
    assert "DATASET.SKIP_MISSING_IMAGES True" in message
    with caplog.at_level(logging.WARNING):
        splits = read_domain(str(tmp_path), "rafdb", "DATASET.SKIP_MISSING_IMAGES", "True")
    assert len(splits.train) == 18 and len(splits.test) == 13
    assert "skipping 4 image(s)" in caplog.text


def test_empty_class_after_filtering_names_class_and_domain(tmp_path):
    d = make_rafdb(str(tmp_path))
    for name in ("train_00003", "train_00004"):  # both fear (native 2) training images
        os.remove(osp.join(d, "basic", "Image", "aligned", f"{name}_aligned.jpg"))
    with pytest.raises(UserError, match="domain 'rafdb' has no train images of class 'fear' after filtering"):
        read_domain(str(tmp_path), "rafdb", "DATASET.SKIP_MISSING_IMAGES", "True")


def test_truncated_image_found_at_read_time_or_up_front(tmp_path, caplog):
    d = make_rafdb(str(tmp_path), n_test=2)
    bad = osp.join(d, "basic", "Image", "aligned", "test_0002_aligned.jpg")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    splits = read_domain(str(tmp_path), "rafdb")  # no up-front check by default
    with pytest.raises(UserError, match="cannot read image .*test_0002_aligned.jpg"):
        read_image(bad)
    with pytest.raises(UserError) as e:
        read_domain(str(tmp_path), "rafdb", "DATASET.VERIFY_IMAGES", "True")
    assert str(e.value).startswith(f"cannot read image {bad} of domain 'rafdb' (")
    assert "DATASET.SKIP_MISSING_IMAGES True" in str(e.value)
    with caplog.at_level(logging.WARNING):
        kept = read_domain(str(tmp_path), "rafdb", "DATASET.VERIFY_IMAGES", "True", "DATASET.SKIP_MISSING_IMAGES", "True")
    assert len(kept.test) == len(splits.test) - 1 and "unreadable" in caplog.text
