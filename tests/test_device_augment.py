"""The device versions of colorjitter, random_affine and random_erasing: torchvision's result on fixed
parameters, torchvision's parameter ranges and probabilities, the same batch again from a saved
generator state, one compiled graph equal to eager; and the same losses and metrics through the PIL
path and the cache when nothing random is chosen."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from conftest import make_cfg
from engine.config import extend_cfg, get_cfg_default, merge_from_list
from engine.data.fast import FastPathSettings
from engine.data.fast.augment import (LUMA_WEIGHTS, DeviceAugment, adjust_hue, affine_inverse_theta, affine_params,
                                      color_jitter, crop_resize_flip, erase, erasing_params, fill_coverage,
                                      resized_crop_params, warp)
from engine.data.transforms import build_transform
from engine.utils.errors import UserError

LUMA = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
EVERY_TRANSFORM = ["random_resized_crop", "random_flip", "colorjitter", "randomgrayscale", "random_affine",
                   "gaussian_noise", "normalize", "random_erasing"]
# DUML's and LA-CMFER's training transform: the whole image resized, no crop
DUML = ["random_flip", "colorjitter", "randomgrayscale", "random_affine", "normalize"]
# OS-FER's two stages' transforms at once (flip or noise, noise with probability 1/2, erasing)
OSFER = ["flip_or_noise", "gaussian_noise", "normalize", "random_erasing"]
PIPELINES = pytest.mark.parametrize("names, opts", [(EVERY_TRANSFORM, ()), (DUML, ()), (OSFER, ("INPUT.GN_P", "0.5"))],
                                    ids=["every_transform", "duml", "osfer"])


def _cfg(*opts: str):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_list(cfg, ["INPUT.SIZE", "(32, 32)", *opts])
    return cfg


def _transforms(names) -> list[str]:
    return ["INPUT.TRANSFORMS", "[" + ",".join(f"'{n}'" for n in names) + "]"]


def _smooth(height: int = 32, width: int = 32) -> np.ndarray:
    """An image whose pixels change by a few grey levels per pixel (interpolation errors stay small)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 6, yy * 7, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)


AFFINES = [(10.0, 1.0, -2.0, 0.95), (-15.0, 2.0, 1.0, 1.05), (3.0, 0.0, 0.0, 0.9), (0.0, -1.0, 2.0, 1.0)]


def _affine_theta(angle, tx, ty, scale, size):
    return affine_inverse_theta(*(torch.tensor([v]) for v in (angle, tx, ty, scale)), size)


def _coverage(theta, size):
    return fill_coverage(F.affine_grid(theta, [theta.shape[0], 1, *size], align_corners=False), size)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_affine_matches_torchvision_affine_on_fixed_parameters(size):
    """Given the parameters, the device affine is torchvision's tensor ``affine`` (bilinear, fill 0):
    within 0.005 grey levels wherever the output is all image or all fill (float32 coordinates on a noise
    image whose neighbours differ by up to 255); its fill share is the all-ones channel torchvision
    samples for the fill. Non-square images check the aspect terms."""
    img = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    for angle, tx, ty, scale in AFFINES:
        theta = _affine_theta(angle, tx, ty, scale, size)
        coverage = _coverage(theta, size)[0]
        ours = warp(img, theta, size)[0] * coverage
        args = (angle, [int(tx), int(ty)], scale, [0.0, 0.0])
        expected = TF.affine(img[0], *args, interpolation=InterpolationMode.BILINEAR, fill=0)
        share = TF.affine(torch.ones(1, *size), *args, interpolation=InterpolationMode.BILINEAR)  # zero padding
        torch.testing.assert_close(coverage, share, atol=1e-5, rtol=0)
        solid = ((coverage == 0) | (coverage == 1)).expand_as(ours)
        assert solid.float().mean() > 0.8  # the comparison covers most of the image
        assert (ours - expected)[solid].abs().max() < 5e-3


