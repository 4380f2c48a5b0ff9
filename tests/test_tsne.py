"""scripts/tsne.py: the t-SNE figure of a trained run (the paper's Figure 3) and its answers to mistakes."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from engine import cli as train
from conftest import ROOT, SYNTH_OPTS, SYNTH_SOURCES, SYNTH_TARGET, load_script

SYNTH_YAML = os.path.join(ROOT, "configs", "datasets", "synthetic.yaml")
PE_TINY_YAML = os.path.join(ROOT, "configs", "trainers", "PromptEmo", "tiny.yaml")


tsne = load_script("tsne")


@pytest.fixture(scope="module")
def run_dir(synthetic_root, tmp_path_factory) -> str:
    """A PromptEmo run trained for one short epoch on the synthetic domains."""
    out = str(tmp_path_factory.mktemp("tsne") / "run")
    code = train.cli(["--root", synthetic_root, "--dataset-config-file", SYNTH_YAML, "--config-file", PE_TINY_YAML,
                      "--output-dir", out, "OPTIM.MAX_EPOCH", "1", *SYNTH_OPTS])
    assert code == 0
    assert os.path.isfile(os.path.join(out, "model", "model.pth.tar-1"))
    return out


def _snapshot(folder: str) -> dict[str, float]:
    return {os.path.relpath(os.path.join(d, f), folder): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files}


def _has_color(img: np.ndarray, rgb, tol: int = 12) -> bool:
    return bool((np.abs(img.astype(int) - np.array(rgb)).max(axis=-1) <= tol).any())


def _rgb(color) -> tuple[int, int, int]:
    from matplotlib.colors import to_rgb

    return tuple(int(round(255 * v)) for v in to_rgb(color))


def test_figure_of_a_trained_run(run_dir, capsys):
    before = _snapshot(run_dir)
    code = tsne.main([run_dir, "--size", "8", "4", "--dpi", "50", "--max-per-domain", "30"])
    err = capsys.readouterr().err
    assert code == 0, err
    png = os.path.join(run_dir, "tsne.png")
    after = _snapshot(run_dir)
    assert after.pop("tsne.png") and after == before  # the figure is the only file written

    image = Image.open(png)
    assert image.size == (400, 200)
    img = np.asarray(image.convert("RGB"))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # not blank
    # Legend handles are drawn opaque, so every palette colour appears exactly somewhere
    assert _has_color(img, _rgb(tsne.SOURCE_COLOR)) and _has_color(img, _rgb(tsne.TARGET_COLOR))
    assert _has_color(img, (0, 0, 0), tol=5)
    for color in tsne.class_colors(6):  # six seen classes (fear unseen)
        assert _has_color(img, _rgb(color))


def test_features_follow_the_split_and_the_cap(run_dir):
    trainer = tsne.load_run(run_dir, load_epoch=1)
    assert trainer.epochs_done == 1 and trainer.cfg.OUTPUT_DIR == ""
    feats = tsne.collect_features(trainer, max_per_domain=10, seed=3)
    n_src, n_tgt = int((~feats.is_target).sum()), int(feats.is_target.sum())
    assert (n_src, n_tgt) == (10 * len(SYNTH_SOURCES), 10)
    assert feats.features.shape[0] == n_src + n_tgt
    np.testing.assert_allclose(np.linalg.norm(feats.features, axis=1), 1.0, atol=1e-4)
    assert feats.domain_names == SYNTH_SOURCES + [SYNTH_TARGET] and feats.unseen_classnames == ["fear"]
    assert np.bincount(feats.domain[~feats.is_target]).tolist() == [10, 10, 10]
    assert (feats.class_label[~feats.is_target] < len(feats.seen_classnames)).all()  # sources: seen only
    again = tsne.collect_features(trainer, max_per_domain=10, seed=3)  # seeded, no augmentation
    np.testing.assert_allclose(again.features, feats.features, atol=1e-6)
    np.testing.assert_array_equal(again.class_label, feats.class_label)


def test_plot_colours_unseen_black_and_domains_orange_blue():
    from matplotlib.colors import to_rgba

    rng = np.random.default_rng(0)
    k, n = 3, 40
    is_target = np.arange(n) >= 20
    labels = np.where(is_target, np.arange(n) % (k + 1), np.arange(n) % k)
    feats = tsne.Features(rng.normal(size=(n, 8)), is_target, labels, np.where(is_target, 2, np.arange(n) % 2),
                          ["a", "b", "t"], ["happiness", "sadness", "neutral"], ["fear"])
    xy = tsne.embed(feats.features, perplexity=30, seed=0)  # perplexity capped below n
    assert xy.shape == (n, 2)
    fig = tsne.plot(xy, feats, "title", size=(6, 3), dpi=40)
    ax_dom, ax_cls = fig.axes[:2]
    dom = {c.get_label(): c for c in ax_dom.collections}
    assert [tuple(c.get_facecolor()[0][:3]) for c in dom.values()] == \
        [to_rgba(tsne.SOURCE_COLOR)[:3]] * 2 + [to_rgba(tsne.TARGET_COLOR)[:3]]
    cls = {c.get_label(): c for c in ax_cls.collections}
    assert list(cls) == ["happiness", "sadness", "neutral", "fear (unseen)"]
    unseen = cls["fear (unseen)"]
    assert len(unseen.get_offsets()) == int((is_target & (labels == k)).sum()) == 5
    assert tuple(unseen.get_facecolor()[0][:3]) == (0.0, 0.0, 0.0)
    seen_colors = {tuple(cls[name].get_facecolor()[0][:3]) for name in feats.seen_classnames}
    assert len(seen_colors) == k and (0.0, 0.0, 0.0) not in seen_colors
    assert sum(len(c.get_offsets()) for c in cls.values()) == int(is_target.sum())  # target only


@pytest.mark.parametrize("case", ["missing", "no_config", "bad_epoch"])
def test_user_mistakes_end_with_one_line(case, run_dir, tmp_path, capsys):
    argv = {"missing": [str(tmp_path / "nowhere")],
            "no_config": [str(tmp_path)],
            "bad_epoch": [run_dir, "--load-epoch", "9", "--out", str(tmp_path / "x.png")]}[case]
    code = tsne.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert {"missing": "run directory not found", "no_config": "no config.yaml",
            "bad_epoch": "no checkpoint for epoch 9"}[case] in lines[0]
    assert "Traceback" not in err and not os.path.exists(tmp_path / "x.png")


def test_a_trainer_without_image_features_is_a_user_error():
    from engine.trainer import SimpleTrainer
    from engine.utils.errors import UserError

    class NoFeatures(SimpleTrainer):
        def __init__(self):  # nothing to build: extract() must refuse before touching data
            self.cfg = type("Cfg", (), {"TRAINER": type("T", (), {"NAME": "NoFeatures"})})

    with pytest.raises(UserError, match="NoFeatures does not provide image features"):
        tsne.extract(NoFeatures(), [])
