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
- ``randomgrayscale``: with probability ``INPUT.RGS_P``, ITU-R 601 luma (PIL's ``convert("L")``
  weights) copied to the three channels.
- ``gaussian_noise``: ``N(INPUT.GN_MEAN, INPUT.GN_STD)`` added to the [0, 1] image, clamped to [0, 1].
- ``normalize``: ``(x - INPUT.PIXEL_MEAN) / INPUT.PIXEL_STD`` on the [0, 1] image.

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
3. Intermediate results stay float; PIL rounds to uint8 after the resize and after grayscale.
4. The random stream differs (one generator on the device, not torch's global CPU generator), so
   individual draws differ from the PIL path's; their distributions do not.
5. The image is decoded and resized to the cache size once (PIL, ``INPUT.INTERPOLATION``), so an
   image is resampled twice when its crop is resized: once into the cache, once to ``INPUT.SIZE``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# torchvision's RandomResizedCrop defaults, which the PIL path keeps
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
# PIL's convert("L") weights (ITU-R 601-2 luma), which RandomGrayscale uses
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


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
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    # float64: torchvision computes these in Python floats, and rounding to whole pixels is sensitive
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area.double())
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio.double())
    # torch.round, like Python's round, rounds halves to even
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.int().argmax(dim=1, keepdim=True)  # index of the first valid attempt (0 if none)
    found = valid.any(dim=1)
    fb_top, fb_left, fb_h, fb_w = _center_crop_fallback(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), fb_h)
    w = torch.where(found, w.gather(1, first).squeeze(1), fb_w)
    # uniform integer offsets in [0, height - h]; the clamp guards float rounding at u -> 1
    top = torch.minimum((u_top.double() * (height - h + 1)).long(), height - h)
    left = torch.minimum((u_left.double() * (width - w + 1)).long(), width - w)
    top = torch.where(found, top, fb_top)
    left = torch.where(found, left, fb_left)
    return top, left, h, w


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
    batch, _, in_h, in_w = images.shape
    dtype = images.dtype
    sx = w.to(dtype) / in_w * torch.where(flip, -1.0, 1.0).to(dtype)
    sy = h.to(dtype) / in_h
    # box centre in normalised coordinates (align_corners=False: -1 and 1 are the outer pixel edges)
    tx = (2 * left + w).to(dtype) / in_w - 1
    ty = (2 * top + h).to(dtype) / in_h - 1
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [batch, images.shape[1], *out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    transform with ``MODEL.COMPILE``: run eagerly it is about 80 small operations per batch, each a separate
    launch from the host. The draws
    stay eager because compiled code draws its own random numbers (it cannot take a ``torch.Generator``),
    which would break replaying a batch from the generator's state.
    """

    def __init__(self, out_size: tuple[int, int], train: bool, *, random_resized_crop: bool = False,
                 scale: tuple[float, float] = (0.08, 1.0), flip: bool = False, grayscale_p: float = 0.0,
                 noise: tuple[float, float] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, interpolation: str = "bicubic") -> None:
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.train = train
        self.random_resized_crop = random_resized_crop
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip
        self.grayscale_p = float(grayscale_p)
        self.noise = noise
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.interpolation = interpolation
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
        if self.train and self.grayscale_p > 0:
            params["gray_u"] = torch.rand(batch, generator=generator, device=device)
            params["luma"] = self._constant(LUMA_WEIGHTS, device)
        if self.train and self.noise is not None:  # a training batch leaves the geometry at out_size
            params["noise"] = torch.randn((batch, 3, *self.out_size), generator=generator, device=device)
        if self.mean is not None:
            params["pixel_mean"] = self._constant(self.mean, device)
            params["pixel_std"] = self._constant(self.std, device)
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The transform of ``images`` given :meth:`draw`'s ``params`` (no random draws of its own)."""
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
        x = self._geometry_train(x, params) if self.train else self._geometry_test(x)
        x = x / 255.0
        if "gray_u" in params:
            gray = (x * params["luma"]).sum(dim=1, keepdim=True).expand_as(x)
            chosen = params["gray_u"] < self.grayscale_p
            x = torch.where(chosen[:, None, None, None], gray, x)
        if "noise" in params:
            mean, std = self.noise
            x = (x + params["noise"] * std + mean).clamp(0, 1)
        if "pixel_mean" in params:
            x = (x - params["pixel_mean"]) / params["pixel_std"]
        return x.contiguous()

    def _geometry_train(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        batch, _, in_h, in_w = x.shape
        if "flip_u" in params:
            flip = params["flip_u"] < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if self.random_resized_crop:
            top, left, h, w = resized_crop_params(params["u_area"], params["u_ratio"], params["u_top"],
                                                  params["u_left"], height=in_h, width=in_w, scale=self.scale)
            return crop_resize_flip(x, top, left, h, w, flip, self.out_size)
        # Resize(INPUT.SIZE) of the whole image, as the PIL path does without random_resized_crop
        if (in_h, in_w) != self.out_size:
            x = _resize(x, self.out_size, self.interpolation)
        return torch.where(flip[:, None, None, None], x.flip(-1), x) if self.flip else x

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
            parts += [f"random_resized_crop={self.random_resized_crop}", f"scale={self.scale}", f"flip={self.flip}",
                      f"grayscale_p={self.grayscale_p}", f"noise={self.noise}"]
        parts.append(f"normalize={self.mean is not None}")
        return f"{self.__class__.__name__}({', '.join(parts)})"