def test_affine_geometry_is_the_pil_paths():
    """Against the PIL path's own call (PIL image, nearest): same centre, direction and translation,
    within the half pixel that nearest sampling moves a point (this image changes by at most 7 grey
    levels per pixel)."""
    pixels = _smooth()
    img = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    for angle, tx, ty, scale in AFFINES:
        theta = _affine_theta(angle, tx, ty, scale, (32, 32))
        coverage = _coverage(theta, (32, 32))[0, 0].numpy()
        ours = (warp(img, theta, (32, 32))[0].permute(1, 2, 0).numpy()) * coverage[..., None]
        pil = np.asarray(TF.affine(Image.fromarray(pixels), angle, [int(tx), int(ty)], scale, [0.0, 0.0], fill=0),
                         dtype=float)
        inside = coverage == 1
        error = np.abs(ours - pil)[inside]
        assert error.mean() < 2.0 and error.max() < 4.0, (angle, error.mean(), error.max())


def _set_affine(params, u_angle, u_tx, u_ty, u_scale):
    """Hand-set affine draws; returns torchvision's parameters for them (32 px, the default ranges)."""
    params.update(u_angle=torch.tensor(u_angle), u_tx=torch.tensor(u_tx), u_ty=torch.tensor(u_ty),
                  u_scale=torch.tensor(u_scale))
    return [(15.0 * (2 * a - 1), [round(1.6 * (2 * x - 1)), round(1.6 * (2 * y - 1))], 0.9 + 0.15 * s)
            for a, x, y, s in zip(u_angle, u_tx, u_ty, u_scale)]


def _expected_affine(image, angle, shift, scale):
    """torchvision's tensor affine (bilinear, fill 0) and the pixels where the output is all image."""
    expected = TF.affine(image, angle, shift, scale, [0.0, 0.0], interpolation=InterpolationMode.BILINEAR, fill=0)
    inside = _coverage(_affine_theta(angle, *shift, scale, image.shape[-2:]), image.shape[-2:])[0] == 1
    return expected, inside.expand_as(expected)


def test_affine_is_folded_into_the_crop_and_the_flip():
    """Through apply with hand-set draws: one resampling for crop, flip and affine gives what resizing
    the crop, flipping, then torchvision's affine give. On a linear image bilinear resampling is exact,
    so the two agree to float error wherever the affine's output is all image."""
    yy, xx = np.mgrid[0:48, 0:48]
    linear = torch.from_numpy(np.stack([2 * xx + yy, 3 * yy, xx + yy + 10], -1).astype(np.uint8))
    images = linear.expand(2, 48, 48, 3).contiguous()
    augment = DeviceAugment((32, 32), train=True, random_resized_crop=True, flip=True,
                            affine=(15.0, (0.05, 0.05), (0.9, 1.05)))
    params = augment.draw(images, torch.Generator().manual_seed(0))
    params.update(flip_u=torch.tensor([0.2, 0.7]), u_area=torch.full((2, 10), 0.45),
                  u_ratio=torch.full((2, 10), 0.5), u_top=torch.tensor([0.5, 0.2]), u_left=torch.tensor([0.5, 0.9]))
    affines = _set_affine(params, [0.8, 0.1], [0.9, 0.5], [0.3, 0.5], [0.5, 0.0])
    out = augment.apply(images, params) * 255
    box = resized_crop_params(params["u_area"], params["u_ratio"], params["u_top"], params["u_left"], height=48,
                              width=48, scale=(0.08, 1.0))
    assert (box[0] >= 1).all() and (box[1] >= 1).all() and (box[0] + box[2] <= 47).all()  # inside, with a margin
    resized = crop_resize_flip(images.permute(0, 3, 1, 2).float(), *box, torch.tensor([True, False]), (32, 32))
    for i in range(2):
        expected, inside = _expected_affine(resized[i], *affines[i])
        assert (out[i] - expected)[inside].abs().max() < 1e-3
    # Without a crop (DUML's transform) the whole image is resized (not at all here), flipped and transformed
    augment = DeviceAugment((32, 32), train=True, flip=True, affine=(15.0, (0.05, 0.05), (0.9, 1.05)))
    images = torch.from_numpy(_smooth()).expand(2, 32, 32, 3).contiguous()
    params = augment.draw(images, torch.Generator().manual_seed(0))
    params["flip_u"] = torch.tensor([0.2, 0.7])
    affines = _set_affine(params, [0.8, 0.1], [0.9, 0.5], [0.3, 0.5], [0.5, 0.0])
    out = augment.apply(images, params) * 255
    float_images = images.permute(0, 3, 1, 2).float()
    for i, source in enumerate([TF.hflip(float_images[0]), float_images[1]]):
        expected, solid = _expected_affine(source, *affines[i])
        assert (out[i] - expected)[solid].abs().max() < 1e-3


