"""The README's extension examples run as written: its trainer trains and evaluates, its dataset reader
reads a folder in its layout (and reports a bad line as ``file:line``), its metric appears in every
evaluation. Each example registers into copies of the registries, which the test then drops."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_cfg
from datasets.classes import CANONICAL_CLASSES
from datasets.readers import base as reader_base
from engine import config as config_module
from engine.evaluation import metrics as metrics_module
from engine.evaluation import open_set_metrics
from engine.trainer import TRAINER_REGISTRY, build_trainer
from engine.utils.errors import UserError


def readme_example(section: str) -> str:
    """The first ```python block after the README heading ``## <section>``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"\n## {section}\n")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.fixture
def scratch_registries(monkeypatch):
    """Trainer, reader, metric and config-hook registrations made by a test disappear after it."""
    monkeypatch.setattr(TRAINER_REGISTRY, "_obj_map", dict(TRAINER_REGISTRY._obj_map))
    monkeypatch.setattr(reader_base.DOMAIN_REGISTRY, "_obj_map", dict(reader_base.DOMAIN_REGISTRY._obj_map))
    monkeypatch.setattr(metrics_module, "_REGISTERED", dict(metrics_module._REGISTERED))
    monkeypatch.setattr(metrics_module, "METRIC_DESCRIPTIONS", dict(metrics_module.METRIC_DESCRIPTIONS))
    monkeypatch.setattr(config_module, "_CONFIG_HOOKS", list(config_module._CONFIG_HOOKS))


def test_the_trainer_example_trains_and_writes_results(scratch_registries, synthetic_root, tmp_path):
    exec(readme_example("Adding a trainer"), {"__name__": "readme_trainer"})
    cfg = make_cfg(synthetic_root, str(tmp_path), "OPTIM.MAX_EPOCH", "1", "OPTIM.NAME", "adamw", "OPTIM.LR", "1e-3",
                   trainer="MyMethod")
    assert cfg.TRAINER.MYMETHOD.TEMPLATE == "a photo of {}."  # its config hook ran
    trainer = build_trainer(cfg)
    before = [p.detach().clone() for p in trainer.image_encoder.parameters()]
    trainer.train()
    assert any(not a.equal(b) for a, b in zip(before, trainer.image_encoder.parameters()))  # it trained
    results = json.load(open(tmp_path / "results.json"))
    assert results["trainer"] == "MyMethod" and 0 <= results["metrics"]["acc_s"] <= 100


def _write_mydata(folder, lines: list[str]) -> None:
    os.makedirs(os.path.join(folder, "img"))
    rng = np.random.default_rng(0)
    for line in lines:
        image = line.split(",")[0]
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(os.path.join(folder, image))
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_the_reader_example_reads_its_layout(scratch_registries, tmp_path):
    exec(readme_example("Adding a dataset reader"), {"__name__": "readme_reader"})
    lines = [f"img/{split}{k}.png,{name},{split}" for split in ("train", "test")
             for k, name in enumerate(["surprised", "fear", "disgust", "happy", "sad", "angry", "neutral"])]
    _write_mydata(tmp_path / "mydata", lines)
    cfg = make_cfg(str(tmp_path), "unused")
    assert cfg.DATASET.MYDATA.LIST == "labels.csv" and cfg.DATASET.MYDATA.DIR == ""  # its config node
    reader = reader_base.DOMAIN_REGISTRY.get("mydata")(cfg, "mydata", str(tmp_path))
    splits = reader.read()
    assert [it.label for it in splits.train] == list(range(len(CANONICAL_CLASSES)))  # aliases resolved
    assert splits.test[3].impath == str(tmp_path / "mydata" / "img" / "test3.png")

    with open(tmp_path / "mydata" / "labels.csv", "a") as f:
        f.write("img/train0.png,fear,validation\n")
    with pytest.raises(UserError, match=r"labels\.csv:15: split 'validation' is neither train nor test"):
        reader.read()


def test_the_metric_example_is_in_every_evaluation(scratch_registries):
    exec(readme_example("Adding a metric"), {"__name__": "readme_metric"})
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2]])
    labels = np.array([1, 0, 2, 3])  # sample 4 is unseen
    unseen = np.array([False, False, False, True])
    metrics = open_set_metrics(probs, labels, unseen)
    # top-2 of the seen samples: {0, 1} holds 1, {2, 1} misses 0, {2, 1} holds 2: two of three
    assert metrics["acc_s_top2"] == pytest.approx(200 / 3)
    assert list(metrics).index("acc_s_top2") < list(metrics).index("acc_class_0")  # before the per-class recalls
    assert "two most probable" in metrics_module.METRIC_DESCRIPTIONS["acc_s_top2"]
