"""Datasets and splits: sample ids, labels, class names, and uint8 image batches.

A dataset plugin registers a factory ``factory(**options) -> Dataset``; the config's ``dataset``
mapping names it (``name``) and passes the other keys as options, except ``subset``, which kt
applies to any dataset (a stratified fraction or per-split count, as the paper's 10 % of train).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from kt.errors import KtError, closest
from kt.preprocess import Preprocessing, resize_uint8
from kt.registry import REQUIRED, Registry, get_registry

SPLITS = ("train", "eval")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 images, labels, positions


@dataclass
class Split:
    """One split of a dataset. ``ids`` name the samples (stable across runs), ``labels`` are class
    indices into ``classes``. Subclasses say how to produce uint8 (N, 3, H, W) images."""

    name: str
    ids: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """Hash of ids and labels in order: two files with equal fingerprints hold the same samples."""
        h = hashlib.sha256()
        h.update(np.asarray(self.ids).astype(str).astype("U").tobytes())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def take(self, positions: np.ndarray) -> Split:
        """The samples at ``positions`` (in that order)."""
        raise NotImplementedError

    def batches(self, prep: Preprocessing, batch_size: int, positions: np.ndarray | None = None,
                workers: int = 0, device: torch.device | None = None) -> Iterator[Batch]:
        """uint8 images resized/cropped as ``prep`` says, with labels and their positions.

        ``device``: where the consumer wants the images; a split may move them there before resizing
        (cheaper to send, and the GPU resizes) or return them on the CPU."""
        raise NotImplementedError


@dataclass
class TensorSplit(Split):
    """A split held in memory as a uint8 (N, C, H, W) tensor (C = 1 or 3); batches are slices."""

    images: torch.Tensor | None = None

    def take(self, positions: np.ndarray) -> TensorSplit:
        pos = torch.as_tensor(positions, dtype=torch.long)
        return replace(self, ids=self.ids[positions], labels=self.labels[positions], images=self.images[pos])

    def batches(self, prep: Preprocessing, batch_size: int, positions: np.ndarray | None = None,
                workers: int = 0, device: torch.device | None = None) -> Iterator[Batch]:
        """Slices of the in-memory images; on a GPU ``device`` they travel at native size (for
        Fashion-MNIST to 224 px: 1/64 of the bytes, one channel) and are resized there."""
        order = torch.arange(len(self)) if positions is None else torch.as_tensor(positions, dtype=torch.long)
        labels = torch.as_tensor(self.labels, dtype=torch.long)
        gpu = device is not None and device.type == "cuda"
        for start in range(0, len(order), batch_size):
            pos = order[start:start + batch_size]
            images = self.images[pos]
            if gpu:
                images = images.pin_memory().to(device, non_blocking=True)
            images = resize_uint8(images, prep.size, prep.crop_pct, prep.interpolation)
            yield images.expand(-1, 3, -1, -1), labels[pos], pos  # resize grey once, then broadcast


class _Files(TorchDataset):
    def __init__(self, paths: list[Path], prep: Preprocessing) -> None:
        self.paths, self.prep = paths, prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as image:
                array = np.asarray(image.convert("RGB"))
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise KtError(f"cannot decode image {self.paths[i]}: {e}. Remove or replace the file.") from None
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        return resize_uint8(image, self.prep.size, self.prep.crop_pct, self.prep.interpolation)


@dataclass
class FileSplit(Split):
    """A split of image files (``ids`` are paths relative to ``root``), decoded by loader workers."""

    root: Path | None = None

    def take(self, positions: np.ndarray) -> FileSplit:
        return replace(self, ids=self.ids[positions], labels=self.labels[positions])

    def batches(self, prep: Preprocessing, batch_size: int, positions: np.ndarray | None = None,
                workers: int = 0, device: torch.device | None = None) -> Iterator[Batch]:
        """Decoded and resized by ``workers`` processes (files differ in size); always on the CPU."""
        order = np.arange(len(self)) if positions is None else np.asarray(positions)
        files = _Files([self.root / str(self.ids[i]) for i in order], prep)
        loader = DataLoader(files, batch_size=batch_size, num_workers=workers, pin_memory=torch.cuda.is_available())
        labels = torch.as_tensor(self.labels, dtype=torch.long)
        for start, images in zip(range(0, len(order), batch_size), loader, strict=True):
            pos = torch.as_tensor(order[start:start + batch_size])
            yield images, labels[pos], pos


class Dataset(Protocol):
    """What a dataset factory returns.

    Required: ``classes`` (the label space, readable names in label order) and ``split(name)``
    for ``name`` in :data:`SPLITS` (``"train"``: the transfer set, ``"eval"``: the evaluation
    set), returning a :class:`Split`. Optional class or instance attributes, read through
    :meth:`DatasetInfo.of`: ``mean`` and ``std`` (per channel, in [0, 1] units), ``size`` (native
    side in pixels; the zoo's input size) and ``hflip`` (``False`` when a horizontal flip changes
    the label, as for digits or text: flip augmentations are then refused)."""

    classes: list[str]

    def split(self, name: str) -> Split: ...


class DatasetFactory(Protocol):
    """What ``register_datasets`` registers: a callable (usually the dataset class) whose keyword
    parameters are the dataset's options (every key of the config's ``dataset`` mapping except
    ``name``, ``seed`` and ``subset``); parameters without a default are required options."""

    def __call__(self, **options: Any) -> Dataset: ...


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares about its images; ImageNet statistics, no native size and valid
    flips where it declares nothing."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: int | None = None
    hflip: bool = True

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetInfo:
        defaults = cls()
        return cls(mean=tuple(getattr(dataset, "mean", defaults.mean)),
                   std=tuple(getattr(dataset, "std", defaults.std)),
                   size=getattr(dataset, "size", None), hflip=bool(getattr(dataset, "hflip", True)))

    def preprocess(self) -> dict[str, Any]:
        """Preprocessing for models trained on this dataset (the zoo): its statistics, its native
        size uncropped."""
        size = {"size": self.size, "crop_pct": 1.0} if self.size else {}
        return {**size, "mean": list(self.mean), "std": list(self.std)}


DATASET_KEYS = ("name", "seed", "subset")  # keys of the config's dataset mapping that kt itself reads


def open_dataset(dataset: dict[str, Any], registry: Registry | None = None) -> Dataset:
    """The dataset object a config ``dataset`` mapping describes, its options checked against the
    factory's parameters first (each mistake names its ``dataset.KEY``)."""
    options = {k: v for k, v in dataset.items() if k not in DATASET_KEYS}
    name = dataset.get("name")
    if name is None:
        raise KtError("config key dataset.name is missing; e.g. dataset: {name: fashion_mnist}.")
    registry = registry or get_registry()
    factory = registry.get("datasets", name)
    accepted = registry.options("datasets", name)
    if accepted is not None:
        for key in options:
            if key not in accepted:
                raise KtError(f"config key dataset.{key}: dataset {name!r} does not take this option."
                              f"{closest(key, accepted)} Its options: {', '.join(accepted) or 'none'} "
                              "(see `kt plugins`).")
        for key, default in accepted.items():
            if default == REQUIRED and key not in options:
                raise KtError(f"config key dataset.{key} is required by dataset {name!r}; add it to the "
                              "dataset section of the config.")
    try:
        return factory(**options)
    except TypeError as e:
        raise KtError(f"dataset {name!r} does not take these options {sorted(options)}: {e}.") from None


