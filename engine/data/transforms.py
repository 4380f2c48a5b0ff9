"""Image transforms by Dassl's names (``INPUT.TRANSFORMS``).

Train-time choices, applied in this order whatever the order of ``INPUT.TRANSFORMS``:
``random_resized_crop, random_crop, center_crop, random_flip, colorjitter, randomgrayscale,
random_affine, gaussian_blur, gaussian_noise, flip_or_noise, normalize, random_erasing`` (pixel-wise colour
transforms commute with a flip, so DUML's and LA-CMFER's "jitter, greyscale, flip, affine" has this order's
distribution; ``random_erasing`` works on the normalised tensor, as torchvision's ``RandomErasing`` is
meant to). ``gaussian_noise`` adds ``N(INPUT.GN_MEAN, INPUT.GN_STD)`` to the [0, 1] image with probability
``INPUT.GN_P``; ``flip_or_noise`` is the basic augmentation of EAC and OS-FER: with probability
``INPUT.FLIP_OR_NOISE_P`` either a horizontal flip or that noise, each with even chance (never both). Test time
always resizes the short side to ``max(INPUT.SIZE)`` and centre-crops, then applies ``normalize`` if chosen (as
Dassl does).

One deviation from Dassl, on purpose: ``random_crop`` resizes to ``INPUT.SIZE`` first. Dassl crops
the raw image, which only works when every image already has the input size; FER datasets mix
48 px (FERPlus), 100 px (RAF-DB) and larger images.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from engine.config.checks import check_config_values
from engine.utils.errors import UserError

AVAILABLE_TRANSFORMS = (
    "random_resized_crop", "random_crop", "center_crop", "random_flip", "random_affine", "colorjitter",
    "randomgrayscale", "gaussian_blur", "gaussian_noise", "flip_or_noise", "normalize", "random_erasing",
)
# torchvision's RandomErasing aspect-ratio range, which random_erasing keeps
ERASE_RATIO = (0.3, 3.3)

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class GaussianNoise:
    """With probability ``p``, add N(mean, std) noise to a [0, 1] tensor image and clamp back to [0, 1]."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 1.0) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # no coin at p = 1, so that configs without GN_P draw the random numbers they always drew
        if self.p < 1 and torch.rand(()) >= self.p:
            return img
        return add_noise(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std}, p={self.p})"


class FlipOrNoise:
    """EAC's and OS-FER's basic augmentation on a [0, 1] tensor image: with probability ``p`` one of a
    horizontal flip and N(mean, std) noise, each with even chance (their ``random.uniform(0, 1) > 0.5``, then
    ``random.randint(0, 1)`` picks ``flip_image`` or ``add_g``)."""

    def __init__(self, p: float = 0.5, mean: float = 0.0, std: float = 0.15) -> None:
        self.p, self.mean, self.std = p, mean, std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        u = float(torch.rand(()))
        if u < self.p / 2:
            return img.flip(-1)
        if u < self.p:
            return add_noise(img, self.mean, self.std)
        return img

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mean={self.mean}, std={self.std})"


