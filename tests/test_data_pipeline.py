"""Samplers, transforms and the data manager."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, get_cfg_default
from engine.data.datasets import Datum
from engine.data.samplers import RandomDomainSampler, RandomSampler, SequentialSampler, build_sampler
from engine.data.transforms import build_transform
from engine.utils.errors import UserError


def _items(sizes: list[int]) -> list[Datum]:
    return [Datum(f"{d}_{i}.png", 0, d) for d, n in enumerate(sizes) for i in range(n)]


def test_random_sampler_order_depends_only_on_seed_and_pass():
    data = _items([50])
    a, b = RandomSampler(data, seed=3), RandomSampler(data, seed=3)
    first, second = list(a), list(a)
    assert first != second and sorted(first) == list(range(50))
    assert [first, second] == [list(b), list(b)]
    # Restoring the state reproduces the next pass (what resume relies on)
    c = RandomSampler(data, seed=99)
    c.load_state_dict(a.state_dict())
    assert list(c) == list(a)
    assert list(RandomSampler(data, seed=4)) != first


def test_domain_sampler_balances_every_batch_even_when_batch_does_not_divide():
    data = _items([40, 100, 25])
    sampler = RandomDomainSampler(data, batch_size=16, n_domain=0, epoch="all", seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == (165 // 16) * 16
    for b in range(0, len(order), 16):
        counts = Counter(data[i].domain for i in order[b:b + 16])
        assert sorted(counts.values()) == [5, 5, 6]  # 16 = 6 + 5 + 5
    # "all": small domains are reused, large ones keep their share; no index repeats within a domain
    # until that domain's pool is exhausted
    seen_first_40 = [i for i in order if data[i].domain == 0][:40]
    assert len(set(seen_first_40)) == 40


def test_domain_sampler_smallest_epoch_stops_at_smallest_domain():
    data = _items([12, 100, 30])
    sampler = RandomDomainSampler(data, batch_size=12, n_domain=0, epoch="smallest", seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 36  # 12 // 4 = 3 batches of 4 + 4 + 4
    assert len(set(order)) == len(order)  # without replacement


def test_domain_sampler_subset_of_domains_per_batch():
    data = _items([30, 30, 30, 30])
    order = list(RandomDomainSampler(data, batch_size=8, n_domain=2, seed=1))
    for b in range(0, len(order), 8):
        counts = Counter(data[i].domain for i in order[b:b + 8])
        assert len(counts) == 2 and set(counts.values()) == {4}


def test_sampler_names_and_errors():
    data = _items([5])
    assert isinstance(build_sampler("SequentialSampler", data), SequentialSampler)
    assert list(build_sampler("SequentialSampler", data)) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="unknown sampler 'Foo'"):
        build_sampler("Foo", data)
    with pytest.raises(UserError, match="smaller than"):
        RandomDomainSampler(_items([5, 5, 5]), batch_size=2)


def _cfg(**input_overrides):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (32, 32)
    for k, v in input_overrides.items():
        setattr(cfg.INPUT, k, v)
    return cfg


def test_test_transform_resizes_centre_crops_and_normalises_with_clip_stats():
    img = Image.fromarray(np.full((48, 64, 3), 128, dtype=np.uint8))
    out = build_transform(_cfg(), is_train=False)(img)
    assert out.shape == (3, 32, 32)
    expected = (128 / 255 - torch.tensor(CLIP_PIXEL_MEAN)) / torch.tensor(CLIP_PIXEL_STD)
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)


def test_grey_images_become_rgb_and_train_transform_names():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8), mode="L")
    for choices in (["random_resized_crop", "random_flip", "normalize"], ["random_crop", "center_crop"],
                    ["colorjitter", "randomgrayscale", "gaussian_blur", "gaussian_noise"]):
        out = build_transform(_cfg(TRANSFORMS=choices), is_train=True)(img)
        assert out.shape == (3, 32, 32)
    # without "normalize", values stay in [0, 1]
    out = build_transform(_cfg(TRANSFORMS=["random_flip", "gaussian_noise"]), is_train=True)(img)
    assert 0 <= out.min() and out.max() <= 1


def test_random_erasing_is_torchvisions_after_normalize_in_training_only():
    from torchvision import transforms as T

    cfg = _cfg(TRANSFORMS=["random_flip", "normalize", "random_erasing"], RE_P=0.7, RE_SCALE=(0.05, 0.2))
    steps = build_transform(cfg, is_train=True).transforms
    assert isinstance(steps[-2], T.Normalize) and isinstance(steps[-1], T.RandomErasing)
    erasing = steps[-1]
    assert (erasing.p, erasing.scale, erasing.ratio, erasing.value) == (0.7, (0.05, 0.2), (0.3, 3.3), 0)
    assert not any(isinstance(s, T.RandomErasing) for s in build_transform(cfg, is_train=False).transforms)
    # erased pixels are 0 in the normalised image (the mean colour), about RE_P of the images have some
    img = Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8))
    torch.manual_seed(0)
    erased = sum(bool((build_transform(cfg, is_train=True)(img) == 0).any()) for _ in range(300))
    assert 170 < erased < 250
    with pytest.raises(UserError, match=r"INPUT.RE_P must be in \[0, 1\], got 1.5"):
        build_transform(_cfg(TRANSFORMS=["random_erasing"], RE_P=1.5), is_train=True)


def test_random_flip_flips_about_half_the_time():
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, :16] = 255  # left half white
    img = Image.fromarray(arr)
    tfm = build_transform(_cfg(TRANSFORMS=["random_flip"]), is_train=True)
    torch.manual_seed(0)
    flipped = sum(float(tfm(img)[0, 0, 0]) < 0.5 for _ in range(400))
    assert 160 < flipped < 240


def test_unknown_transform_is_a_user_error():
    with pytest.raises(UserError, match="unknown transform.*random_flipp"):
        build_transform(_cfg(TRANSFORMS=["random_flipp"]), is_train=True)


def test_dataset_wrapper_crops_the_face_box_and_reports_unreadable_images(tmp_path):
    from engine.data import DatasetWrapper

    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[10:30, 20:40] = 255  # the "face"
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cfg = _cfg(TRANSFORMS=[])
    items = [Datum(str(tmp_path / "a.png"), 1, 0, "fear", crop=(20, 10, 40, 30)), Datum(str(tmp_path / "bad.png"))]
    wrapper = DatasetWrapper(cfg, items, transform=build_transform(cfg, is_train=False))
    out = wrapper[0]
    assert out["img"].shape == (3, 32, 32) and out["img"].min().item() == pytest.approx(1.0)  # only the box
    assert out["label"] == 1 and out["index"] == 0
    with pytest.raises(UserError, match="cannot read image .*bad.png"):
        wrapper[1]
