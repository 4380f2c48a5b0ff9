"""Augmentation on the training device, for uint8 batches gathered from the decoded-image cache.

:class:`DeviceAugment` turns a ``(B, H, W, 3)`` uint8 batch (the cached squares, ``H = W =
DATALOADER.CACHE.SIZE``) into a normalised ``(B, 3, h, w)`` float32 batch at ``INPUT.SIZE`` on the
batch's device, with every random draw taken from one ``torch.Generator`` on that device. Nothing
in it reads a value back to the host, so it never synchronises with the device.

Supported ``INPUT.TRANSFORMS`` (:data:`engine.data.fast.settings.SUPPORTED_TRANSFORMS`; anything else is a
:class:`UserError` when the cache is on):

- ``random_resized_crop``: torchvision's ``RandomResizedCrop.get_params``, vectorised over the
  batch: ten attempts per image of an area uniform in ``INPUT.RRCROP_SCALE`` times the image area
  and an aspect ratio log-uniform in (3/4, 4/3), rounded to whole pixels; the first attempt that
  fits is used, else torchvision's centre-crop fallback; the offset is uniform over the valid
  positions. The box is resized to ``INPUT.SIZE``.
- ``random_flip``: horizontal flip with probability 0.5.
- ``center_crop``: accepted; after a resize to ``INPUT.SIZE`` it is the identity, as on the PIL path.
- ``colorjitter``: torchvision's ``ColorJitter`` with strengths ``INPUT.COLORJITTER_B/C/S/H``:
  brightness, contrast and saturation factors uniform in ``[max(0, 1 - v), 1 + v]``, hue shift uniform
  in ``[-h, h]`` turns, an adjustment of strength 0 left out, the others in a random order drawn per
  image (as ``ColorJitter.get_params``' permutation). Brightness scales the image, contrast blends it
  with the mean of its luma, saturation with its luma, hue turns the HSV hue; each result clamped
  to [0, 1], as torchvision's tensor functions do.
- ``randomgrayscale``: with probability ``INPUT.RGS_P``, ITU-R 601 luma (PIL's ``convert("L")``
  weights) copied to the three channels.
- ``random_affine``: torchvision's ``RandomAffine.get_params``: rotation uniform in
  ``+-INPUT.AFFINE_DEGREES`` (counter-clockwise on screen for a positive angle, about the image
  centre), translation uniform in ``+-INPUT.AFFINE_TRANSLATE`` of the width and of the height rounded
  to whole pixels (halves to even, as Python's ``round``), scale uniform in ``INPUT.AFFINE_SCALE``;
  fill 0 (black) where the transformed image does not cover the output. It is applied after the
  colour transforms, as on the PIL path, and folded into the crop's resampling (one ``grid_sample``).
- ``gaussian_noise``: with probability ``INPUT.GN_P``, ``N(INPUT.GN_MEAN, INPUT.GN_STD)`` added to the [0, 1]
  image, clamped to [0, 1].
- ``flip_or_noise`` (OS-FER's and EAC's basic augmentation): with probability ``INPUT.FLIP_OR_NOISE_P``,
  either a horizontal flip (folded into the geometry, with ``random_flip``'s if both are chosen) or the noise
  of ``gaussian_noise`` (added where ``gaussian_noise`` adds its own), each with even chance.
- ``normalize``: ``(x - INPUT.PIXEL_MEAN) / INPUT.PIXEL_STD`` on the [0, 1] image.
- ``random_erasing``: torchvision's ``RandomErasing(p=INPUT.RE_P, scale=INPUT.RE_SCALE, ratio=(0.3,
  3.3), value=0)`` after ``normalize``: ten attempts per image of an area uniform in ``INPUT.RE_SCALE``
  times the image area and an aspect ratio log-uniform in (0.3, 3.3), rounded to whole pixels; the
  first box smaller than the image on both sides is set to 0 with probability ``INPUT.RE_P``, and an
  image without such a box is left as it is.

Without ``random_resized_crop`` a training image is resized to ``INPUT.SIZE`` whole (as the PIL
path's ``Resize(INPUT.SIZE)``). Test mode (and ``img0``) is the PIL test transform: resize the short
side to ``max(INPUT.SIZE)``, centre-crop ``INPUT.SIZE``, then ``normalize`` if chosen; when the
cache size is ``max(INPUT.SIZE)`` (the default) both steps are exact integer crops, so test pixels
equal the PIL path's bit for bit before normalisation.

Where training differs from the PIL path (same augmentations, parameters and ranges):

1. The crop is taken from the cached centre square, not from the whole decoded image: for a
   non-square image the parts outside the centre square can never be seen, and the crop's area
   range is relative to the square. FER face crops are (nearly) square, so this rarely matters.
2. The crop is resized by bilinear ``grid_sample`` (the flip folded into the same affine map), not
   PIL's antialiased ``INPUT.INTERPOLATION`` (bicubic by default): slightly softer when a crop is
   enlarged, and without antialiasing when a crop is larger than ``INPUT.SIZE``, which can only
   happen when ``DATALOADER.CACHE.SIZE`` exceeds ``max(INPUT.SIZE)``. Samples near the box edge
   blend up to half a source pixel beyond it (PIL resamples the cropped box alone); samples beyond
   the image edge repeat the border pixel.
3. Intermediate results stay float; PIL rounds to uint8 after the resize and after grayscale. Noise is
   added at ``INPUT.SIZE`` after the resize, as on the PIL path (OS-FER's original adds it to the decoded
   image before resizing it, and rounds down to uint8 after).
4. The random stream differs (one generator on the device, not torch's global CPU generator), so
   individual draws differ from the PIL path's; their distributions do not.
5. The image is decoded and resized to the cache size once (PIL, ``INPUT.INTERPOLATION``), so an
   image is resampled twice when its crop is resized: once into the cache, once to ``INPUT.SIZE``.
6. ``random_affine`` samples bilinearly (torchvision's default, which the PIL path keeps, is nearest)
   in the same ``grid_sample`` as the crop, so the image is resampled once, not twice. The fill blends
   into the image over one pixel at the transformed image's edges, by the share of the bilinear
   sample that falls inside it (torchvision's tensor ``affine`` uses the same share, but also pads the
   image itself with zeros, which darkens that one-pixel edge twice).
7. ``colorjitter`` works in float on the [0, 1] image, as torchvision's tensor functions do; on the PIL
   path, PIL rounds to uint8 after each adjustment, takes contrast's mean as a whole grey level and
   turns the hue in PIL's 8-bit HSV. Luma uses PIL's weights (0.299, 0.587, 0.114) where torchvision's
   tensor functions use 0.2989 for red. With ``random_affine``, contrast's mean is that of the
   transformed image before the fill (its border pixels repeated where the fill will be), not of the
   image before the transform, because the colour work follows the single resampling.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from engine.data.transforms import ERASE_RATIO

# torchvision's RandomResizedCrop defaults, which the PIL path keeps
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
# PIL's convert("L") weights (ITU-R 601-2 luma), which RandomGrayscale uses
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# torchvision's RandomErasing attempts per image (its ratio is the PIL path's ERASE_RATIO)
ERASE_ATTEMPTS = 10
# ColorJitter's adjustments, in the order of torchvision's ColorJitter.get_params (its fn_idx)
JITTER_ADJUSTMENTS = ("brightness", "contrast", "saturation", "hue")


def sample_resized_crop_params(batch: int, height: int, width: int, scale: tuple[float, float],
                               ratio: tuple[float, float] = RRC_RATIO, generator: torch.Generator | None = None,
                               device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """``RandomResizedCrop.get_params`` for ``batch`` images at once: ``(top, left, h, w)``, each a
    ``(batch,)`` int64 tensor of pixels on ``device``.

    All ten attempts are drawn for every image and the first valid one is kept, which gives the same
    distribution as torchvision's loop that stops at the first valid attempt.
    """
    draws = draw_resized_crop_uniforms(batch, generator, device)
    return resized_crop_params(*draws, height=height, width=width, scale=scale, ratio=ratio)


def draw_resized_crop_uniforms(batch: int, generator: torch.Generator | None = None,
                               device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The uniform draws behind :func:`resized_crop_params`: ``(u_area, u_ratio)`` ``(batch, 10)``
    (one per attempt), then ``(u_top, u_left)`` ``(batch,)``, in that order from ``generator``."""
    u_area = torch.rand(batch, RRC_ATTEMPTS, generator=generator, device=device)
    u_ratio = torch.rand(batch, RRC_ATTEMPTS, generator=generator, device=device)
    u_top = torch.rand(batch, generator=generator, device=device)
    u_left = torch.rand(batch, generator=generator, device=device)
    return u_area, u_ratio, u_top, u_left