def add_noise(img: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``img + N(mean, std)``, clamped to [0, 1]."""
    return (img + torch.randn_like(img) * std + mean).clamp_(0, 1)


def check_transform_names(choices: Sequence[str]) -> None:
    """A :class:`UserError` naming the unknown entries of ``INPUT.TRANSFORMS``, if any."""
    unknown = [c for c in choices if c not in AVAILABLE_TRANSFORMS]
    if unknown:
        raise UserError(f"unknown transform(s) {', '.join(unknown)} in INPUT.TRANSFORMS; "
                        f"available: {', '.join(AVAILABLE_TRANSFORMS)}")


# The config keys each parameterised transform reads (their ranges are in engine.config.checks)
TRANSFORM_PARAMS = {
    "random_resized_crop": ("INPUT.RRCROP_SCALE",),
    "random_crop": ("INPUT.CROP_PADDING",),
    "colorjitter": ("INPUT.COLORJITTER_B", "INPUT.COLORJITTER_C", "INPUT.COLORJITTER_S", "INPUT.COLORJITTER_H"),
    "randomgrayscale": ("INPUT.RGS_P",),
    "gaussian_noise": ("INPUT.GN_MEAN", "INPUT.GN_STD", "INPUT.GN_P"),
    "flip_or_noise": ("INPUT.GN_MEAN", "INPUT.GN_STD", "INPUT.FLIP_OR_NOISE_P"),
    "gaussian_blur": ("INPUT.GB_P", "INPUT.GB_K"),
    "random_affine": ("INPUT.AFFINE_DEGREES", "INPUT.AFFINE_TRANSLATE", "INPUT.AFFINE_SCALE"),
    "random_erasing": ("INPUT.RE_P", "INPUT.RE_SCALE"),
}


def check_transform_params(cfg, choices: Sequence[str]) -> None:
    """A :class:`UserError` naming the first out-of-range parameter of the chosen transforms (and of the
    input size and normalisation), before any data is read: the table of :mod:`engine.config.checks`
    applied to the keys they read, for a transform built outside a full run."""
    keys = ["INPUT.SIZE", "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"]
    for choice in choices:
        keys += TRANSFORM_PARAMS.get(choice, ())
    check_config_values(cfg, keys)


def check_interpolation(name: str) -> None:
    """A :class:`UserError` unless ``INPUT.INTERPOLATION`` names a supported mode."""
    if name not in INTERPOLATION_MODES:
        raise UserError(f"INPUT.INTERPOLATION must be one of {', '.join(INTERPOLATION_MODES)}, got '{name}'")


def build_transform(cfg, is_train: bool = True, choices: Sequence[str] | None = None):
    """Compose the train or test transform; ``None`` when ``INPUT.NO_TRANSFORM``."""
    if cfg.INPUT.NO_TRANSFORM:
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    check_transform_names(choices)
    check_transform_params(cfg, choices)
    check_interpolation(cfg.INPUT.INTERPOLATION)
    size = tuple(cfg.INPUT.SIZE)
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    tfms = [_to_rgb]
    if is_train:
        if "random_resized_crop" in choices:
            tfms.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
        else:
            tfms.append(T.Resize(size, interpolation=interp))
            if "random_crop" in choices:
                tfms.append(T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
        if "center_crop" in choices:
            tfms.append(T.CenterCrop(size))
        if "random_flip" in choices:
            tfms.append(T.RandomHorizontalFlip())
        if "colorjitter" in choices:
            tfms.append(T.ColorJitter(brightness=cfg.INPUT.COLORJITTER_B, contrast=cfg.INPUT.COLORJITTER_C,
                                      saturation=cfg.INPUT.COLORJITTER_S, hue=cfg.INPUT.COLORJITTER_H))
        if "randomgrayscale" in choices:
            tfms.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
        if "random_affine" in choices:  # after the colour transforms: the fill stays black, as DUML's
            tfms.append(T.RandomAffine(degrees=cfg.INPUT.AFFINE_DEGREES, translate=tuple(cfg.INPUT.AFFINE_TRANSLATE),
                                       scale=tuple(cfg.INPUT.AFFINE_SCALE), fill=0))
        if "gaussian_blur" in choices:
            tfms.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
        tfms.append(T.ToTensor())
        if "gaussian_noise" in choices:
            tfms.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD, cfg.INPUT.GN_P))
        if "flip_or_noise" in choices:
            tfms.append(FlipOrNoise(cfg.INPUT.FLIP_OR_NOISE_P, cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    else:
        tfms += [T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()]
    if "normalize" in choices:
        tfms.append(normalize)
    if is_train and "random_erasing" in choices:
        tfms.append(T.RandomErasing(p=cfg.INPUT.RE_P, scale=tuple(cfg.INPUT.RE_SCALE), ratio=ERASE_RATIO, value=0))
    return T.Compose(tfms)


def _to_rgb(img):
    # Grey (FERPlus) and palette images become 3-channel, as CLIP expects.
    return img if img.mode == "RGB" else img.convert("RGB")
