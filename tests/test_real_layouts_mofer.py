"""MO-FER on miniature copies of the four real datasets, and ``train.py --no-train`` on them."""
from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

from engine import cli as train
from conftest import ROOT
from datasets.classes import CANONICAL_CLASSES
from datasets.mofer import MOFER
from real_layouts import make_all, read_domain, reader_cfg

DOMAINS = ["rafdb", "ferplus", "affectnet", "oulu"]
MOFER_YAML = os.path.join(ROOT, "configs", "datasets", "mofer.yaml")  # sources ferplus affectnet oulu, target rafdb


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("real"))
    make_all(root)
    return root


@pytest.mark.parametrize("target", DOMAINS)
def test_unseen_class_leaves_every_source_and_stays_in_target_test(real_root, tmp_path, target):
    sources = [d for d in DOMAINS if d != target]
    cfg = reader_cfg(real_root, "DATASET.NAME", "MOFER", "DATASET.SOURCE_DOMAINS", ",".join(sources),
                     "DATASET.TARGET_DOMAINS", target, "DATASET.UNSEEN_CLASSES", "fear", "VERBOSE", "False",
                     output_dir=str(tmp_path))
    ds = MOFER(cfg)
    k = ds.num_classes
    assert k == 6 and "fear" not in ds.seen_classnames
    # sources: every seen class of every source, no fear anywhere
    for m, name in enumerate(sources):
        classes = Counter(d.classname for d in ds.train_x if d.domain == m)
        expected = Counter(CANONICAL_CLASSES[it.label] for it in read_domain(real_root, name).train)
        del expected["fear"]
        assert classes == expected and expected
    # target: unlabelled pool with all seven classes; test with fear marked unseen (label K)
    assert {d.label for d in ds.train_u} == {-1}
    assert sorted(set(ds.target_train_labels)) == list(range(7))
    fear_test = [d for d in ds.test if d.classname == "fear"]
    assert fear_test and all(d.label == k for d in fear_test)
    assert all(d.label < k for d in ds.test if d.classname != "fear")
    assert ds.split_counts["target_test"]["fear"] == len(fear_test)


def test_no_train_prints_the_split_of_the_real_layouts(real_root, tmp_path, capsys):
    code = train.cli(["--root", real_root, "--dataset-config-file", MOFER_YAML, "--trainer", "ZSCLIP",
                      "--output-dir", str(tmp_path / "o"), "--no-train", "DATASET.VERIFY_IMAGES", "True"])
    out, err = capsys.readouterr()
    assert code == 0, err
    for line in ("ferplus", "affectnet", "oulu", "rafdb"):
        assert line in out
    assert "source train" in out and "target test" in out and "Fea.*" in out
    assert not os.path.exists(tmp_path / "o")


def test_absent_dataset_is_named_with_its_expected_path(real_root, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    for name in ("ferplus", "affectnet", "oulu"):  # rafdb, the target, is absent
        os.symlink(os.path.join(real_root, name), root / name)
    code = train.cli(["--root", str(root), "--dataset-config-file", MOFER_YAML, "--trainer", "ZSCLIP", "--no-train"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err + out
    assert err.startswith(f"error: dataset 'rafdb' (RAF-DB basic) not found: expected the folder {root / 'rafdb'} ")


def test_a_domain_read_from_elsewhere(real_root, tmp_path):
    elsewhere = tmp_path / "copies" / "RAF-DB"
    shutil.copytree(os.path.join(real_root, "rafdb"), elsewhere)
    root = tmp_path / "data"
    root.mkdir()
    for name in ("ferplus", "affectnet", "oulu"):
        os.symlink(os.path.join(real_root, name), root / name)
    cfg = reader_cfg(str(root), "DATASET.NAME", "MOFER", "DATASET.SOURCE_DOMAINS", "ferplus,affectnet,oulu",
                     "DATASET.TARGET_DOMAINS", "rafdb", "DATASET.UNSEEN_CLASSES", "anger", "VERBOSE", "False",
                     "DATASET.RAFDB.DIR", str(elsewhere))
    ds = MOFER(cfg)
    assert ds.test and all(d.impath.startswith(str(elsewhere)) for d in ds.test)