def resized_crop_params(u_area: torch.Tensor, u_ratio: torch.Tensor, u_top: torch.Tensor, u_left: torch.Tensor, *,
                        height: int, width: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = RRC_RATIO) -> tuple[torch.Tensor, ...]:
    """``(top, left, h, w)`` of :func:`sample_resized_crop_params` from its uniform draws (a pure
    function of them, so that it can be compiled; the draws stay outside, see :class:`DeviceAugment`)."""
    w, h = _attempt_sides(u_area, u_ratio, height * width, scale, ratio)
    found, (h, w) = _first_fit((w > 0) & (w <= width) & (h > 0) & (h <= height), h, w)
    fb_top, fb_left, fb_h, fb_w = _center_crop_fallback(height, width, ratio)
    h, w = torch.where(found, h, fb_h), torch.where(found, w, fb_w)
    top = torch.where(found, _uniform_offset(u_top, height, h), fb_top)
    left = torch.where(found, _uniform_offset(u_left, width, w), fb_left)
    return top, left, h, w


def _attempt_sides(u_area: torch.Tensor, u_ratio: torch.Tensor, area: int, scale: tuple[float, float],
                   ratio: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each attempt's ``round(sqrt(t r))`` and ``round(sqrt(t / r))`` for an area ``t`` uniform in ``scale``
    times ``area`` and an aspect ``r`` log-uniform in ``ratio``, from the uniform draws (torchvision's
    RandomResizedCrop and RandomErasing). In float64: torchvision computes these in Python floats, and the
    rounding to whole pixels is sensitive; torch.round, like Python's round, rounds halves to even."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = float(area) * (scale[0] + (scale[1] - scale[0]) * u_area.double())
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio.double())
    return torch.round(torch.sqrt(target * aspect)).long(), torch.round(torch.sqrt(target / aspect)).long()


