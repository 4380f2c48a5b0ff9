"""Shared fixtures: a tiny CLIP checkpoint file and miniature synthetic domains, built once per
session in a temporary folder. Tests run on the GPU when one is present (the engine picks it).
The project is installed (``pip install -r requirements-dev.txt``); scripts, which are commands rather
than modules, are loaded from their files with :func:`load_script`."""
from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import pytest

import datasets  # noqa: F401  (registers datasets and readers)
import trainers  # noqa: F401  (registers trainers)
from engine.config import extend_cfg, get_cfg_default, merge_from_file, merge_from_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TQDM_DISABLE", "1")

SYNTH_SOURCES = ["synth_color", "synth_gray", "synth_lab"]
SYNTH_TARGET = "synth_wild"
# Small enough for seconds per epoch on two CPU cores
SYNTH_OPTS = ["DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "8", "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "4",
              "DATASET.SYNTHETIC.SIZE", "32"]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    from datasets import synthetic

    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.ensure_domains(root, SYNTH_SOURCES + [SYNTH_TARGET], n_train_per_class=8, n_test_per_class=4,
                             size=32, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def learnable_root(tmp_path_factory) -> str:
    """Synthetic domains large enough for a network trained from scratch to learn on a CPU (20 training and
    20 test faces per class and domain, 32 px) and ``lab_twin``, a folder domain copying ``synth_lab``: with
    sources ``synth_color synth_gray synth_lab`` and target ``lab_twin`` a run tests that a method learns,
    without the domain shift that keeps 32 px networks near chance on a new synthetic domain."""
    import shutil

    from datasets import synthetic

    root = tmp_path_factory.mktemp("learnable")
    synthetic.ensure_domains(str(root), SYNTH_SOURCES + [SYNTH_TARGET], n_train_per_class=20, n_test_per_class=20,
                             size=32, seed=0, progress=False)
    shutil.copytree(root / "synth_lab", root / "lab_twin", ignore=shutil.ignore_patterns(synthetic.MARKER_FILE))
    return str(root)


# make_cfg options for runs on learnable_root
LEARNABLE_OPTS = ["DATASET.SOURCE_DOMAINS", "synth_color,synth_gray,synth_lab", "DATASET.TARGET_DOMAINS", "lab_twin",
                  "DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "20", "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "20"]
CHANCE_ACC_S = 100 / 6  # six seen classes


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> str:
    from engine.modeling.clip_backbone import save_tiny_clip

    return save_tiny_clip(str(tmp_path_factory.mktemp("clip") / "tiny-clip.pt"), seed=0)


@pytest.fixture
def compile_with(monkeypatch):
    """``compile_with(backend)`` makes every ``torch.compile`` in the code under test use ``backend`` and
    returns dynamo's counters, cleared (graphs, breaks); dynamo's caches are reset before and after.
    ``aot_eager`` traces exactly as inductor does (graphs, breaks, autograd) without generating kernels,
    which would take a minute per model on a CPU."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    real_compile = torch.compile

    def use(backend: str):
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=backend, **kw))
        torch._dynamo.reset()
        counters.clear()
        return counters

    yield use
    torch._dynamo.reset()


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (its ``main`` not run), loaded from the file."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in the script look their module up
    spec.loader.exec_module(module)
    return module


def make_cfg(root: str, output_dir: str, *opts: str, trainer: str = "ZSCLIP", unseen: str = "fear"):
    """A frozen MOFER config on the synthetic test domains with the tiny backbone."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_list(cfg, [
        "DATASET.NAME", "MOFER", "DATASET.ROOT", root, "OUTPUT_DIR", output_dir,
        "DATASET.SOURCE_DOMAINS", ",".join(SYNTH_SOURCES), "DATASET.TARGET_DOMAINS", SYNTH_TARGET,
        "DATASET.UNSEEN_CLASSES", unseen, "TRAINER.NAME", trainer, "MODEL.BACKBONE.NAME", "tiny",
        "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "24",
        "DATALOADER.TEST.BATCH_SIZE", "64", "VERBOSE", "False", *SYNTH_OPTS, *opts,
    ])
    cfg.freeze()
    return cfg


def make_method_cfg(root: str, output_dir: str, method: str, *opts: str, variant: str = "tiny", unseen: str = "fear"):
    """A frozen config as ``train.py`` builds it for ``method`` with ``configs/trainers/<method>/<variant>.yaml``
    on the synthetic test domains (``configs/datasets/synthetic.yaml``), then ``opts``."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, os.path.join(ROOT, "configs", "datasets", "synthetic.yaml"))
    merge_from_file(cfg, os.path.join(ROOT, "configs", "trainers", method, f"{variant}.yaml"))
    merge_from_list(cfg, ["DATASET.ROOT", root, "OUTPUT_DIR", output_dir, "DATASET.SOURCE_DOMAINS", ",".join(SYNTH_SOURCES),
                          "DATASET.TARGET_DOMAINS", SYNTH_TARGET, "DATASET.UNSEEN_CLASSES", unseen,
                          "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False", *SYNTH_OPTS, *opts])
    cfg.freeze()
    return cfg


def check_fast_path_and_compiled_step(root: str, tmp_path, method: str, paper_variant: str, compile_with,
                                      prepare=None, min_graphs: int = 2, extra_opts: tuple[str, ...] = ()) -> None:
    """For a ResNet method: its original settings' transforms all run on the decoded-image cache, and with the
    cache one training step under MODEL.COMPILE (aot_eager) gives the eager step's losses, without a graph
    break, from the same weights and batch, in at least ``min_graphs`` compiled graphs. ``prepare(trainer)``, when
    given, runs on both trainers (with equal weights) before the step: a method trained in stages puts them in a
    later one. ``extra_opts`` are more config pairs for the two trainers (a smaller network, say)."""
    from engine.data.fast import FastPathSettings
    from engine.trainer import build_trainer

    FastPathSettings.from_cfg(make_method_cfg(root, str(tmp_path / "paper"), method, variant=paper_variant))
    counters = compile_with("aot_eager")
    opts = ["DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR", str(tmp_path / "cache"), "TRAIN.PRECISION",
            "fp32", "OPTIM.MAX_EPOCH", "1", *extra_opts]
    eager = build_trainer(make_method_cfg(root, str(tmp_path / "eager"), method, *opts))
    comp = build_trainer(make_method_cfg(root, str(tmp_path / "comp"), method, *opts, "MODEL.COMPILE", "True"))
    comp.model.load_state_dict(eager.model.state_dict())
    if prepare:
        prepare(eager)
        prepare(comp)
    batch_x, batch_u = next(iter(eager.train_loader_x)), next(iter(eager.train_loader_u))
    eager.set_model_mode("train")
    comp.set_model_mode("train")
    ref, got = eager.forward_backward(batch_x, batch_u), comp.forward_backward(batch_x, batch_u)
    for name in ref:
        assert got[name].item() == pytest.approx(ref[name].item(), rel=1e-4, abs=1e-5), name
    breaks = dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= min_graphs and not breaks, breaks