def test_color_jitter_matches_torchvision_in_each_images_own_order():
    """Given factors and an order per image, the jitter is torchvision's tensor functions applied in
    that order; the tolerance covers luma's red weight (PIL's 0.299, torchvision's 0.2989)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 20, 20, generator=generator)
    functions = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for adjustments in [(0, 1, 2, 3), (0, 1, 2), (1, 3), (2,)]:
        n = len(adjustments)
        factors = 0.5 + torch.rand(8, n, generator=generator)
        if 3 in adjustments:
            factors[:, adjustments.index(3)] = torch.linspace(-0.5, 0.5, 8)
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(8)])
        ours = color_jitter(x, adjustments, factors, order, LUMA)
        expected = []
        for i in range(8):
            y = x[i]
            for j in order[i].tolist():
                y = functions[adjustments[j]](y, float(factors[i, j]))
            expected.append(y)
        torch.testing.assert_close(ours, torch.stack(expected), atol=1e-4, rtol=0)
    # The order matters (clamping): brightness then contrast differs from contrast then brightness
    bright_first = color_jitter(x, (0, 1), torch.tensor([[1.8, 0.3]] * 8), torch.tensor([[0, 1]] * 8), LUMA)
    contrast_first = color_jitter(x, (0, 1), torch.tensor([[1.8, 0.3]] * 8), torch.tensor([[1, 0]] * 8), LUMA)
    assert (bright_first - contrast_first).abs().max() > 0.05


def test_hue_matches_torchvision_on_grey_tied_and_saturated_pixels():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 16, 16, generator=generator)
    x[:, :, 0] = x[:, :1, 0]  # a grey row
    x[:, 1, 1] = x[:, 0, 1]  # red and green tied
    x[:, 2, 2] = x[:, 1, 2]  # green and blue tied
    x[:, :, 3] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1)  # pure red
    shifts = torch.tensor([-0.5, -0.2, 0.0, 0.13, 0.5])
    expected = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(5)])
    torch.testing.assert_close(adjust_hue(x, shifts), expected, atol=1e-5, rtol=0)


def test_jitter_draws_follow_torchvision_ranges_and_the_order_is_uniform():
    n = 6000
    augment = DeviceAugment((8, 8), train=True, jitter=(0.2, 0.4, 1.5, 0.1))
    params = augment.draw(torch.zeros(n, 8, 8, 3, dtype=torch.uint8), torch.Generator().manual_seed(0))
    factors = params["jitter_low"] + (params["jitter_high"] - params["jitter_low"]) * params["jitter_u"]
    # brightness in [0.8, 1.2], contrast [0.6, 1.4], saturation [max(0, -0.5), 2.5], hue [-0.1, 0.1]
    for j, (low, high) in enumerate([(0.8, 1.2), (0.6, 1.4), (0.0, 2.5), (-0.1, 0.1)]):
        assert low <= factors[:, j].min() < low + 0.01 and high - 0.01 < factors[:, j].max() <= high
    order = params["jitter_rank"].argsort(dim=1)
    assert (order.sort(dim=1).values == torch.arange(4)).all()  # a permutation per image
    first = torch.bincount(order[:, 0], minlength=4).float() / n
    assert (first - 0.25).abs().max() < 0.03
    # A strength of 0 leaves the adjustment out, as torchvision does (DUML's jitter has no hue)
    assert DeviceAugment((8, 8), train=True, jitter=(0.2, 0.2, 0.2, 0.0)).jitter_adjustments == (0, 1, 2)


def test_affine_draws_follow_torchvision_get_params():
    n, size = 20000, (32, 32)
    u = [torch.rand(n, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    angle, tx, ty, scale = affine_params(*u, degrees=15.0, translate=(0.05, 0.1), scale=(0.9, 1.05), size=size)
    assert -15 <= angle.min() < -14.9 and 14.9 < angle.max() <= 15 and abs(angle.mean()) < 0.3
    assert 0.9 <= scale.min() and scale.max() <= 1.05
    assert torch.equal(tx, tx.round()) and torch.equal(ty, ty.round())
    torch.manual_seed(0)
    reference = [T.RandomAffine.get_params([-15.0, 15.0], [0.05, 0.1], [0.9, 1.05], None, [32, 32])
                 for _ in range(5000)]
    for ours, theirs in ((tx, [r[1][0] for r in reference]), (ty, [r[1][1] for r in reference])):
        values = sorted(set(theirs))
        assert set(ours.long().tolist()) == set(values)  # whole pixels, the same extremes (+-2 and +-3)
        for v in values:
            assert abs((ours == v).float().mean().item() - theirs.count(v) / len(theirs)) < 0.03


def test_erasing_matches_torchvision_erase_and_get_params():
    x = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    boxes = [(2, 3, 5, 7), (0, 0, 19, 23), (10, 20, 10, 4)]
    top, left, h, w = (torch.tensor(v) for v in zip(*boxes))
    ours = erase(x, top, left, h, w, torch.tensor([True, True, False]))
    for i, box in enumerate(boxes[:2]):
        assert torch.equal(ours[i], TF.erase(x[i], *box, v=torch.zeros(1)))
    assert torch.equal(ours[2], x[2])  # not chosen
    # Parameters: torchvision's ranges and mean area; whole pixels, strictly inside the image
    n, height, width, scale = 20000, 32, 32, (0.02, 0.33)
    draws = [torch.rand(n, *shape, generator=torch.Generator().manual_seed(k))
             for k, shape in enumerate([(10,), (10,), (), ()])]
    top, left, h, w, found = erasing_params(*draws, height=height, width=width, scale=scale)
    assert found.float().mean() > 0.999
    assert (h < height).all() and (w < width).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = (h * w).double() / (height * width)
    slack = (height + 0.25) / (height * width)  # each side rounded by up to half a pixel
    assert area.min() >= scale[0] - slack and area.max() <= scale[1] + slack
    assert (h.double() / w).log().abs().max() <= math.log(3.3) + 0.3
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    reference = np.array([T.RandomErasing.get_params(image, scale, (0.3, 3.3), [0.0])[2:4] for _ in range(5000)])
    assert abs(area.mean().item() - (reference[:, 0] * reference[:, 1]).mean() / (height * width)) < 0.01
    # No box fits: the image is left as it is, as torchvision does
    *_, found = erasing_params(*draws, height=height, width=width, scale=(0.99, 1.0))
    assert not found.any()


def test_erasing_and_grayscale_happen_with_their_probabilities():
    n = 4000
    white = torch.full((n, 16, 16, 3), 255, dtype=torch.uint8)
    out = DeviceAugment((16, 16), train=True, erasing=(0.3, (0.02, 0.33)))(white, torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).any(1).float().mean().item()
    assert 0.27 < erased < 0.33
    colour = torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    augment = DeviceAugment((16, 16), train=True, grayscale_p=0.2, jitter=(0.2, 0.2, 0.2, 0.0),
                            affine=(15.0, (0.05, 0.05), (0.9, 1.05)))
    out = augment(colour, torch.Generator().manual_seed(2))
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1).float().mean().item()
    assert 0.17 < grey < 0.23
    # the affine's fill is black after the colour transforms, as on the PIL path: a 15-degree turn with
    # scale below 1 leaves corners uncovered in most images
    corners = out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all(1).any(1).float().mean() > 0.5


def _flip_and_noise_shares(images: torch.Tensor) -> tuple[float, float, float, float]:
    """For [0, 1] images of a half-grey (0.2 | 0.8) square: the share flipped (the bright half on the left), the
    share with noise (the dark half not flat), the share with both, and the noise's std where it was added."""
    half = images.shape[-1] // 2
    left, right = images[..., :half], images[..., half:]
    flipped = left.mean(dim=(1, 2, 3)) > right.mean(dim=(1, 2, 3))
    dark = torch.where(flipped[:, None, None, None], right, left)
    spread = dark.flatten(1).std(dim=1)
    noisy = spread > 1e-3
    return (flipped.float().mean().item(), noisy.float().mean().item(), (flipped & noisy).float().mean().item(),
            spread[noisy].mean().item())