def _first_fit(valid: torch.Tensor, *sides: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(found, [side of the first valid attempt...])`` per image, over ``(B, attempts)`` tensors; where no
    attempt is valid, ``found`` is False and the sides are the first attempt's."""
    first = valid.int().argmax(dim=1, keepdim=True)  # index of the first valid attempt (0 if none)
    return valid.any(dim=1), [side.gather(1, first).squeeze(1) for side in sides]


def _uniform_offset(u: torch.Tensor, size: int, extent: torch.Tensor) -> torch.Tensor:
    """An integer uniform in ``[0, size - extent]`` from a uniform draw (``torch.randint(0, size - extent + 1)``);
    the clamp guards float rounding at ``u -> 1``."""
    return torch.minimum((u.double() * (size - extent + 1)).long(), size - extent)


def _center_crop_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's fallback when no attempt fits: the largest centred box within ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor,
                     w: torch.Tensor, flip: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Resize each image's box ``(top, left, h, w)`` to ``out_size``, mirrored where ``flip``.

    ``images`` is ``(B, C, H, W)`` float. One affine map per image sends the output's pixel edges
    onto the box's pixel edges (PIL's geometry for ``img.crop(box).resize(out_size)``); a flip negates
    the map's x scale. Bilinear sampling, border pixels repeated outside the image.
    """
    return warp(images, crop_flip_theta(top, left, h, w, flip, images.shape[-2:]), out_size)


def crop_flip_theta(top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor, flip: torch.Tensor,
                    in_size: Sequence[int]) -> torch.Tensor:
    """The ``(B, 2, 3)`` map of :func:`crop_resize_flip` from output to input coordinates, both
    normalised as ``F.affine_grid`` with ``align_corners=False`` has them (-1 and 1 are the outer pixel
    edges), so that other maps can be composed with it before the one sampling."""
    in_h, in_w = int(in_size[0]), int(in_size[1])
    dtype = torch.float32
    sx = w.to(dtype) / in_w * torch.where(flip, -1.0, 1.0).to(dtype)
    sy = h.to(dtype) / in_h
    # box centre in normalised coordinates
    tx = (2 * left + w).to(dtype) / in_w - 1
    ty = (2 * top + h).to(dtype) / in_h - 1
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)


def warp(images: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """``images`` sampled bilinearly at ``theta``'s image of each output pixel centre (normalised
    coordinates), border pixels repeated outside the image."""
    return sample(images, F.affine_grid(theta.to(images.dtype), [images.shape[0], 1, *out_size], align_corners=False))


def sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``images`` sampled bilinearly at ``grid`` (B, h, w, 2) in normalised coordinates, border pixels
    repeated outside the image."""
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def scale_shift(points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``points`` (B, h, w, 2) mapped by a diagonal ``theta`` (B, 2, 3), such as :func:`crop_flip_theta`'s:
    two broadcast operations where a general map would be a matrix product per point."""
    return points * theta.diagonal(dim1=1, dim2=2)[:, None, None, :] + theta[:, None, None, :, 2]


def draw_affine_uniforms(batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The uniform draws behind :func:`affine_params`: ``(u_angle, u_tx, u_ty, u_scale)``, each
    ``(batch,)``, in that order from ``generator``."""
    return tuple(torch.rand(batch, generator=generator, device=device) for _ in range(4))


def affine_params(u_angle: torch.Tensor, u_tx: torch.Tensor, u_ty: torch.Tensor, u_scale: torch.Tensor, *,
                  degrees: float, translate: tuple[float, float], scale: tuple[float, float],
                  size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """``RandomAffine.get_params`` for each image from its uniform draws (no shear): ``(angle, tx, ty,
    scale)``, the angle in degrees, the translation in whole pixels of an image of ``size`` (h, w)."""
    height, width = size
    angle = degrees * (2 * u_angle - 1)
    # float64 and torch.round (halves to even), as torchvision rounds a Python float with round()
    max_dx, max_dy = translate[0] * width, translate[1] * height
    tx = torch.round(max_dx * (2 * u_tx.double() - 1)).float()
    ty = torch.round(max_dy * (2 * u_ty.double() - 1)).float()
    s = scale[0] + (scale[1] - scale[0]) * u_scale
    return angle, tx, ty, s


def affine_inverse_theta(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor,
                         size: tuple[int, int]) -> torch.Tensor:
    """The ``(B, 2, 3)`` map from each output pixel to the point of the untransformed image it shows,
    in normalised coordinates, for ``F.affine(img, angle, [tx, ty], scale, shear=0)`` on images of
    ``size`` (h, w): rotation and scale about the image centre, then translation by ``(tx, ty)`` pixels.

    In pixels about the centre the output point ``p`` shows ``q = R(p - t) / scale`` with ``R = [[cos,
    sin], [-sin, cos]]``, torchvision's inverse matrix; normalising x by ``w / 2`` and y by ``h / 2``
    scales the off-diagonal terms by the aspect ratio.
    """
    height, width = size
    rad = angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale
    row_x = [cos, sin * (height / width), -(cos * tx + sin * ty) * (2.0 / width)]
    row_y = [-sin * (width / height), cos, -(cos * ty - sin * tx) * (2.0 / height)]
    return torch.stack([torch.stack(row_x, 1), torch.stack(row_y, 1)], 1)


def fill_coverage(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, h, w)``: for each output pixel, the share of its bilinear sample that falls inside the
    ``size`` image, given where each output pixel lies in it (``points``, ``F.affine_grid``'s (B, h, w, 2)
    of :func:`affine_inverse_theta`): 1 inside, 0 beyond a pixel outside, a linear ramp between. The
    rest of the pixel is fill; torchvision's tensor ``affine`` computes the same share by sampling an
    all-ones channel with zero padding."""
    height, width = size
    # pixel-index coordinates (0 at the first pixel centre) of each sample, per axis
    ux = (points[..., 0] + 1) * (width / 2) - 0.5
    uy = (points[..., 1] + 1) * (height / 2) - 0.5
    cover_x = torch.minimum(ux + 1, width - ux).clamp(0, 1)
    cover_y = torch.minimum(uy + 1, height - uy).clamp(0, 1)
    return (cover_x * cover_y).unsqueeze(1)


def jitter_ranges(strengths: Sequence[float]) -> tuple[tuple[int, float, float], ...]:
    """``(adjustment, low, high)`` for each adjustment ColorJitter applies with strengths ``(brightness,
    contrast, saturation, hue)``: factors in ``[max(0, 1 - v), 1 + v]``, the hue shift in ``[-h, h]``;
    a strength of 0 leaves its adjustment out, as torchvision does."""
    ranges = []
    for index, value in enumerate(strengths):
        value = float(value)
        if value == 0:
            continue
        low, high = (-value, value) if JITTER_ADJUSTMENTS[index] == "hue" else (max(0.0, 1 - value), 1 + value)
        ranges.append((index, low, high))
    return tuple(ranges)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_brightness`` of each [0, 1] image in ``x`` (B, 3, H, W) by its ``factor`` (B,)."""
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """``F.adjust_contrast``: each image blended with the mean of its luma (``luma``: (1, 3, 1, 1) weights)."""
    mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """``F.adjust_saturation``: each image blended with its luma."""
    return _blend(x, (x * luma).sum(dim=1, keepdim=True), factor)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``F.adjust_hue``: each image's HSV hue turned by its ``shift`` (B,) in turns, saturation and value kept.

    Only the hue is computed (in sixths of a turn): with value ``v = max`` and chroma ``c = max - min``,
    channel ``n`` (5, 3, 1 for red, green, blue) of the HSV colour ``(h, c / v, v)`` is ``v - c *
    clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``, which needs no case per hue sector."""
    red, green, blue = x.unbind(1)
    high, low = x.amax(dim=1), x.amin(dim=1)
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # grey pixels: any hue, c = 0 keeps them
    # the largest channel decides the sector; ties go to red, then green, as in torchvision
    hue = torch.where(high == red, (green - blue) / safe,
                      torch.where(high == green, (blue - red) / safe + 2, (red - green) / safe + 4))
    hue = hue + 6 * shift.view(-1, 1, 1)
    offsets = torch.arange(5, 0, -2, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + hue.unsqueeze(1), 6)
    return high.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def color_jitter(x: torch.Tensor, adjustments: Sequence[int], factors: torch.Tensor, order: torch.Tensor,
                 luma: torch.Tensor) -> torch.Tensor:
    """ColorJitter of each [0, 1] image in ``x`` (B, 3, H, W) with its own order.

    ``adjustments`` are the indices (into :data:`JITTER_ADJUSTMENTS`) of the n adjustments applied,
    ``factors`` (B, n) their factors, ``order`` (B, n) a permutation per image: at step k image b gets
    adjustment ``adjustments[order[b, k]]``. Brightness, contrast and saturation are one blend
    ``clamp(f x + (1 - f) g)`` with ``g`` black, the mean luma or the luma, so a step picks each image's
    ``f`` and ``g`` and blends once. The hue, where enabled, is computed at every step (n times the
    work of a fixed order) and kept where an image's step is the hue. No data-dependent shapes.
    """
    slot = {JITTER_ADJUSTMENTS[index]: j for j, index in enumerate(adjustments)}
    for step in range(len(adjustments)):
        chosen = order[:, step]
        factor = factors.gather(1, chosen[:, None]).view(-1, 1, 1, 1)
        chosen = chosen.view(-1, 1, 1, 1)
        gray = (x * luma).sum(dim=1, keepdim=True)
        target = torch.where(chosen == slot["saturation"], gray, 0.0) if "saturation" in slot else 0.0 * gray
        if "contrast" in slot:
            target = torch.where(chosen == slot["contrast"], gray.mean(dim=(2, 3), keepdim=True), target)
        # brightness blends with black (a target of 0); lerp(g, x, f) = f x + (1 - f) g in one pass
        out = torch.lerp(target, x, factor).clamp_(0, 1)
        if "hue" in slot:
            out = torch.where(chosen == slot["hue"], adjust_hue(x, factor.view(-1)), out)
        x = out
    return x


def draw_erasing_uniforms(batch: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The uniform draws behind :func:`erasing_params`: ``u_apply`` ``(batch,)``, ``(u_area, u_ratio)``
    ``(batch, 10)`` (one per attempt), then ``(u_top, u_left)`` ``(batch,)``, in that order from ``generator``."""
    u_apply = torch.rand(batch, generator=generator, device=device)
    u_area = torch.rand(batch, ERASE_ATTEMPTS, generator=generator, device=device)
    u_ratio = torch.rand(batch, ERASE_ATTEMPTS, generator=generator, device=device)
    u_top = torch.rand(batch, generator=generator, device=device)
    u_left = torch.rand(batch, generator=generator, device=device)
    return u_apply, u_area, u_ratio, u_top, u_left


def erasing_params(u_area: torch.Tensor, u_ratio: torch.Tensor, u_top: torch.Tensor, u_left: torch.Tensor, *,
                   height: int, width: int, scale: tuple[float, float],
                   ratio: tuple[float, float] = ERASE_RATIO) -> tuple[torch.Tensor, ...]:
    """``RandomErasing.get_params`` for each image from its uniform draws: ``(top, left, h, w, found)``,
    ``(B,)`` int64 tensors and a bool one; ``found`` is False where no attempt fits (torchvision then
    leaves the image as it is). All ten attempts are computed and the first that fits is kept, the
    distribution of torchvision's loop that stops there."""
    # torchvision: h from area * aspect, w from area / aspect (RandomResizedCrop has them the other way round)
    h, w = _attempt_sides(u_area, u_ratio, height * width, scale, ratio)
    found, (h, w) = _first_fit((h < height) & (w < width), h, w)
    h, w = torch.where(found, h, 0), torch.where(found, w, 0)
    return _uniform_offset(u_top, height, h), _uniform_offset(u_left, width, w), h, w, found


def erase(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
          chosen: torch.Tensor) -> torch.Tensor:
    """``F.erase(img, top, left, h, w, v=0)`` of each image of ``x`` (B, C, H, W) where ``chosen`` (B,)."""
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    box = in_rows[:, None, :, None] & in_cols[:, None, None, :] & chosen[:, None, None, None]
    return x.masked_fill(box, 0.0)


def resize_short_side(images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """``T.Resize(size)`` on a ``(B, C, H, W)`` float batch in [0, 255]: short side to ``size``, long
    side ``int(size * long / short)`` as torchvision computes it, antialiased (torch's antialiased
    bicubic uses PIL's kernel), rounded and clipped to uint8 values as PIL's output is."""
    in_h, in_w = images.shape[-2:]
    if min(in_h, in_w) == size:
        return images
    if in_h <= in_w:
        out = (size, int(size * in_w / in_h))
    else:
        out = (int(size * in_h / in_w), size)
    return _resize(images, out, interpolation).round_().clamp_(0, 255)


def _resize(images: torch.Tensor, out_size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if interpolation == "nearest":
        return F.interpolate(images, size=out_size, mode="nearest")
    return F.interpolate(images, size=out_size, mode=interpolation, align_corners=False, antialias=True)


def center_crop(images: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """``T.CenterCrop(out_size)`` (same rounding of the offsets) for images at least that large."""
    in_h, in_w = images.shape[-2:]
    top = int(round((in_h - out_size[0]) / 2.0))
    left = int(round((in_w - out_size[1]) / 2.0))
    return images[..., top: top + out_size[0], left: left + out_size[1]]


class DeviceAugment:
    """The configured train or test transform for uint8 ``(B, H, W, 3)`` batches (see module docstring).

    Calling it returns a float32 ``(B, 3, h, w)`` batch on the input's device; ``generator`` (on that
    device) supplies every random draw, so saving and restoring its state replays the same batch.

    A call is two steps: :meth:`draw` takes every random number the batch needs from the generator
    (a handful of launches), and :meth:`apply`, a pure function of the batch and those draws, does the
    pixel work. :class:`~engine.data.fast.settings.FastPathSettings` compiles ``apply`` of the training
    transform with ``MODEL.COMPILE``: run eagerly it is about 80 small operations per batch with the
    default transforms and 140 with DUML's (colour jitter, greyscale, flip, affine), each a separate
    launch from the host. The draws stay eager because compiled code draws its own random numbers (it
    cannot take a ``torch.Generator``), which would break replaying a batch from the generator's state.
    """

    def __init__(self, out_size: tuple[int, int], train: bool, *, random_resized_crop: bool = False,
                 scale: tuple[float, float] = (0.08, 1.0), flip: bool = False, grayscale_p: float = 0.0,
                 noise: tuple[float, float] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, interpolation: str = "bicubic",
                 jitter: Sequence[float] | None = None,
                 affine: tuple[float, tuple[float, float], tuple[float, float]] | None = None,
                 erasing: tuple[float, tuple[float, float]] | None = None,
                 flip_or_noise: tuple[float, float, float] | None = None) -> None:
        """``noise``: ``gaussian_noise``'s (mean, std) or (mean, std, p), p 1 if not given; ``jitter``:
        ColorJitter's strengths (brightness, contrast, saturation, hue); ``affine``: RandomAffine's (degrees,
        translate, scale); ``erasing``: RandomErasing's (p, scale); ``flip_or_noise``: (p, mean, std);
        ``None`` leaves a transform out (all are training transforms)."""
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.train = train
        self.random_resized_crop = random_resized_crop
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip
        self.grayscale_p = float(grayscale_p)
        self.noise = None if noise is None else (float(noise[0]), float(noise[1]),
                                                 float(noise[2]) if len(noise) > 2 else 1.0)
        self.flip_or_noise = None if flip_or_noise is None else tuple(float(v) for v in flip_or_noise)
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.interpolation = interpolation
        ranges = jitter_ranges(jitter) if jitter is not None else ()
        self.jitter_adjustments = tuple(index for index, _, _ in ranges)
        self.jitter_low = tuple(low for _, low, _ in ranges)
        self.jitter_high = tuple(high for _, _, high in ranges)
        self.affine = None if affine is None else (
            float(affine[0]), (float(affine[1][0]), float(affine[1][1])), (float(affine[2][0]), float(affine[2][1])))
        self.erasing = None if erasing is None else (float(erasing[0]), (float(erasing[1][0]), float(erasing[1][1])))
        # Constants live on the device once: building them per batch would copy from pageable host
        # memory, which waits for the device.
        self._constants: dict[tuple, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (B, H, W, 3) batch, got {tuple(images.shape)} {images.dtype}")
        return self.apply(images, self.draw(images, generator))

    def draw(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every random number :meth:`apply` needs for ``images``, always in the same order from
        ``generator``, and the constants it uses, all on the batch's device."""
        batch, device = images.shape[0], images.device
        params: dict[str, torch.Tensor] = {}
        if self.train and self.flip:
            params["flip_u"] = torch.rand(batch, generator=generator, device=device)
        if self.train and self.random_resized_crop:
            names = ("u_area", "u_ratio", "u_top", "u_left")
            params.update(zip(names, draw_resized_crop_uniforms(batch, generator, device)))
        if self.train and self.jitter_adjustments:
            n = len(self.jitter_adjustments)
            params["jitter_u"] = torch.rand(batch, n, generator=generator, device=device)
            # ranks whose argsort is a uniform random permutation per image
            params["jitter_rank"] = torch.rand(batch, n, generator=generator, device=device)
            params["jitter_low"] = self._constant(self.jitter_low, device).view(1, n)
            params["jitter_high"] = self._constant(self.jitter_high, device).view(1, n)
        if self.train and self.grayscale_p > 0:
            params["gray_u"] = torch.rand(batch, generator=generator, device=device)
        if self.train and (self.grayscale_p > 0 or self.jitter_adjustments):
            params["luma"] = self._constant(LUMA_WEIGHTS, device)
        if self.train and self.affine is not None:
            names = ("u_angle", "u_tx", "u_ty", "u_scale")
            params.update(zip(names, draw_affine_uniforms(batch, generator, device)))
        if self.train and self.flip_or_noise is not None:
            params["flip_or_noise_u"] = torch.rand(batch, generator=generator, device=device)
        # a training batch leaves the geometry at out_size
        if self.train and self.noise is not None:
            if self.noise[2] < 1:
                params["noise_u"] = torch.rand(batch, generator=generator, device=device)
            params["noise"] = torch.randn((batch, 3, *self.out_size), generator=generator, device=device)
        if self.train and self.flip_or_noise is not None:
            params["flip_or_noise"] = torch.randn((batch, 3, *self.out_size), generator=generator, device=device)
        if self.train and self.erasing is not None:
            names = ("erase_u", "erase_area", "erase_ratio", "erase_top", "erase_left")
            params.update(zip(names, draw_erasing_uniforms(batch, generator, device)))
        if self.mean is not None:
            params["pixel_mean"] = self._constant(self.mean, device)
            params["pixel_std"] = self._constant(self.std, device)
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transform of ``images`` given :meth:`draw`'s ``params`` (no random draws of its own).

        The order is the PIL path's: geometry, colour jitter, grayscale, the affine's fill (the
        affine's resampling is folded into the geometry; the fill waits until after the colour
        transforms, which on the PIL path run before the affine and never see it), noise,
        normalisation, erasing."""
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
        coverage = None
        if self.train:
            x, coverage = self._geometry_train(x, params)
        else:
            x = self._geometry_test(x)
        x = x / 255.0
        if "jitter_u" in params:
            factors = params["jitter_low"] + (params["jitter_high"] - params["jitter_low"]) * params["jitter_u"]
            order = params["jitter_rank"].argsort(dim=1)
            x = color_jitter(x, self.jitter_adjustments, factors, order, params["luma"])
        if "gray_u" in params:
            gray = (x * params["luma"]).sum(dim=1, keepdim=True).expand_as(x)
            chosen = params["gray_u"] < self.grayscale_p
            x = torch.where(chosen[:, None, None, None], gray, x)
        if coverage is not None:
            x = x * coverage  # fill 0
        if "noise" in params:
            mean, std, p = self.noise
            noisy = (x + params["noise"] * std + mean).clamp(0, 1)
            x = torch.where((params["noise_u"] < p)[:, None, None, None], noisy, x) if "noise_u" in params else noisy
        if "flip_or_noise_u" in params:
            p, mean, std = self.flip_or_noise
            u = params["flip_or_noise_u"]
            noisy = (x + params["flip_or_noise"] * std + mean).clamp(0, 1)
            x = torch.where(((u >= p / 2) & (u < p))[:, None, None, None], noisy, x)  # the flip is u < p / 2
        if "pixel_mean" in params:
            x = (x - params["pixel_mean"]) / params["pixel_std"]
        if "erase_u" in params:
            p, scale = self.erasing
            top, left, h, w, found = erasing_params(params["erase_area"], params["erase_ratio"], params["erase_top"],
                                                    params["erase_left"], height=x.shape[-2], width=x.shape[-1],
                                                    scale=scale)
            x = erase(x, top, left, h, w, found & (params["erase_u"] < p))
        return x.contiguous()

    def _geometry_train(self, x: torch.Tensor,
                        params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cropped, resized, flipped and affinely transformed batch in [0, 255], and the affine's
        coverage (:func:`fill_coverage`; ``None`` without ``random_affine``)."""
        batch, _, in_h, in_w = x.shape
        if "flip_u" in params:
            flip = params["flip_u"] < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if "flip_or_noise_u" in params:  # flip_or_noise's flip, on top of random_flip's (PIL: one after the other)
            flip = flip ^ (params["flip_or_noise_u"] < self.flip_or_noise[0] / 2)
        points = coverage = None
        if "u_angle" in params:
            # where each output pixel lies in the cropped, resized and flipped image the affine transforms
            degrees, translate, scale = self.affine
            angle, tx, ty, s = affine_params(params["u_angle"], params["u_tx"], params["u_ty"], params["u_scale"],
                                             degrees=degrees, translate=translate, scale=scale, size=self.out_size)
            theta = affine_inverse_theta(angle, tx, ty, s, self.out_size)
            points = F.affine_grid(theta, [batch, 1, *self.out_size], align_corners=False)
            coverage = fill_coverage(points, self.out_size)
        if self.random_resized_crop:
            top, left, h, w = resized_crop_params(params["u_area"], params["u_ratio"], params["u_top"],
                                                  params["u_left"], height=in_h, width=in_w, scale=self.scale)
            theta = crop_flip_theta(top, left, h, w, flip, (in_h, in_w))
            if points is None:
                return warp(x, theta, self.out_size), None
            return sample(x, scale_shift(points, theta)), coverage  # one resampling for crop, flip and affine
        # Resize(INPUT.SIZE) of the whole image, as the PIL path does without random_resized_crop
        if (in_h, in_w) != self.out_size:
            x = _resize(x, self.out_size, self.interpolation)
        if points is not None:
            # the flip mirrors the points the affine reaches (their x changes sign)
            sign = torch.where(flip, -1.0, 1.0).to(points.dtype).view(-1, 1, 1, 1)
            return sample(x, torch.cat([points[..., :1] * sign, points[..., 1:]], dim=-1)), coverage
        flips = self.flip or self.flip_or_noise is not None
        return (torch.where(flip[:, None, None, None], x.flip(-1), x) if flips else x), None

    def _geometry_test(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_short_side(x, max(self.out_size), self.interpolation)
        return center_crop(x, self.out_size)

    def _constant(self, values: tuple[float, ...], device: torch.device) -> torch.Tensor:
        """``values`` as a float32 ``(1, C, 1, 1)`` tensor on ``device``, made once per device."""
        key = (values, device)
        if key not in self._constants:
            self._constants[key] = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device)
        return self._constants[key]

    def __repr__(self) -> str:
        parts = [f"out_size={self.out_size}", f"train={self.train}"]
        if self.train:
            jitter = dict(zip((JITTER_ADJUSTMENTS[i] for i in self.jitter_adjustments),
                              zip(self.jitter_low, self.jitter_high)))
            parts += [f"random_resized_crop={self.random_resized_crop}", f"scale={self.scale}", f"flip={self.flip}",
                      f"jitter={jitter or None}", f"grayscale_p={self.grayscale_p}", f"affine={self.affine}",
                      f"noise={self.noise}", f"flip_or_noise={self.flip_or_noise}", f"erasing={self.erasing}"]
        parts.append(f"normalize={self.mean is not None}")
        return f"{self.__class__.__name__}({', '.join(parts)})"
