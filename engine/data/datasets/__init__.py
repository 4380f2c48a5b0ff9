from engine.data.datasets.base_dataset import (DATASET_REGISTRY, DatasetBase, Datum, SplitInfo, build_dataset,
                                               split_info_of)

__all__ = ["DATASET_REGISTRY", "DatasetBase", "Datum", "SplitInfo", "build_dataset", "split_info_of"]
