"""The fast data path: decoded-image caches, loaders over them and augmentation on the training device
(``DATALOADER.CACHE.*``; :mod:`engine.data.fast.settings` describes the keys)."""
from engine.data.fast.augment import DeviceAugment
from engine.data.fast.cache import DecodedCache, decode_image, open_decoded_cache
from engine.data.fast.loader import CachedLoader, CacheView, build_cached_loader
from engine.data.fast.settings import FastPathSettings

__all__ = ["CachedLoader", "CacheView", "DecodedCache", "DeviceAugment", "FastPathSettings", "build_cached_loader",
           "decode_image", "open_decoded_cache"]
