from engine.data.data_manager import DataManager, DatasetWrapper, build_data_loader
from engine.data.fast import CachedLoader, DecodedCache, DeviceAugment, FastPathSettings, open_decoded_cache
from engine.data.image_io import read_image

__all__ = ["CachedLoader", "DataManager", "DatasetWrapper", "DecodedCache", "DeviceAugment", "FastPathSettings",
           "build_data_loader", "open_decoded_cache", "read_image"]
