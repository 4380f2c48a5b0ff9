"""FERPlus reader: Microsoft's votes with Microsoft's image folders or images made from fer2013.csv."""
from __future__ import annotations

import logging
import os
import os.path as osp
import shutil
from collections import Counter

import numpy as np
import pytest

from datasets.classes import CANONICAL_CLASSES
from datasets.readers.ferplus import argmax_winner, majority_winner
from engine.data.image_io import read_image
from engine.utils.errors import UserError
from real_layouts import (FERPLUS_COLUMNS, FERPLUS_FOLDERS, FERPLUS_KEPT, ferplus_rows, kaggle_pixels, make_ferplus,
                          read_domain, write_fer2013_csv, write_ferplus)


def _counts(items) -> dict[str, int]:
    return dict(Counter(CANONICAL_CLASSES[it.label] for it in items))


def _by_name(splits) -> dict[str, str]:
    return {osp.basename(it.impath): CANONICAL_CLASSES[it.label] for it in splits.train + splits.test + splits.val}


def test_counts_splits_and_dropped_rows(tmp_path, caplog):
    make_ferplus(str(tmp_path))
    with caplog.at_level(logging.INFO):
        splits = read_domain(str(tmp_path), "ferplus")
    for part in (splits.train, splits.test, splits.val):  # Training, PrivateTest, PublicTest
        assert _counts(part) == {c: 2 for c in CANONICAL_CLASSES}
    assert {osp.basename(osp.dirname(it.impath)) for it in splits.train} == {"FER2013Train"}
    assert {osp.basename(osp.dirname(it.impath)) for it in splits.test} == {"FER2013Test"}
    assert {osp.basename(osp.dirname(it.impath)) for it in splits.val} == {"FER2013Valid"}
    # per Usage: 2 contempt, 2 unknown and 2 NF winners, 1 non-face row
    for reason in ("6 contempt winners", "6 unknown winners", "6 NF winners", "3 non-face rows (no image name)"):
        assert reason in caplog.text
    assert read_image(splits.train[0].impath).size == (48, 48)


def test_every_vote_column_maps_to_its_class(tmp_path):
    rows = ferplus_rows()
    write_ferplus(str(tmp_path / "ferplus"), rows)
    got = _by_name(read_domain(str(tmp_path), "ferplus"))
    for usage, name, votes in rows:
        winner = FERPLUS_COLUMNS[int(np.argmax(votes))]
        if name and winner in FERPLUS_KEPT:
            assert got[name] == FERPLUS_KEPT[winner]
        elif name:  # contempt, unknown, NF
            assert name not in got
    assert len(got) == 3 * 7 * 2


@pytest.mark.parametrize("votes, argmax_drop, argmax_first, majority", [
    # columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    ([8, 2, 0, 0, 0, 0, 0, 0, 0, 0], "neutral", "neutral", "neutral"),
    ([4, 4, 2, 0, 0, 0, 0, 0, 0, 0], None, "neutral", None),            # tie; majority: 4 of 10 is not > half
    ([0, 0, 0, 3, 3, 0, 0, 0, 0, 0], None, "sadness", None),            # tie: first in column order
    ([4, 3, 3, 0, 0, 0, 0, 0, 0, 0], "neutral", "neutral", None),       # plurality only
    ([5, 1, 1, 1, 1, 1, 0, 0, 0, 0], "neutral", "neutral", "neutral"),  # single votes are outliers
    ([6, 0, 0, 0, 0, 0, 0, 0, 4, 0], "neutral", "neutral", "neutral"),
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None, "neutral", None),            # majority: no votes left
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, None, None),                  # no votes at all
    ([0, 0, 0, 0, 0, 0, 3, 7, 0, 0], "contempt", "contempt", "contempt"),
])
def test_label_rules(votes, argmax_drop, argmax_first, majority):
    def name(result):
        column, reason = result
        assert (column is None) == bool(reason)
        return None if column is None else FERPLUS_COLUMNS[column]
    assert name(argmax_winner(votes, "drop")) == argmax_drop
    assert name(argmax_winner(votes, "first")) == argmax_first
    assert name(majority_winner(votes)) == majority


def test_rule_options_select_images(tmp_path):
    rows = ferplus_rows()
    planted = {"tie": [4, 4, 2, 0, 0, 0, 0, 0, 0, 0], "plurality": [0, 4, 3, 3, 0, 0, 0, 0, 0, 0],
               "outliers": [0, 0, 0, 0, 5, 1, 1, 1, 1, 1]}
    names = {key: f"fer{len(rows) + i:07d}.png" for i, key in enumerate(planted)}
    rows += [("Training", names[key], votes) for key, votes in planted.items()]
    write_ferplus(str(tmp_path / "ferplus"), rows)
    default = _by_name(read_domain(str(tmp_path), "ferplus"))
    first = _by_name(read_domain(str(tmp_path), "ferplus", "DATASET.FERPLUS.TIE_BREAK", "first"))
    majority = _by_name(read_domain(str(tmp_path), "ferplus", "DATASET.FERPLUS.LABEL_RULE", "majority"))
    assert names["tie"] not in default and first[names["tie"]] == "neutral" and names["tie"] not in majority
    assert default[names["plurality"]] == "happiness" and names["plurality"] not in majority
    assert default[names["outliers"]] == "anger" and majority[names["outliers"]] == "anger"
    with pytest.raises(UserError, match="DATASET.FERPLUS.LABEL_RULE is 'mode'; expected one of argmax, majority"):
        read_domain(str(tmp_path), "ferplus", "DATASET.FERPLUS.LABEL_RULE", "mode")