def _half_grey(n: int, side: int = 16) -> torch.Tensor:
    image = torch.full((n, side, side, 3), 51, dtype=torch.uint8)  # 0.2
    image[:, :, side // 2:] = 204  # 0.8
    return image


def test_noise_and_flip_or_noise_happen_with_their_probabilities_on_both_paths():
    """gaussian_noise with INPUT.GN_P and flip_or_noise (with probability p a flip or the noise, never both)
    draw the same parameters on the device as on the PIL path: shares p and p / 2, the noise's std GN_STD."""
    n, std = 3000, 0.03
    device = DeviceAugment((16, 16), train=True, noise=(0.0, std, 0.3))(_half_grey(n), torch.Generator().manual_seed(0))
    flipped, noisy, _, spread = _flip_and_noise_shares(device)
    assert flipped == 0 and 0.27 < noisy < 0.33 and spread == pytest.approx(std, rel=0.05)
    device = DeviceAugment((16, 16), train=True, flip_or_noise=(0.6, 0.0, std))(_half_grey(n),
                                                                                torch.Generator().manual_seed(1))
    flipped, noisy, both, spread = _flip_and_noise_shares(device)
    assert 0.27 < flipped < 0.33 and 0.27 < noisy < 0.33 and both == 0 and spread == pytest.approx(std, rel=0.05)

    pil_cfg = _cfg(*_transforms(["flip_or_noise"]), "INPUT.SIZE", "(16, 16)", "INPUT.FLIP_OR_NOISE_P", "0.6",
                   "INPUT.GN_STD", str(std))
    transform = build_transform(pil_cfg, is_train=True)
    image = Image.fromarray(_half_grey(1)[0].numpy())
    torch.manual_seed(2)
    pil = torch.stack([transform(image) for _ in range(n)])
    flipped, noisy, both, spread = _flip_and_noise_shares(pil)
    assert 0.27 < flipped < 0.33 and 0.27 < noisy < 0.33 and both == 0 and spread == pytest.approx(std, rel=0.05)
    transform = build_transform(_cfg(*_transforms(["gaussian_noise"]), "INPUT.SIZE", "(16, 16)", "INPUT.GN_P", "0.3",
                                     "INPUT.GN_STD", str(std)), is_train=True)
    pil = torch.stack([transform(image) for _ in range(n)])
    flipped, noisy, _, spread = _flip_and_noise_shares(pil)
    assert flipped == 0 and 0.27 < noisy < 0.33 and spread == pytest.approx(std, rel=0.05)


@PIPELINES
def test_a_saved_generator_state_replays_the_same_batch(names, opts):
    augment = FastPathSettings.from_cfg(_cfg(*_transforms(names), *opts)).train_augment
    images = torch.randint(0, 256, (16, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    first, second = augment(images, generator), augment(images, generator)
    assert not torch.equal(first, second)
    generator.set_state(state)
    assert torch.equal(augment(images, generator), first) and torch.equal(augment(images, generator), second)


@PIPELINES
def test_compiled_apply_with_the_new_transforms_is_one_graph_equal_to_eager(compile_with, names, opts):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    counters = compile_with("inductor" if device == "cuda" else "aot_eager")
    eager = FastPathSettings.from_cfg(_cfg(*_transforms(names), *opts)).train_augment
    comp = FastPathSettings.from_cfg(_cfg(*_transforms(names), *opts, "MODEL.COMPILE", "True")).train_augment
    assert hasattr(comp.apply, "_torchdynamo_orig_callable")
    images = torch.randint(0, 256, (48, 40, 40, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    gen_eager, gen_comp = torch.Generator(device).manual_seed(4), torch.Generator(device).manual_seed(4)
    for _ in range(2):
        expected, got = eager(images, gen_eager), comp(images, gen_comp)
        assert got.shape == expected.shape == (48, 3, 32, 32)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("opts, message", [
    (("INPUT.RE_P", "1.5"), r"INPUT.RE_P must be in \[0, 1\], got 1.5"),
    (("INPUT.RE_SCALE", "(0.3, 0.1)"), r"INPUT.RE_SCALE must be \(low, high\)"),
    (("INPUT.COLORJITTER_H", "0.7"), r"INPUT.COLORJITTER_H must be in \[0, 0.5\]"),
    (("INPUT.COLORJITTER_B", "-0.1"), r"INPUT.COLORJITTER_B must be >= 0"),
    (("INPUT.AFFINE_TRANSLATE", "(0.05, 1.5)"),
     r"INPUT.AFFINE_TRANSLATE must be 2 values, each in \[0, 1\], got \(0.05, 1.5\)"),
    (("INPUT.AFFINE_SCALE", "(1.1, 0.9)"), r"INPUT.AFFINE_SCALE must be \(low, high\)"),
])
def test_out_of_range_augmentation_parameters_are_a_user_error_on_both_paths(opts, message):
    cfg = _cfg(*_transforms(EVERY_TRANSFORM[:-1] + ["random_erasing"]), *opts)
    with pytest.raises(UserError, match=message):
        build_transform(cfg, is_train=True)
    with pytest.raises(UserError, match=message):
        FastPathSettings.from_cfg(cfg)


def _losses_and_metrics(root, out, *opts) -> tuple[list[dict], dict]:
    from engine.trainer import build_trainer

    cfg = make_cfg(root, out, *_transforms(["normalize"]), "OPTIM.MAX_EPOCH", "1", "TRAIN.PRINT_FREQ", "1",
                   "SEED", "0", "DATALOADER.TRAIN_X.SAMPLER", "RandomDomainSampler", *opts, trainer="PromptEmo")
    build_trainer(cfg).train()
    records = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    steps = [{k: v for k, v in r.items() if k.startswith("train/loss")} for r in records if "train/loss" in r]
    return steps, json.load(open(f"{out}/results.json"))["metrics"]


def test_without_random_augmentation_the_cache_trains_and_evaluates_as_the_pil_path(synthetic_root, tmp_path):
    """INPUT.TRANSFORMS ['normalize']: the same pixels, batches and order on both paths, so the same
    losses at every step (first and later) and the same evaluation metrics, to float tolerance."""
    pil_steps, pil_metrics = _losses_and_metrics(synthetic_root, str(tmp_path / "pil"))
    cache_steps, cache_metrics = _losses_and_metrics(synthetic_root, str(tmp_path / "cache"),
                                                     "DATALOADER.CACHE.ENABLED", "True",
                                                     "DATALOADER.CACHE.DIR", str(tmp_path / "decoded"))
    assert len(pil_steps) == len(cache_steps) > 1 and set(pil_steps[0]) == set(cache_steps[0]) and pil_steps[0]
    for pil, cache in zip(pil_steps, cache_steps):
        for name in pil:
            assert cache[name] == pytest.approx(pil[name], rel=1e-5, abs=1e-6), name
    assert set(pil_metrics) == set(cache_metrics)
    for name, value in pil_metrics.items():
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            assert cache_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
