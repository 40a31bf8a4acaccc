"""Datasets and splits: sample ids, labels, class names, and uint8 image batches.

Modules, each depending only on those before it: :mod:`~kt.data.decoding` (image files to tensors),
:mod:`~kt.data.splits` (what a dataset returns), :mod:`~kt.data.loader` (how a pass batches a
split) and :mod:`~kt.data.datasets` (the plugin contract, config to split). Every public name is
re-exported here, so ``from kt.data import X`` is the one import path callers need.
"""

from kt.data.datasets import (
    DATASET_KEYS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    Dataset,
    DatasetFactory,
    DatasetInfo,
    check_augment,
    load_split,
    open_dataset,
)
from kt.data.decoding import decode, decode_pil
from kt.data.loader import Loader, Views, reference_views
from kt.data.splits import Batch, FileSplit, Split, TensorSplit, stratified_subset

__all__ = [
    "DATASET_KEYS", "IMAGENET_MEAN", "IMAGENET_STD", "SPLITS", "Batch", "Dataset", "DatasetFactory",
    "DatasetInfo", "FileSplit", "Loader", "Split", "TensorSplit", "Views", "check_augment", "decode",
    "decode_pil", "load_split", "open_dataset", "reference_views", "stratified_subset",
]