def check_augment(augment: str, dataset: Dataset, key: str) -> None:
    """Refuse a flip augmentation on a dataset whose labels do not survive a horizontal flip."""
    if "flip" in augment and not DatasetInfo.of(dataset).hflip:
        raise KtError(f"config key {key}: augmentation {augment!r} flips images, but the dataset declares "
                      "that a horizontal flip changes the label (hflip = False); use 'none' or 'crop'.")


def stratified_subset(labels: np.ndarray, size: float | int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-stratified subset: a fraction (0 < size <= 1) or a total count."""
    labels = np.asarray(labels)
    n = len(labels)
    total = int(round(size * n)) if isinstance(size, float) and size <= 1 else int(size)
    if not 0 < total <= n:
        raise KtError(f"subset size {size!r} selects {total} of {n} samples; use a fraction in (0, 1] "
                      f"or a count between 1 and {n}.")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * total / n).astype(int)
    remainder = total - quota.sum()
    if remainder:  # largest fractional parts first, ties broken by the seeded rng
        frac = counts * total / n - quota
        order = np.lexsort((rng.random(len(classes)), -frac))
        quota[order[:remainder]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def load_split(dataset: dict[str, Any], split: str, registry: Registry | None = None) -> Split:
    """The split ``split`` of the dataset a config ``dataset`` mapping describes, subset applied."""
    if split not in SPLITS:
        raise KtError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    data = open_dataset(dataset, registry)
    name, subset, seed = dataset["name"], dataset.get("subset") or {}, dataset.get("seed", 0)
    part = data.split(split)
    if len(part) == 0:
        raise KtError(f"dataset {name!r} split {split!r} is empty; check the dataset's folder.")
    if subset.get(split) is not None:
        part = part.take(stratified_subset(part.labels, subset[split], seed))
    return part