def test_images_made_once_from_kaggle_csv(tmp_path):
    d = make_ferplus(str(tmp_path), images="kaggle")
    splits = read_domain(str(tmp_path), "ferplus")
    made = osp.join(d, "fer2013_images")
    assert sorted(os.listdir(made)) == sorted(FERPLUS_FOLDERS.values())
    assert [e for e in os.listdir(d) if e.startswith(".")] == []  # no temporary folder left
    assert _counts(splits.train) == {c: 2 for c in CANONICAL_CLASSES}
    rows = ferplus_rows()
    for i, (usage, name, _) in enumerate(rows):
        if name:  # every named row has its image, made from the same row of fer2013.csv
            path = osp.join(made, FERPLUS_FOLDERS[usage], name)
            assert np.array_equal(np.asarray(read_image(path)), kaggle_pixels(i))
    assert sum(len(os.listdir(osp.join(made, f))) for f in FERPLUS_FOLDERS.values()) == sum(1 for r in rows if r[1])
    # made once: later reads use the folder, even without fer2013.csv
    mtime = os.stat(splits.train[0].impath).st_mtime_ns
    os.remove(osp.join(d, "fer2013.csv"))
    again = read_domain(str(tmp_path), "ferplus")
    assert again.train == splits.train and os.stat(splits.train[0].impath).st_mtime_ns == mtime


@pytest.mark.parametrize("damage, message", [
    ("pixels", r"fer2013.csv:4: pixels are not 2304 space-separated grey levels 0-255 \(3 values\)"),
    ("grey", r"fer2013.csv:4: pixels are not 2304 space-separated grey levels 0-255$"),
    ("order", r"fer2013.csv:2: row does not match fer2013new.csv line 2 \(Usage Training\)"),
    ("short", r"fer2013.csv ends before fer2013new.csv \(at its line \d+\)"),
    ("long", r"fer2013.csv has more rows than fer2013new.csv"),
])
def test_bad_kaggle_csv_leaves_no_half_made_folder(tmp_path, damage, message):
    rows = ferplus_rows()
    d = str(tmp_path / "ferplus")
    write_ferplus(d, rows, images="")
    usages = [usage for usage, _, _ in rows]
    if damage == "pixels":
        write_fer2013_csv(d, usages, pixels={2: "1 2 3"})
    elif damage == "grey":
        write_fer2013_csv(d, usages, pixels={2: " ".join(["256"] * 2304)})
    elif damage == "order":
        write_fer2013_csv(d, ["PrivateTest"] + usages[1:])
    elif damage == "short":
        write_fer2013_csv(d, usages[:-5])
    else:
        write_fer2013_csv(d, usages + ["Training"])
    with pytest.raises(UserError, match=message):
        read_domain(str(tmp_path), "ferplus")
    assert sorted(os.listdir(d)) == ["fer2013.csv", "fer2013new.csv"]


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match=rf"dataset 'ferplus' \(FERPlus\) not found: expected the folder {tmp_path}/ferplus"):
        read_domain(str(tmp_path), "ferplus")
    os.makedirs(tmp_path / "ferplus")
    with pytest.raises(UserError, match=r"FERPlus label file not found: .*ferplus/fer2013new.csv \(expected Microsoft's"):
        read_domain(str(tmp_path), "ferplus")
    write_ferplus(str(tmp_path / "ferplus"), ferplus_rows(), images="")
    with pytest.raises(UserError, match=r"FER2013 pixel file not found: .*ferplus/fer2013.csv .*FER2013Train"):
        read_domain(str(tmp_path), "ferplus")
    os.makedirs(tmp_path / "ferplus" / "FER2013Train")
    with pytest.raises(UserError, match=r"FERPlus image folder not found: .*ferplus/FER2013Valid"):
        read_domain(str(tmp_path), "ferplus")


def test_missing_image_in_microsoft_folders(tmp_path):
    d = make_ferplus(str(tmp_path))
    shutil.rmtree(osp.join(d, "FER2013Test"))
    os.makedirs(osp.join(d, "FER2013Test"))
    with pytest.raises(UserError, match=r"^14 image\(s\) listed in .*fer2013new.csv for domain 'ferplus' are missing: "):
        read_domain(str(tmp_path), "ferplus")
    with pytest.raises(UserError, match="domain 'ferplus' has no test images of class 'surprise' after filtering "
                                        r"\(label rule argmax, ties drop, "):
        read_domain(str(tmp_path), "ferplus", "DATASET.SKIP_MISSING_IMAGES", "True")


@pytest.mark.parametrize("line, message", [
    ("Training,fer0099999.png,1,2,3", "5 fields; expected 12"),
    ("Training,fer0099999.png,8,x,0,0,0,0,0,0,0,0", "votes '8,x,0,0,0,0,0,0,0,0' are not all counts"),
    ("Training,fer0099999.png,8,-2,0,0,0,0,0,0,0,0", "are not all counts"),
    ("Validation,fer0099999.png,8,2,0,0,0,0,0,0,0,0", "Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
])
def test_bad_label_rows_report_file_and_line(tmp_path, line, message):
    rows = ferplus_rows()
    write_ferplus(str(tmp_path / "ferplus"), rows, lines=[line])
    with pytest.raises(UserError) as e:
        read_domain(str(tmp_path), "ferplus")
    assert str(e.value).startswith(f"{tmp_path / 'ferplus' / 'fer2013new.csv'}:{len(rows) + 2}: ")
    assert message in str(e.value)


def test_bad_header(tmp_path):
    d = tmp_path / "ferplus"
    write_ferplus(str(d), ferplus_rows())
    text = (d / "fer2013new.csv").read_text().replace("contempt,", "")
    (d / "fer2013new.csv").write_text(text)
    with pytest.raises(UserError, match=r"fer2013new.csv:1: header .* is not FERPlus's; expected 'Usage,Image name,neutral"):
        read_domain(str(tmp_path), "ferplus")

