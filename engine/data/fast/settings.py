"""What the fast data path reads from the config, read and checked once: :class:`FastPathSettings`.

The fast path (``DATALOADER.CACHE.ENABLED True``) replaces the PIL loaders: every split decoded once into
a memory-mapped uint8 cache (:mod:`engine.data.fast.cache`), batches gathered from it
(:mod:`engine.data.fast.loader`) and augmented on the training device (:mod:`engine.data.fast.augment`).
The PIL path stays the default: it is exact Dassl behaviour and costs nothing to set up on small data.

Config keys (``DATALOADER.CACHE.*``, defaults in :mod:`engine.config.defaults`):

- ``ENABLED`` (False): use the cache and device augmentation for every loader.
- ``DIR`` ("~/.cache/promptemo/decoded"): the cache folder (``~`` expanded).
- ``SIZE`` (0): the cached side S in pixels; 0 means ``max(INPUT.SIZE)``, which keeps test pixels
  identical to the PIL path and crops never shrink. A larger S keeps more detail for small crops.
- ``ON_DEVICE`` (False): copy the whole uint8 array to the training device once (N x S x S x 3
  bytes: 42 GB for 280k images at 224 px), so a batch is one gather on the device; otherwise
  batches are gathered from the memory map on the host by a background thread.
- ``NUM_WORKERS`` (-1): processes decoding a split; -1 means ``DATALOADER.NUM_WORKERS`` (at least 1).

It also reads ``INPUT.*`` (size, interpolation, transforms and their parameters), ``DATALOADER.K_TRANSFORMS``
and ``RETURN_IMG0``, ``DATASET.NAME`` (the caches' file names), ``USE_CUDA`` (the device) and ``MODEL.COMPILE``
(the training augmentation's pixel work is compiled with the encoders).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from engine.config.checks import check_config_values
from engine.data.fast.augment import DeviceAugment
from engine.data.transforms import check_interpolation, check_transform_names, check_transform_params
from engine.utils.distributed import training_device
from engine.utils.errors import UserError
from engine.utils.tools import compiled

logger = logging.getLogger(__name__)

# The INPUT.TRANSFORMS that run on the device (engine.data.fast.augment says how each maps to the PIL path's)
SUPPORTED_TRANSFORMS = ("random_resized_crop", "random_flip", "center_crop", "colorjitter", "randomgrayscale",
                        "random_affine", "gaussian_noise", "flip_or_noise", "normalize", "random_erasing")


@dataclass(frozen=True)
class FastPathSettings:
    """The fast path's settings for one run; :meth:`from_cfg` is the only place that reads them."""

    directory: str
    size: int  # the cached side S
    interpolation: str
    dataset: str  # names the cache files
    on_device: bool
    num_workers: int  # decoding processes
    k_transforms: int
    device: torch.device
    train_augment: DeviceAugment
    test_augment: DeviceAugment
    img0_augment: DeviceAugment | None  # with DATALOADER.RETURN_IMG0: the batch without augmentation

    @classmethod
    def from_cfg(cls, cfg) -> "FastPathSettings":
        """Read and check every setting (a :class:`UserError` before anything is decoded)."""
        if cfg.INPUT.NO_TRANSFORM:
            raise UserError("INPUT.NO_TRANSFORM cannot be used with DATALOADER.CACHE.ENABLED (cached images have "
                            "one size and are always resized to INPUT.SIZE); disable one of them")
        choices = list(cfg.INPUT.TRANSFORMS)
        check_transform_names(choices)
        check_transform_params(cfg, choices)
        unsupported = [c for c in choices if c not in SUPPORTED_TRANSFORMS]
        if unsupported:
            raise UserError(f"INPUT.TRANSFORMS {', '.join(unsupported)} cannot run on the decoded-image cache "
                            f"(device augmentation supports {', '.join(SUPPORTED_TRANSFORMS)}): set "
                            f"DATALOADER.CACHE.ENABLED False to use the PIL path, or drop them")
        check_interpolation(cfg.INPUT.INTERPOLATION)
        c = cfg.DATALOADER.CACHE
        check_config_values(cfg, ["DATALOADER.CACHE.SIZE", "DATALOADER.CACHE.NUM_WORKERS"])
        size = int(c.SIZE) or max(cfg.INPUT.SIZE)
        if size < max(cfg.INPUT.SIZE):
            logger.warning("DATALOADER.CACHE.SIZE %d is below INPUT.SIZE %s: cached images will be enlarged",
                           size, tuple(cfg.INPUT.SIZE))
        workers = int(c.NUM_WORKERS)
        train_augment = device_augment(cfg, train=True, choices=choices)
        # static shapes: a smaller last batch gets a graph of its own rather than a dynamic-shape one; no CUDA
        # graphs: the target batch's replay would overwrite the source batch before the step uses it. The test
        # transform runs once per evaluation batch and stays eager.
        train_augment.apply = compiled(train_augment.apply, cfg, cuda_graphs=False, dynamic=False)
        return cls(
            directory=os.path.expanduser(c.DIR), size=size, interpolation=cfg.INPUT.INTERPOLATION,
            dataset=cfg.DATASET.NAME, on_device=bool(c.ON_DEVICE),
            num_workers=max(1, cfg.DATALOADER.NUM_WORKERS if workers < 0 else workers),
            k_transforms=max(1, int(cfg.DATALOADER.K_TRANSFORMS)), device=training_device(cfg.USE_CUDA),
            train_augment=train_augment, test_augment=device_augment(cfg, train=False, choices=choices),
            img0_augment=device_augment(cfg, train=False, choices=["normalize"]) if cfg.DATALOADER.RETURN_IMG0
            else None)

    def augment(self, train: bool) -> DeviceAugment:
        return self.train_augment if train else self.test_augment


def device_augment(cfg, train: bool, choices: Sequence[str]) -> DeviceAugment:
    """The device counterpart of ``build_transform(cfg, is_train=train, choices)`` (not compiled)."""
    normalize = "normalize" in choices
    return DeviceAugment(
        tuple(cfg.INPUT.SIZE), train,
        random_resized_crop=train and "random_resized_crop" in choices,
        scale=tuple(cfg.INPUT.RRCROP_SCALE),
        flip=train and "random_flip" in choices,
        grayscale_p=cfg.INPUT.RGS_P if train and "randomgrayscale" in choices else 0.0,
        noise=(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD, cfg.INPUT.GN_P) if train and "gaussian_noise" in choices else None,
        flip_or_noise=(cfg.INPUT.FLIP_OR_NOISE_P, cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD)
        if train and "flip_or_noise" in choices else None,
        jitter=(cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C, cfg.INPUT.COLORJITTER_S, cfg.INPUT.COLORJITTER_H)
        if train and "colorjitter" in choices else None,
        affine=(cfg.INPUT.AFFINE_DEGREES, tuple(cfg.INPUT.AFFINE_TRANSLATE), tuple(cfg.INPUT.AFFINE_SCALE))
        if train and "random_affine" in choices else None,
        erasing=(cfg.INPUT.RE_P, tuple(cfg.INPUT.RE_SCALE)) if train and "random_erasing" in choices else None,
        mean=cfg.INPUT.PIXEL_MEAN if normalize else None,
        std=cfg.INPUT.PIXEL_STD if normalize else None,
        interpolation=cfg.INPUT.INTERPOLATION,
    )
