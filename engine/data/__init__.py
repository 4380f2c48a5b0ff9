from engine.data.data_manager import DataManager, DatasetWrapper, build_data_loader, read_image
from engine.data.cache import DecodedCache, open_decoded_cache  # registers the DATALOADER.CACHE keys
from engine.data.cached_loader import CachedLoader, build_cached_loader
from engine.data.device_aug import DeviceAugment

__all__ = ["CachedLoader", "DataManager", "DatasetWrapper", "DecodedCache", "DeviceAugment", "build_cached_loader",
           "build_data_loader", "open_decoded_cache", "read_image"]
