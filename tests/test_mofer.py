"""MO-FER split construction, the folder reader and the alias table."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import SYNTH_SOURCES, SYNTH_TARGET, make_cfg
from datasets.classes import CANONICAL_CLASSES, canonical_name, resolve_class
from datasets.mofer import MOFER
from engine.utils.errors import UserError


def test_split_removes_unseen_from_sources_and_keeps_it_in_target_test(synthetic_root, tmp_path):
    cfg = make_cfg(synthetic_root, str(tmp_path), unseen="afraid")  # alias of fear
    ds = MOFER(cfg)
    assert ds.unseen_classnames == ["fear"]
    assert ds.seen_classnames == ["surprise", "disgust", "happiness", "sadness", "anger", "neutral"]
    assert ds.num_classes == 6 and ds.lab2cname[1] == "disgust"
    # sources: seen classes only, re-indexed in canonical order, domain = source position
    assert all(d.classname != "fear" for d in ds.train_x)
    assert {(d.label, d.classname) for d in ds.train_x} == set(enumerate(ds.seen_classnames))
    assert sorted({d.domain for d in ds.train_x}) == [0, 1, 2]
    assert len(ds.train_x) == 3 * 6 * 8
    # target train: all 7 classes, unlabelled
    assert len(ds.train_u) == 7 * 8 and {d.label for d in ds.train_u} == {-1}
    assert {d.domain for d in ds.train_u} == {3}
    assert sorted(set(ds.target_train_labels)) == list(range(7))
    # target test: unseen samples labelled K, seen ones with their seen index
    test_labels = {(d.classname, d.label) for d in ds.test}
    assert ("fear", 6) in test_labels and ("disgust", 1) in test_labels and len(ds.test) == 7 * 4
    # splits.json: the dataset names it; the trainer writes it once a run starts (the dataset writes nothing)
    assert not (tmp_path / "splits.json").exists()
    splits = json.loads(json.dumps(ds.run_files()["splits.json"]))
    assert set(splits) == {"sources", "target_train", "target_test"}
    assert splits["sources"]["synth_gray"]["fear"] == 0 and splits["sources"]["synth_gray"]["anger"] == 8
    assert splits["target_test"] == {c: 4 for c in CANONICAL_CLASSES}
    assert "Fea.*" in ds.split_table()


def test_two_unseen_classes(synthetic_root, tmp_path):
    ds = MOFER(make_cfg(synthetic_root, str(tmp_path), "DATASET.UNSEEN_CLASSES", "['happy', 'neutral']"))
    assert ds.unseen_classnames == ["happiness", "neutral"] and ds.num_classes == 5
    assert {d.label for d in ds.test if d.classname in ("happiness", "neutral")} == {5}


@pytest.mark.parametrize("opts, message", [
    (["DATASET.TARGET_DOMAINS", "synth_color"], "both a source and the target"),
    (["DATASET.SOURCE_DOMAINS", "synth_color,nosuchdomain"], "unknown domain 'nosuchdomain'"),
    (["DATASET.UNSEEN_CLASSES", "contentment"], "unknown expression class 'contentment'"),
    (["DATASET.TARGET_DOMAINS", "synth_wild,synth_lab"], "exactly one target domain"),
    (["DATASET.SOURCE_DOMAINS", "synth_gray,synth_gray"], "listed twice"),
])
def test_bad_domain_and_class_choices(synthetic_root, tmp_path, opts, message):
    with pytest.raises(UserError, match=message):
        MOFER(make_cfg(synthetic_root, str(tmp_path), *opts))


def test_missing_root_is_an_error_unless_all_domains_are_synthetic(tmp_path):
    missing = str(tmp_path / "nothere")
    with pytest.raises(UserError, match="dataset root not found: .*nothere"):
        MOFER(make_cfg(missing, str(tmp_path / "o"), "DATASET.SOURCE_DOMAINS", "rafdb_folder,synth_gray"))
    assert not os.path.exists(missing)


def _write_images(folder, n: int, value: int = 0) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), value + i, dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))


def test_folder_domain_with_and_without_split_folders(synthetic_root, tmp_path):
    root = tmp_path / "data"
    for cls in ("Happy", "sad", "angry"):  # aliases, any case
        _write_images(root / "mylab" / "train" / cls, 3)
        _write_images(root / "mylab" / "test" / cls, 2)
    for cls in ("surprised", "neutral", "Fearful"):
        _write_images(root / "flat" / cls, 10)
    _write_images(root / "flat" / "contempt", 4)  # not one of the seven: skipped with a warning
    for d in SYNTH_SOURCES + [SYNTH_TARGET]:
        os.symlink(os.path.join(synthetic_root, d), root / d)
    ds = MOFER(make_cfg(str(root), str(tmp_path / "o"), "DATASET.SOURCE_DOMAINS", "mylab,flat",
                        "DATASET.TARGET_DOMAINS", "synth_wild"))
    by_domain = {}
    for d in ds.train_x:
        by_domain.setdefault(d.domain, []).append(d.classname)
    assert sorted(set(by_domain[0])) == ["anger", "happiness", "sadness"] and len(by_domain[0]) == 9
    # flat folder: seeded 80/20 split per class, fear (unseen) removed
    assert sorted(set(by_domain[1])) == ["neutral", "surprise"] and len(by_domain[1]) == 16

    ds2 = MOFER(make_cfg(str(root), str(tmp_path / "o2"), "DATASET.SOURCE_DOMAINS", "flat",
                         "DATASET.TARGET_DOMAINS", "mylab", "DATASET.UNSEEN_CLASSES", "anger"))
    # the same seeded split whichever class is held out
    assert [d.impath for d in ds2.train_x if d.classname != "fear"] == [d.impath for d in ds.train_x if d.domain == 1]
    assert sum(d.label == ds2.num_classes for d in ds2.test) == 2


def test_folder_domain_errors(tmp_path):
    root = tmp_path / "data"
    _write_images(root / "typo" / "train" / "hapy", 2)
    os.makedirs(root / "empty" / "train")
    cfg = make_cfg(str(root), str(tmp_path / "o"), "DATASET.SOURCE_DOMAINS", "typo", "DATASET.TARGET_DOMAINS", "empty")
    with pytest.raises(UserError, match="unknown class folder .*hapy"):
        MOFER(cfg)
    cfg = make_cfg(str(root), str(tmp_path / "o"), "DATASET.SOURCE_DOMAINS", "empty", "DATASET.TARGET_DOMAINS", "typo")
    with pytest.raises(UserError, match="no images found for domain 'empty'"):
        MOFER(cfg)


def test_aliases():
    assert [canonical_name(n) for n in ("Happy", "SAD", "angry", "surprised", "Fearful", "disgusted", "neutral")] == [
        "happiness", "sadness", "anger", "surprise", "fear", "disgust", "neutral"]
    assert canonical_name("contempt") is None
    with pytest.raises(UserError, match="unknown expression class 'joyful'"):
        resolve_class("joyful")
