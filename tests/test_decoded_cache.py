"""The decoded-image cache, device augmentation and CachedLoader: the same pixels as decoding and
resizing each file, augmentations with the PIL path's parameters, rebuilds on changed files, the
DataLoader's order, and a trainer that runs on them."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import make_cfg
from engine.config import extend_cfg, get_cfg_default, merge_from_list
from engine.data import DataManager, DatasetWrapper
from engine.data.datasets import Datum
from engine.data.fast import DeviceAugment, FastPathSettings
from engine.data.fast import cache as cache_module
from engine.data.fast.augment import crop_resize_flip, sample_resized_crop_params
from engine.data.fast.cache import DecodedCache, decode_image, open_decoded_cache
from engine.data.fast.loader import CachedLoader, CacheView, take_rows
from engine.data.samplers import build_sampler
from engine.data.transforms import build_transform
from engine.utils.errors import UserError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _write_images(folder) -> list[Datum]:
    """Images of assorted sizes and modes (RGB, grey, RGBA, palette), one read through a crop box."""
    rng = np.random.default_rng(0)
    specs = [("rgb_wide.png", "RGB", (50, 40)), ("grey_tall.png", "L", (37, 61)), ("rgba.png", "RGBA", (64, 64)),
             ("palette.png", "P", (45, 45)), ("small.jpg", "RGB", (20, 26))]
    items = []
    for k, (name, mode, (w, h)) in enumerate(specs):
        channels = {"RGB": 3, "L": 1, "RGBA": 4, "P": 1}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze()
        path = os.path.join(folder, name)
        Image.fromarray(pixels, mode=mode).save(path)
        items.append(Datum(path, label=k % 3, domain=k % 2))
    items.append(Datum(items[0].impath, label=1, domain=0, crop=(3, 5, 40, 33)))
    return items


def _cfg(*opts: str):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_list(cfg, ["INPUT.SIZE", "(32, 32)", *opts])
    return cfg


def _pil_test_batch(cfg, items) -> torch.Tensor:
    wrapper = DatasetWrapper(cfg, items, transform=build_transform(cfg, is_train=False))
    return torch.stack([wrapper[i]["img"] for i in range(len(items))])


def test_cache_holds_the_decoded_resized_pixels_and_equals_the_pil_test_transform(tmp_path):
    items = _write_images(tmp_path)
    cfg = _cfg()
    images = open_decoded_cache(items, str(tmp_path / "cache"), "toy", "test", 32, "bicubic", progress=False)
    assert images.shape == (len(items), 32, 32, 3) and images.dtype == np.uint8
    for row, item in zip(images, items):
        img = Image.open(item.impath).convert("RGB")
        img = img.crop(item.crop) if item.crop else img
        expected = np.asarray(T.CenterCrop(32)(T.Resize(32, interpolation=T.InterpolationMode.BICUBIC)(img)))
        assert np.array_equal(row, expected)  # uint8, exactly
    # Cached test batches equal the PIL test transform after normalisation
    device_batch = FastPathSettings.from_cfg(cfg).test_augment(torch.from_numpy(np.array(images)))
    pil_batch = _pil_test_batch(cfg, items)
    assert device_batch.dtype == torch.float32 and device_batch.shape == pil_batch.shape
    torch.testing.assert_close(device_batch, pil_batch, atol=1e-5, rtol=0)
    # A larger cache is resized again on the device: close to the PIL pixels (on a smooth image), not identical
    yy, xx = np.mgrid[0:61, 0:83]
    smooth = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "smooth.png")
    smooth_items = [Datum(str(tmp_path / "smooth.png"))]
    bigger = open_decoded_cache(smooth_items, str(tmp_path / "cache"), "toy", "test", 48, "bicubic", progress=False)
    resized = FastPathSettings.from_cfg(cfg).test_augment(torch.from_numpy(np.array(bigger)))
    pil_smooth = _pil_test_batch(cfg, smooth_items)
    error = (resized - pil_smooth).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255  # in uint8 steps
    # centre crops rounded at two sizes may shift the view by up to about half an output pixel
    assert resized.shape == pil_smooth.shape and error.mean() < 4 and error.max() < 8


def test_cache_is_rebuilt_when_a_file_changes_and_half_written_caches_are_ignored(tmp_path, monkeypatch):
    items = _write_images(tmp_path)
    folder = str(tmp_path / "cache")
    first = DecodedCache.for_items(items, folder, "toy", "train_x", 32)
    monkeypatch.setattr(cache_module, "CHUNK", 2)  # several tasks, so two processes share the work
    built = first.build(num_workers=2, progress=False)
    assert np.array_equal(built, np.stack([decode_image(item, 32) for item in items]))
    meta = json.load(open(first.meta_path))
    assert meta["num_images"] == len(items) and meta["size"] == 32 and meta["key"] == first.key
    # Rewriting an image with other pixels: a new key, a new cache with the new pixels; the old one stays
    Image.new("RGB", (50, 40), (200, 10, 10)).save(items[0].impath)
    stat = os.stat(items[0].impath)
    os.utime(items[0].impath, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = DecodedCache.for_items(items, folder, "toy", "train_x", 32)
    assert second.key != first.key
    rebuilt = open_decoded_cache(items, folder, "toy", "train_x", 32, progress=False)
    assert np.array_equal(rebuilt[0], np.broadcast_to(np.array([200, 10, 10], np.uint8), (32, 32, 3)))
    assert os.path.exists(first.array_path) and os.path.exists(second.array_path)
    # Touching a file (same bytes, newer time) also gives a new key
    stat = os.stat(items[1].impath)
    os.utime(items[1].impath, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert DecodedCache.for_items(items, folder, "toy", "train_x", 32).key != second.key
    # An array without its metadata (an interrupted build) or with metadata that does not match is not used
    third = DecodedCache.for_items(items, folder, "toy", "train_x", 32)
    open_decoded_cache(items, folder, "toy", "train_x", 32, progress=False)
    assert third.load() is not None
    meta = json.load(open(third.meta_path))
    os.remove(third.meta_path)
    assert third.load() is None
    json.dump({**meta, "num_images": len(items) + 1}, open(third.meta_path, "w"))
    assert third.load() is None
    assert open_decoded_cache(items, folder, "toy", "train_x", 32, progress=False).shape[0] == len(items)
    assert third.load() is not None and json.load(open(third.meta_path))["num_images"] == len(items)
    assert not [n for n in os.listdir(folder) if ".tmp-" in n]


def _gradient_batch(n: int, size: int = 48) -> torch.Tensor:
    """``n`` copies of an image whose brightness grows from left to right (any crop shows it)."""
    ramp = torch.linspace(0, 255, size).round().to(torch.uint8)
    return ramp.view(1, 1, size, 1).expand(n, size, size, 3).contiguous()


def test_device_augmentation_keeps_shapes_ranges_and_flips_half_the_samples():
    n = 2000
    augment = DeviceAugment((32, 32), train=True, random_resized_crop=True, scale=(0.08, 1.0), flip=True,
                            mean=MEAN, std=STD)
    out = augment(_gradient_batch(n), torch.Generator().manual_seed(0))
    assert out.shape == (n, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (out.amin(dim=(0, 2, 3)) >= lo - 1e-5).all() and (out.amax(dim=(0, 2, 3)) <= hi + 1e-5).all()
    slope = out[:, 0, :, -1].mean(1) - out[:, 0, :, 0].mean(1)  # right edge minus left edge
    assert (slope != 0).all()
    assert 0.45 < (slope < 0).float().mean().item() < 0.55
    # Without random choices a training image is only resized (here: not at all) and normalised
    plain = DeviceAugment((48, 48), train=True)(_gradient_batch(2))
    assert torch.equal(plain, _gradient_batch(2).permute(0, 3, 1, 2).float() / 255)
    # Grayscale and noise keep the [0, 1] range; grayscale equalises the channels of about p of the images
    gray = DeviceAugment((32, 32), train=True, grayscale_p=0.3, noise=(0.0, 0.1))
    colour = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = gray(colour, torch.Generator().manual_seed(2))
    assert out.min() >= 0 and out.max() <= 1
    without_noise = DeviceAugment((32, 32), train=True, grayscale_p=0.3)(colour, torch.Generator().manual_seed(2))
    equal_channels = (without_noise[:, 0] == without_noise[:, 1]).flatten(1).all(1).float().mean().item()
    assert 0.25 < equal_channels < 0.35


def test_crop_parameters_follow_torchvision_ranges_and_distribution():
    n, size, scale = 20000, 96, (0.08, 1.0)
    top, left, h, w = sample_resized_crop_params(n, size, size, scale, generator=torch.Generator().manual_seed(0))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    area = (h * w).double() / size**2
    # whole pixels: each side is rounded by up to half a pixel, so the area may leave the range by
    # (w + h) / 2 + 1/4 pixels, with w + h <= 2 * size
    slack = (size + 0.25) / size**2
    assert area.min() >= scale[0] - slack and area.max() <= scale[1]
    log_ratio = (w.double() / h).log()
    assert log_ratio.abs().max() <= np.log(4 / 3) + 2 / (size * scale[0] ** 0.5)
    torch.manual_seed(0)
    reference = np.array([T.RandomResizedCrop.get_params(Image.new("L", (size, size)), list(scale), [3 / 4, 4 / 3])
                          for _ in range(5000)])
    assert abs(area.mean().item() - (reference[:, 2] * reference[:, 3]).mean() / size**2) < 0.015
    # A scale range that no attempt can meet falls back to torchvision's centre crop (the whole square)
    top, left, h, w = sample_resized_crop_params(8, 32, 32, (2.0, 3.0))
    assert (top == 0).all() and (left == 0).all() and (h == 32).all() and (w == 32).all()


def test_crop_geometry_matches_pil_and_the_flip_mirrors():
    rng = np.random.default_rng(0)
    pixels = np.cumsum(rng.integers(0, 8, (32, 32, 3)), axis=1).clip(0, 255).astype(np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()

    def crop(t, l, h, w, flip):
        box = [torch.tensor([v]) for v in (t, l, h, w)]
        return crop_resize_flip(x, *box, torch.tensor([flip]), (32, 32))[0].permute(1, 2, 0).numpy()

    assert np.array_equal(crop(0, 0, 32, 32, False), pixels)  # the whole image: identity
    assert np.array_equal(crop(0, 0, 32, 32, True), pixels[:, ::-1])  # and its mirror image
    pil = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.BILINEAR, box=(5, 7, 18, 24)), dtype=float)
    assert np.abs(crop(7, 5, 17, 13, False) - pil).max() < 1.0  # PIL rounds to uint8
    assert np.array_equal(crop(7, 5, 17, 13, True), crop(7, 5, 17, 13, False)[:, ::-1])


def test_compiled_training_augmentation_equals_eager_without_graph_breaks(compile_with):
    """With MODEL.COMPILE the training augmentation's pixel work is one compiled graph. Its random draws
    stay eager, so it takes the same numbers from the generator and gives the eager batch."""
    # On a GPU the real compiler (Triton kernels); on a CPU aot_eager traces the same graph in seconds
    device = "cuda" if torch.cuda.is_available() else "cpu"
    counters = compile_with("inductor" if device == "cuda" else "aot_eager")
    opts = ["INPUT.TRANSFORMS", "['random_resized_crop','random_flip','randomgrayscale','gaussian_noise','normalize']"]
    eager = FastPathSettings.from_cfg(_cfg(*opts)).train_augment
    compiled = FastPathSettings.from_cfg(_cfg(*opts, "MODEL.COMPILE", "True"))
    comp = compiled.train_augment
    assert hasattr(comp.apply, "_torchdynamo_orig_callable") and not hasattr(eager.apply, "_torchdynamo_orig_callable")
    assert not hasattr(compiled.test_augment.apply, "_torchdynamo_orig_callable")  # the test transform stays eager
    colour = torch.randint(0, 256, (64, 40, 40, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    gen_eager, gen_comp = torch.Generator(device).manual_seed(4), torch.Generator(device).manual_seed(4)
    for _ in range(2):  # the second batch: the generators moved on by the same draws
        expected, got = eager(colour, gen_eager), comp(colour, gen_comp)
        assert got.shape == expected.shape == (64, 3, 32, 32)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert torch.equal(gen_eager.get_state(), gen_comp.get_state())
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_generator_state_replays_the_same_batch(tmp_path):
    items = _write_images(tmp_path)
    images = open_decoded_cache(items, str(tmp_path / "cache"), "toy", "train_x", 32, progress=False)
    augment = FastPathSettings.from_cfg(_cfg()).train_augment
    loader = CachedLoader(images, items, build_sampler("RandomSampler", items, seed=3), 4, augment, "cpu",
                          drop_last=True, seed=5)
    state = (loader.sampler.state_dict(), loader.generator.get_state())
    first = next(iter(loader))
    second = next(iter(loader))
    assert not torch.equal(first["img"], second["img"])
    loader.sampler.load_state_dict(state[0])
    loader.generator.set_state(state[1])
    again = next(iter(loader))
    assert torch.equal(first["img"], again["img"]) and torch.equal(first["index"], again["index"])


def test_cached_loader_yields_the_dataloader_order_and_pil_test_pixels(synthetic_root, tmp_path):
    opts = ["DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler", "SEED", "4"]
    pil = DataManager(make_cfg(synthetic_root, str(tmp_path / "a"), *opts))
    cached = DataManager(make_cfg(synthetic_root, str(tmp_path / "b"), *opts, "DATALOADER.CACHE.ENABLED", "True",
                                  "DATALOADER.CACHE.DIR", str(tmp_path / "cache")))
    on_device = DataManager(make_cfg(synthetic_root, str(tmp_path / "c"), *opts, "DATALOADER.CACHE.ENABLED", "True",
                                     "DATALOADER.CACHE.DIR", str(tmp_path / "cache"),
                                     "DATALOADER.CACHE.ON_DEVICE", "True"))
    for name in ("train_loader_x", "train_loader_u", "test_loader"):
        a, b, c = (getattr(dm, name) for dm in (pil, cached, on_device))
        assert isinstance(b, CachedLoader) and type(b.sampler) is type(a.sampler)
        assert len(a) == len(b) and len(a.dataset) == len(b.dataset)
        for _ in range(2):  # two passes: the sampler's pass counter advances alike
            batches_a, batches_b, batches_c = list(a), list(b), list(c)
            assert len(batches_a) == len(batches_b) == len(a)
            for x, y, z in zip(batches_a, batches_b, batches_c):
                assert torch.equal(x["index"], y["index"].cpu()) and x["impath"] == y["impath"]
                assert torch.equal(x["label"], y["label"].cpu()) and torch.equal(x["domain"], y["domain"].cpu())
                assert y["img"].shape == x["img"].shape and y["img"].dtype == torch.float32
                # host-gathered and device-resident arrays give identical batches
                assert torch.equal(y["img"], z["img"]) and torch.equal(y["index"], z["index"])
                if name == "test_loader":
                    torch.testing.assert_close(y["img"].cpu(), x["img"], atol=1e-5, rtol=0)


def test_transforms_the_device_cannot_run_are_a_clear_user_error(synthetic_root, tmp_path):
    cfg = make_cfg(synthetic_root, str(tmp_path), "DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR",
                   str(tmp_path / "cache"), "INPUT.TRANSFORMS", "['random_resized_crop','gaussian_blur','normalize']")
    with pytest.raises(UserError, match=r"gaussian_blur.*DATALOADER.CACHE.ENABLED False"):
        DataManager(cfg)
    assert not os.path.exists(tmp_path / "cache")  # nothing decoded before the check


def test_a_trainer_runs_with_the_cache(synthetic_root, tmp_path):
    from engine.trainer import build_trainer

    out = tmp_path / "run"
    cfg = make_cfg(synthetic_root, str(out), "DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR",
                   str(tmp_path / "cache"), "INPUT.TRANSFORMS", "['random_resized_crop','random_flip','normalize']",
                   "OPTIM.MAX_EPOCH", "1", trainer="PromptEmo")
    trainer = build_trainer(cfg)
    assert isinstance(trainer.train_loader_x, CachedLoader) and isinstance(trainer.test_loader, CachedLoader)
    trainer.train()
    results = json.load(open(out / "results.json"))
    assert results["epochs_trained"] == 1 and np.isfinite(results["metrics"]["acc_s"])


def test_a_domain_split_is_decoded_once_for_every_run_that_reads_it(synthetic_root, tmp_path):
    """MOFER caches each domain's split whole: a run with another unseen class, or with the domain in
    another role, reuses that cache, and every split still reads its own images."""
    cache_dir = tmp_path / "cache"
    opts = ["DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR", str(cache_dir)]

    def arrays() -> list[str]:
        return sorted(f for f in os.listdir(cache_dir) if f.endswith(".npy"))

    fear = DataManager(make_cfg(synthetic_root, str(tmp_path / "a"), *opts))
    first = arrays()
    assert len(first) == 5  # the three sources' train splits, the target's train and test splits
    happiness = DataManager(make_cfg(synthetic_root, str(tmp_path / "b"), *opts, unseen="happiness"))
    assert arrays() == first
    # synth_lab as the target: its train split is the cache it had as a source; only its test split is new
    swapped = DataManager(make_cfg(synthetic_root, str(tmp_path / "c"), *opts, "DATASET.SOURCE_DOMAINS",
                                   "synth_color,synth_gray,synth_wild", "DATASET.TARGET_DOMAINS", "synth_lab"))
    new = sorted(set(arrays()) - set(first))
    assert len(new) == 1 and "synth_lab-test" in new[0], new
    for dm in (fear, happiness, swapped):
        assert isinstance(dm.train_loader_x.images, CacheView)  # three sources, unseen class left out
        for loader in (dm.train_loader_x, dm.train_loader_u, dm.test_loader):
            index = np.arange(len(loader.dataset))
            rows = np.empty((len(index), 32, 32, 3), dtype=np.uint8)
            take_rows(loader.images, index, rows)
            for i in range(len(index)):
                assert np.array_equal(rows[i], decode_image(loader.dataset[i], 32)), loader.dataset[i].impath
