from engine.data.data_manager import DataManager, DatasetWrapper, build_data_loader, read_image

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader", "read_image"]
