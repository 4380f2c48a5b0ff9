"""The optional bridge to a real Dassl install (dassl_bridge.py).

Tests that need Dassl skip where ``dassl`` (or what its import needs) is not importable; to run them,
put a Dassl.pytorch checkout and its import-time dependencies on PYTHONPATH for one pytest run, e.g.
``PYTHONPATH=/tmp/dassl-src:/tmp/dassl-deps python -m pytest -q tests/test_dassl_bridge.py``.
The rest (no Dassl needed) always run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import types

import pytest
from yacs.config import CfgNode as CN

from conftest import ROOT, SYNTH_OPTS, SYNTH_SOURCES, SYNTH_TARGET
import dassl_bridge
from engine.config import all_keys, extend_cfg, get_cfg_default
from engine.utils.errors import UserError

DATASET_YAML = os.path.join(ROOT, "configs", "datasets", "synthetic.yaml")
METHOD_YAML = os.path.join(ROOT, "configs", "trainers", "PromptEmo", "tiny.yaml")
BASE_YAML = os.path.join(ROOT, "configs", "trainers", "PromptEmo", "vit_b32.yaml")
OUR_TRAINERS = ["Baseline", "CoOp", "PromptEmo", "ZSCLIP"]


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _project_cfg():
    cfg = get_cfg_default()
    extend_cfg(cfg)
    return cfg


def _dassl_like_cfg() -> CN:
    """A few of Dassl's defaults, enough to check the merge rules without Dassl installed."""
    cfg = CN()
    cfg.SEED = -1
    cfg.INPUT = CN()
    cfg.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    cfg.INPUT.CUTOUT_N = 1  # Dassl-only
    cfg.DATASET = CN()
    cfg.DATASET.NAME = ""
    cfg.DATASET.NUM_SHOTS = -1  # Dassl-only
    cfg.TEST = CN()
    cfg.TEST.EVALUATOR = "Classification"
    cfg.TRAINER = CN()
    cfg.TRAINER.NAME = ""
    # As CoOp's codebase adds: a node this project also has, with one extra key and another default
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.MCD = CN()  # a Dassl trainer's node
    cfg.TRAINER.MCD.N_STEP_F = 4
    return cfg


