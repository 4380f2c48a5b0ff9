"""Config merging: Dassl's order, flags that were not given never override, typos are reported."""
from __future__ import annotations

import os

import pytest
from yacs.config import CfgNode as CN

from conftest import ROOT
from engine import cli as train
from engine.config import extend_cfg, get_cfg_default, merge_from_file, merge_from_list, register_config_hook
from engine.utils.errors import UserError


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_merge_order_dataset_then_method_then_flags_then_opts(tmp_path):
    ds = _write(tmp_path / "ds.yaml", "DATASET:\n  NAME: MOFER\n  ROOT: /from/dataset\nOPTIM:\n  LR: 0.1\nSEED: 7\n")
    method = _write(tmp_path / "m.yaml", "TRAINER:\n  NAME: ZSCLIP\nOPTIM:\n  LR: 0.2\n  MAX_EPOCH: 3\n")
    args = train.parse_args(
        ["--dataset-config-file", ds, "--config-file", method, "--root", "/from/flag", "OPTIM.MAX_EPOCH", "5"])
    cfg = train.setup_cfg(args)
    assert cfg.OPTIM.LR == 0.2            # method yaml after dataset yaml
    assert cfg.DATASET.ROOT == "/from/flag"  # flag after yaml
    assert cfg.OPTIM.MAX_EPOCH == 5        # trailing opts last
    assert cfg.SEED == 7                   # an unset --seed leaves the yaml value
    assert cfg.is_frozen()


def test_seed_zero_is_a_seed(tmp_path):
    ds = _write(tmp_path / "ds.yaml", "DATASET:\n  NAME: MOFER\nTRAINER:\n  NAME: ZSCLIP\nSEED: 7\n")
    cfg = train.setup_cfg(train.parse_args(["--dataset-config-file", ds, "--seed", "0"]))
    assert cfg.SEED == 0


def test_list_flags_and_single_word_list_values(tmp_path):
    ds = _write(tmp_path / "ds.yaml", "DATASET:\n  NAME: MOFER\nTRAINER:\n  NAME: ZSCLIP\n")
    args = train.parse_args(["--dataset-config-file", ds, "--source-domains", "a", "b",
                                            "--target-domains", "c", "DATASET.UNSEEN_CLASSES", "fear"])
    cfg = train.setup_cfg(args)
    assert list(cfg.DATASET.SOURCE_DOMAINS) == ["a", "b"]
    assert list(cfg.DATASET.TARGET_DOMAINS) == ["c"]
    assert list(cfg.DATASET.UNSEEN_CLASSES) == ["fear"]


def test_typo_in_yaml_names_file_and_suggests_key(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "OPTIM:\n  MAX_EPOCHS: 3\n")
    cfg = get_cfg_default()
    with pytest.raises(UserError, match=r"unknown config key OPTIM.MAX_EPOCHS in .*bad.yaml \(did you mean OPTIM.MAX_EPOCH\?\)"):
        merge_from_file(cfg, bad)


def test_typo_on_command_line_and_odd_pairs():
    cfg = get_cfg_default()
    with pytest.raises(UserError, match="unknown config key OPTIM.LRR"):
        merge_from_list(cfg, ["OPTIM.LRR", "0.1"])
    with pytest.raises(UserError, match="KEY VALUE pairs"):
        merge_from_list(cfg, ["OPTIM.LR"])
    with pytest.raises(UserError, match="bad value"):
        merge_from_list(cfg, ["OPTIM.MAX_EPOCH", "'ten'"])


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found: nope.yaml"):
        merge_from_file(get_cfg_default(), "nope.yaml")


def test_config_hooks_add_method_keys_before_files(tmp_path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    assert cfg.TRAINER.ZSCLIP.TEMPLATES  # the ZSCLIP trainer's hook ran
    merge_from_file(cfg, _write(tmp_path / "m.yaml", "TRAINER:\n  ZSCLIP:\n    TEMPLATES: ['a {}.']\n"))
    assert list(cfg.TRAINER.ZSCLIP.TEMPLATES) == ["a {}."]


def test_register_config_hook_is_applied():
    @register_config_hook
    def _hook(cfg):
        cfg.TRAINER.TESTHOOK = CN()
        cfg.TRAINER.TESTHOOK.ALPHA = 0.5

    try:
        cfg = extend_cfg(get_cfg_default())
        assert cfg.TRAINER.TESTHOOK.ALPHA == 0.5
    finally:
        from engine import config
        config._CONFIG_HOOKS.remove(_hook)


def test_base_files_are_merged_first(tmp_path):
    _write(tmp_path / "main.yaml", "OPTIM:\n  LR: 0.1\n  MAX_EPOCH: 9\n")
    (tmp_path / "abl").mkdir()
    child = _write(tmp_path / "abl" / "child.yaml", "_BASE_: ../main.yaml\nOPTIM:\n  LR: 0.5\n")
    cfg = get_cfg_default()
    merge_from_file(cfg, child)
    assert cfg.OPTIM.LR == 0.5 and cfg.OPTIM.MAX_EPOCH == 9
    loop = _write(tmp_path / "loop.yaml", "_BASE_: loop.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        merge_from_file(get_cfg_default(), loop)


def test_every_shipped_config_is_within_the_table_of_ranges():
    """The ranges of engine/config/checks.py admit every config this project ships, under both dataset files."""
    import glob

    from engine.config import check_config_values

    checked = 0
    for dataset_yaml in sorted(glob.glob(os.path.join(ROOT, "configs", "datasets", "*.yaml"))):
        for method_yaml in sorted(glob.glob(os.path.join(ROOT, "configs", "trainers", "**", "*.yaml"), recursive=True)):
            cfg = get_cfg_default()
            extend_cfg(cfg)
            merge_from_file(cfg, dataset_yaml)
            merge_from_file(cfg, method_yaml)
            check_config_values(cfg)
            checked += 1
    assert checked >= 2 * 20
