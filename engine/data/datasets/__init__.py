from engine.data.datasets.base_dataset import DATASET_REGISTRY, DatasetBase, Datum, build_dataset

__all__ = ["DATASET_REGISTRY", "DatasetBase", "Datum", "build_dataset"]