# ============================================================ without Dassl (always run)
def _block_dassl(monkeypatch) -> None:
    """Make every ``import dassl...`` fail, as where Dassl is not installed."""
    for name in [m for m in sys.modules if m == "dassl" or m.startswith("dassl.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "dassl", None)


def test_register_without_dassl_raises_clear_error(monkeypatch):
    _block_dassl(monkeypatch)
    with pytest.raises(dassl_bridge.DasslNotImportableError, match="dassl is not importable") as info:
        dassl_bridge.register_with_dassl()
    assert isinstance(info.value, ImportError) and isinstance(info.value, UserError)
    assert "Dassl.pytorch" in str(info.value) and "PYTHONPATH" in str(info.value)


def test_import_bridge_without_dassl_in_fresh_interpreter():
    code = (
        "import sys; sys.modules['dassl'] = None\n"
        "import dassl_bridge as b\n"
        "try:\n"
        "    b.register_with_dassl()\n"
        "except b.DasslNotImportableError as e:\n"
        "    print('ERR', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR dassl is not importable"), proc.stdout


def test_extend_adds_missing_keys_and_keeps_existing_values():
    cfg = _dassl_like_cfg()
    before = {k: _value(cfg, k) for k in all_keys(cfg)}
    assert dassl_bridge.extend_dassl_cfg(cfg) is cfg
    ours = _project_cfg()
    keys = set(all_keys(cfg))
    # every key of this project's defaults-plus-hooks config is there ...
    missing = [k for k in all_keys(ours) if k not in keys]
    assert not missing
    # ... added ones with this project's default, existing ones (Dassl's and the host's) unchanged
    for key in all_keys(ours):
        expected = before[key] if key in before else _value(ours, key)
        assert _value(cfg, key) == expected, key
    for key, value in before.items():
        assert _value(cfg, key) == value, key
    assert cfg.TEST.EVALUATOR == "Classification"  # not switched: see the module notes
    assert cfg.TRAINER.COOP.N_CTX == 4 and cfg.TRAINER.COOP.PREC == "fp16"
    assert cfg.TRAINER.COOP.CSC == ours.TRAINER.COOP.CSC  # added inside the host's node
    assert cfg.TRAINER.PROMPTEMO == ours.TRAINER.PROMPTEMO and cfg.TRAINER.PROMPTEMO is not ours.TRAINER.PROMPTEMO
    assert cfg.DATASET.UNSEEN_CLASSES == ours.DATASET.UNSEEN_CLASSES
    # twice is the same as once
    dump = cfg.dump()
    dassl_bridge.extend_dassl_cfg(cfg)
    assert cfg.dump() == dump


def test_differing_defaults_lists_what_dassl_keeps():
    cfg = dassl_bridge.extend_dassl_cfg(_dassl_like_cfg())
    diff = dassl_bridge.differing_defaults(cfg)
    assert diff["TEST.EVALUATOR"] == ("Classification", "OpenSet")
    assert diff["SEED"] == (-1, 1)
    assert "INPUT.PIXEL_MEAN" in diff
    assert "TRAINER.PROMPTEMO.ALPHA" not in diff


def test_extend_refuses_a_frozen_config():
    cfg = _dassl_like_cfg()
    cfg.freeze()
    with pytest.raises(UserError, match="frozen"):
        dassl_bridge.extend_dassl_cfg(cfg)


def test_merge_from_file_follows_base_files(tmp_path):
    cfg = dassl_bridge.extend_dassl_cfg(_dassl_like_cfg())
    cfg.INPUT.GB_K = 7  # something neither yaml sets stays
    cfg.merge_from_file(DATASET_YAML)
    cfg.merge_from_file(METHOD_YAML)  # starts with _BASE_: vit_b32.yaml
    assert cfg.TRAINER.NAME == "PromptEmo"  # from the base file
    assert cfg.OPTIM.NAME == "adamw" and cfg.OPTIM.MAX_EPOCH == 15  # base, then tiny's override
    assert cfg.MODEL.BACKBONE.NAME == "tiny" and cfg.TRAINER.PROMPTEMO.GAMMA == 0.02
    assert cfg.TEST.EVALUATOR == "OpenSet"  # from the dataset yaml
    assert cfg.INPUT.GB_K == 7
    assert cfg.INPUT.PIXEL_MEAN == [0.48145466, 0.4578275, 0.40821073]  # CLIP's, from the base yaml
    # the replaced method follows a clone, bound to the copy
    clone = cfg.clone()
    clone.merge_from_file(BASE_YAML)
    assert clone.MODEL.BACKBONE.NAME == "ViT-B/32" and cfg.MODEL.BACKBONE.NAME == "tiny"
    bad = tmp_path / "typo.yaml"
    bad.write_text("OPTIM:\n  MAX_EPOCHS: 3\n")
    with pytest.raises(UserError, match=r"OPTIM\.MAX_EPOCHS.*did you mean OPTIM\.MAX_EPOCH"):
        cfg.merge_from_file(str(bad))
    plain = dassl_bridge.extend_dassl_cfg(_dassl_like_cfg(), base_files=False)
    assert "merge_from_file" not in plain.__dict__


def test_a_shadowing_host_package_is_refused(monkeypatch, tmp_path):
    fake = types.ModuleType("trainers")
    fake.__file__ = str(tmp_path / "other_codebase" / "trainers" / "__init__.py")
    monkeypatch.setitem(sys.modules, "trainers", fake)
    with pytest.raises(UserError, match="another top-level 'trainers' package"):
        dassl_bridge.extend_dassl_cfg(_dassl_like_cfg())


def test_project_logging_reaches_current_stdout(capsys):
    root = logging.getLogger()
    root_handlers = list(root.handlers)  # pytest's capture handlers: put back in place, below
    loggers = {name: logging.getLogger(name) for name in ("engine", "trainers", "datasets")}
    saved = {name: (lg.level, list(lg.handlers)) for name, lg in loggers.items()}
    disabled = logging.root.manager.disable
    try:
        root.handlers[:] = []  # a program that configured no logging, as Dassl's train.py
        logging.disable(logging.WARNING)  # what importing Dassl does
        dassl_bridge._route_project_logging_to_stdout()
        dassl_bridge._route_project_logging_to_stdout()  # idempotent
        assert all(len(lg.handlers) == len(saved[n][1]) + 1 for n, lg in loggers.items())
        logging.getLogger("trainers.promptemo").info("epoch [1/1] done")
        assert "epoch [1/1] done" in capsys.readouterr().out
    finally:
        for name, lg in loggers.items():
            lg.setLevel(saved[name][0])
            lg.handlers[:] = saved[name][1]
        logging.disable(disabled)
        root.handlers[:] = root_handlers


# ============================================================ with Dassl
@pytest.fixture(scope="module")
def dassl():
    """Dassl's modules, or a skip where Dassl or what its import needs is missing. Dassl's import
    calls logging.disable(WARNING); the level before is restored afterwards for the other tests."""
    disabled = logging.root.manager.disable
    pytest.importorskip("dassl")
    try:
        import dassl.config
        import dassl.data.datasets
        import dassl.engine
        import dassl.evaluation
    except ImportError as e:
        pytest.skip(f"dassl is installed but not importable: {e}")
    import dassl as module
    yield module
    logging.disable(disabled)


@pytest.fixture
def registered(dassl):
    return dassl_bridge.register_with_dassl()


def test_dassl_registries_list_our_names(dassl, registered):
    import datasets.mofer
    import trainers
    from engine.evaluation import OpenSet

    names = dassl.engine.TRAINER_REGISTRY.registered_names()
    for name in OUR_TRAINERS:
        assert name in names
        assert registered["TRAINER"][name] in ("registered", "already registered")
    # this project's classes themselves, not wrappers
    assert dassl.engine.TRAINER_REGISTRY.get("PromptEmo") is trainers.promptemo.PromptEmo
    assert dassl.data.datasets.DATASET_REGISTRY.get("MOFER") is datasets.mofer.MOFER
    assert dassl.evaluation.EVALUATOR_REGISTRY.get("OpenSet") is OpenSet
    # Dassl's own are still there
    assert "Classification" in dassl.evaluation.EVALUATOR_REGISTRY.registered_names()
    assert "PACS" in dassl.data.datasets.DATASET_REGISTRY.registered_names()
    # calling again changes nothing
    again = dassl_bridge.register_with_dassl()
    assert all(v == "already registered" for kind in again.values() for v in kind.values())


def test_name_clash_keeps_the_hosts_class(dassl, monkeypatch, caplog):
    import trainers

    registry = dassl.engine.TRAINER_REGISTRY
    objs = {k: v for k, v in registry._obj_map.items() if k not in OUR_TRAINERS}
    host_coop = type("CoOp", (), {"__module__": "host_codebase.trainers.coop"})
    stale = type("PromptEmo", (), {"__module__": trainers.promptemo.PromptEmo.__module__,
                                   "__qualname__": trainers.promptemo.PromptEmo.__qualname__})
    objs.update(CoOp=host_coop, PromptEmo=stale)
    monkeypatch.setattr(registry, "_obj_map", objs)  # restored after the test
    with caplog.at_level(logging.WARNING, logger="dassl_bridge"):
        report = dassl_bridge.register_with_dassl()
    assert "trainer 'CoOp' not registered: Dassl's registry already has host_codebase" in caplog.text
    assert report["TRAINER"]["CoOp"].startswith("skipped: Dassl's TRAINER registry already has host_codebase")
    assert registry.get("CoOp") is host_coop
    assert report["TRAINER"]["PromptEmo"] == "replaced stale copy"
    assert registry.get("PromptEmo") is trainers.promptemo.PromptEmo
    assert report["TRAINER"]["ZSCLIP"] == "registered"


def _dassl_cfg_like_tools_train(dassl, root: str, output_dir: str, *opts: str, dataset_yaml: bool = True):
    """A Dassl config set up the way Dassl's tools/train.py does it (defaults, the host's
    extend_cfg with the bridge's line, dataset yaml, method yaml, flags, options, clean_cfg, freeze)."""
    cfg = dassl.config.get_cfg_default()
    dassl_bridge.extend_dassl_cfg(cfg)  # the line in the host's extend_cfg
    if dataset_yaml:
        cfg.merge_from_file(DATASET_YAML)
    cfg.merge_from_file(METHOD_YAML)
    cfg.DATASET.ROOT = root
    cfg.OUTPUT_DIR = output_dir
    cfg.SEED = 1
    cfg.DATASET.SOURCE_DOMAINS = list(SYNTH_SOURCES)
    cfg.DATASET.TARGET_DOMAINS = [SYNTH_TARGET]
    cfg.TRAINER.NAME = "PromptEmo"
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", "1", *SYNTH_OPTS, *opts])
    dassl.config.clean_cfg(cfg, "PromptEmo")
    cfg.freeze()
    return cfg


def test_dassl_build_trainer_trains_promptemo(dassl, registered, synthetic_root, tmp_path):
    import trainers

    out = str(tmp_path / "run")
    cfg = _dassl_cfg_like_tools_train(dassl, synthetic_root, out)
    assert cfg.TEST.EVALUATOR == "OpenSet" and "PROMPTEMO" in cfg.TRAINER
    trainer = dassl.engine.build_trainer(cfg)
    assert isinstance(trainer, trainers.promptemo.PromptEmo)
    trainer.train()
    with open(os.path.join(out, "results.json")) as f:
        record = json.load(f)
    assert record["trainer"] == "PromptEmo" and record["epochs_trained"] == 1
    assert record["target_domain"] == SYNTH_TARGET and record["unseen_classes"] == ["fear"]
    assert {"auc_u", "acc_s"} <= set(record["metrics"])


def test_dassl_default_evaluator_is_refused_by_name(dassl, registered, synthetic_root, tmp_path):
    # Without the dataset yaml's TEST.EVALUATOR: "OpenSet", the config keeps Dassl's Classification
    cfg = _dassl_cfg_like_tools_train(
        dassl, synthetic_root, str(tmp_path / "run"), "DATASET.NAME", "MOFER",
        "DATASET.UNSEEN_CLASSES", "['fear']", dataset_yaml=False)
    assert cfg.TEST.EVALUATOR == "Classification"
    with pytest.raises(UserError, match="TEST.EVALUATOR is 'Classification'.*set TEST.EVALUATOR OpenSet"):
        dassl.engine.build_trainer(cfg)


def _dassl_tools_train(dassl):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(dassl.__file__))), "tools", "train.py")
    if not os.path.isfile(path):
        pytest.skip(f"no Dassl source checkout with tools/train.py next to {dassl.__file__}")
    spec = importlib.util.spec_from_file_location("dassl_tools_train_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dassl_tools_train_main_runs_promptemo(dassl, synthetic_root, tmp_path, monkeypatch):
    """Dassl's own tools/train.py, in-process, with the bridge's two lines added."""
    tools_train = _dassl_tools_train(dassl)
    dassl_bridge.register_with_dassl()  # line 1, at import
    monkeypatch.setattr(tools_train, "extend_cfg", lambda cfg: dassl_bridge.extend_dassl_cfg(cfg))  # line 2
    # Dassl's logger replaces sys.stdout for the rest of the process and closes it when collected,
    # and its environment report shells out: neither is under test here.
    logged_to = []
    monkeypatch.setattr(tools_train, "setup_logger", logged_to.append)
    monkeypatch.setattr(tools_train, "collect_env_info", lambda: "(not collected in this test)")
    out = str(tmp_path / "run")
    args = argparse.Namespace(
        root=synthetic_root, output_dir=out, resume="", seed=1, source_domains=list(SYNTH_SOURCES),
        target_domains=[SYNTH_TARGET], transforms=None, config_file=METHOD_YAML,
        dataset_config_file=DATASET_YAML, trainer="PromptEmo", backbone="", head="", eval_only=False,
        model_dir="", load_epoch=None, no_train=False, opts=["OPTIM.MAX_EPOCH", "1", *SYNTH_OPTS])
    tools_train.main(args)
    assert logged_to == [out]
    with open(os.path.join(out, "results.json")) as f:
        record = json.load(f)
    assert record["trainer"] == "PromptEmo" and record["epochs_trained"] == 1
    assert record["source_domains"] == SYNTH_SOURCES and record["seed"] == 1
    # --eval-only: Dassl's main calls load_model(model_dir, epoch) then test()
    evaluated = str(tmp_path / "eval")
    tools_train.main(argparse.Namespace(**{**vars(args), "output_dir": evaluated, "eval_only": True,
                                           "model_dir": out}))
    with open(os.path.join(evaluated, "results.json")) as f:
        assert json.load(f)["metrics"] == pytest.approx(record["metrics"], abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("trainer", ["Vanilla", "DAELDG"])
def test_dassl_own_trainers_on_mofer_are_refused_by_name(dassl, synthetic_root, tmp_path, monkeypatch, trainer):
    """Dassl's closed-set trainers on MOFER used to exit 0 with no results.json (Vanilla, whose logits went to
    OpenSet as probabilities) or stop on a bare AssertionError (DAELDG's sampler check)."""
    tools_train = _dassl_tools_train(dassl)
    dassl_bridge.register_with_dassl()
    monkeypatch.setattr(tools_train, "extend_cfg", lambda cfg: dassl_bridge.extend_dassl_cfg(cfg))
    monkeypatch.setattr(tools_train, "setup_logger", lambda out: None)
    monkeypatch.setattr(tools_train, "collect_env_info", lambda: "(not collected in this test)")
    out = str(tmp_path / "run")
    args = argparse.Namespace(
        root=synthetic_root, output_dir=out, resume="", seed=1, source_domains=list(SYNTH_SOURCES),
        target_domains=[SYNTH_TARGET], transforms=None, config_file="", dataset_config_file=DATASET_YAML,
        trainer=trainer, backbone="resnet18", head="", eval_only=False, model_dir="", load_epoch=None, no_train=False,
        opts=["OPTIM.MAX_EPOCH", "1", "MODEL.BACKBONE.PRETRAINED", "False", "USE_CUDA", "False", *SYNTH_OPTS])
    with pytest.raises(UserError, match=f"Dassl's trainer {trainer} cannot run on this project's dataset MOFER"):
        tools_train.main(args)
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_dassl_program_reports_a_user_error_in_one_line(dassl, registered, capsys):
    """Dassl's train.py catches nothing: after register_with_dassl a UserError prints one line, no traceback."""
    try:
        raise UserError("dataset root not found: /nowhere")
    except UserError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    err = capsys.readouterr().err
    assert err == "error: dataset root not found: /nowhere\n"
