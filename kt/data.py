"""Datasets and splits: sample ids, labels, class names, and uint8 image batches.

A dataset plugin registers a factory ``factory(**options) -> Dataset``; the config's ``dataset``
mapping names it (``name``) and passes the other keys as options, except ``subset``, which kt
applies to any dataset (a stratified fraction or per-split count, as the paper's 10 % of train).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from kt.augment import AUGMENTATIONS, BATCH_KINDS, FLIPPING, SAMPLE_KINDS, AugmentPlan, SampleAugment
from kt.errors import KtError, closest
from kt.preprocess import Preprocessing, ViewTransform, fast_view
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
    decodes = False  # class attribute: samples are decoded one by one (Loader runs load() in workers)

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

    def load(self, position: int, short_side: int | None = None) -> torch.Tensor:
        """One sample as uint8 (3, H, W) at its own size (``short_side``: a decoder may stop at a
        smaller size whose sides are still at least this long)."""
        raise NotImplementedError

    def load_pil(self, position: int) -> Any:
        """One sample as an RGB PIL image, fully decoded, as the model libraries' own evaluation reads
        it (``Image.open(...).convert("RGB")``): the input of a model's reference view. By default
        the uint8 tensor of :meth:`load` as an image."""
        from PIL import Image

        return Image.fromarray(self.load(position).permute(1, 2, 0).contiguous().numpy())

    def native_size(self) -> int | None:
        """The side of every sample when all are square and of one size (then a model of that size
        and crop 1 sees them unchanged), else None."""
        return None

    def has_samples(self) -> bool:
        """Whether samples can be read one by one (:meth:`load` is implemented)."""
        return type(self).load is not Split.load

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

    def load(self, position: int, short_side: int | None = None) -> torch.Tensor:
        return self.images[position].expand(3, -1, -1)

    def native_size(self) -> int | None:
        h, w = self.images.shape[-2:]
        return int(h) if h == w else None

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
            images = fast_view(images, prep)
            yield images.expand(-1, 3, -1, -1), labels[pos], pos  # resize grey once, then broadcast


def decode(path: Path, short_side: int | None = None) -> torch.Tensor:
    """An image file as uint8 (3, H, W), by the fastest path measured (benchmarks/loader.py): a JPEG
    whose short side is at least twice ``short_side`` is decoded by PIL at a reduced DCT scale
    (``draft``: 1/2, 1/4 or 1/8, still at least ``short_side``), another JPEG by libjpeg-turbo through
    ``torchvision.io.decode_jpeg`` (1.4x PIL's full decode), anything else by PIL. The file is read
    once; PIL parses only its header from memory to choose."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and not (short_side and min(image.size) >= 2 * short_side):
                with warnings.catch_warnings():  # torchvision 0.29 deprecates torchvision.io for TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            if short_side and image.format == "JPEG":
                image.draft("RGB", (short_side, short_side))
            return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    except (OSError, RuntimeError) as e:  # PIL's UnidentifiedImageError, truncated files, libjpeg errors
        raise KtError(f"cannot decode image {path}: {e}. Remove or replace the file.") from None


def decode_pil(path: Path) -> Any:
    """An image file as an RGB PIL image, decoded as timm's and torchvision's datasets do."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except (OSError, RuntimeError) as e:
        raise KtError(f"cannot decode image {path}: {e}. Remove or replace the file.") from None


@dataclass
class FileSplit(Split):
    """A split of image files (``ids`` are paths relative to ``root``), decoded by loader workers."""

    root: Path | None = None
    decodes = True

    def take(self, positions: np.ndarray) -> FileSplit:
        return replace(self, ids=self.ids[positions], labels=self.labels[positions])

    def load(self, position: int, short_side: int | None = None) -> torch.Tensor:
        return decode(self.root / str(self.ids[position]), short_side)

    def load_pil(self, position: int) -> Any:
        return decode_pil(self.root / str(self.ids[position]))

    def batches(self, prep: Preprocessing, batch_size: int, positions: np.ndarray | None = None,
                workers: int = 0, device: torch.device | None = None) -> Iterator[Batch]:
        """Decoded and resized by ``workers`` processes (files differ in size); on the CPU."""
        yield from Loader(self, prep, batch_size, workers).batches(positions)


class Views:
    """The uint8 views of one batch that models see, keyed by :attr:`kt.models.Classifier.view_key`:
    each model's own reference view where the loader made one (un-augmented passes), the first
    (the student's) for the others. Slicing slices every view."""

    def __init__(self, views: dict[str, torch.Tensor]) -> None:
        self.views = views
        self.primary = next(iter(views.values()))

    def get(self, key: str) -> torch.Tensor | None:
        return self.views.get(key)

    def __getitem__(self, part: slice) -> Views:
        return Views({k: v[part] for k, v in self.views.items()})

    def __len__(self) -> int:
        return len(self.primary)

    def to(self, device: torch.device, non_blocking: bool = False) -> Views:
        return Views({k: v.to(device, non_blocking=non_blocking) for k, v in self.views.items()})


class _Samples(TorchDataset):
    """Key (position, pass seed) -> the sample's uint8 view at the model's size: decoded, then
    augmented (sample kinds) or resized and cropped (the fast path), or, given ``transforms``, each
    model's reference view of the fully decoded image. Runs in the loader's workers."""

    def __init__(self, split: Split, prep: Preprocessing, kind: str,
                 transforms: list[ViewTransform] | None = None) -> None:
        self.split, self.prep, self.kind, self.transforms = split, prep, kind, transforms
        full = kind == "rrc_flip"  # a random crop needs the full resolution; the others the resize target
        self.short_side = None if full else prep.scale_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        position, seed = key
        if self.transforms:
            image = self.split.load_pil(position)
            return tuple(transform(image) for transform in self.transforms)
        image = self.split.load(position, self.short_side)
        if self.kind in SAMPLE_KINDS:
            return SampleAugment(self.kind, seed)(image, position, self.prep)
        return fast_view(image, self.prep)


class _PassSampler:
    """The batch sampler of a persistent DataLoader: each pass sets the keys it will yield."""

    def __init__(self) -> None:
        self.keys: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class Loader:
    """Augmented uint8 batches of one split at one model's size, pass after pass (epochs, cached
    views), from ``workers`` persistent, prefetching processes.

    ``models``: the models whose reference views an un-augmented pass makes (the decode setting
    ``reference``, :mod:`kt.preprocess`); batches are then :class:`Views`, one per distinct view, from
    one decode of each image. A split already at every model's size is passed through unchanged.

    Image files and sample augmentations run per sample in the workers (through ``split.load``);
    other splits with a batch augmentation (in memory: the small-image default) take their own
    ``split.batches``, which for a tensor slices it and resizes on ``device``. Batch augmentations
    run on ``device`` after the copy. Either way a sample's view depends on the pass seed and its position only
    (:mod:`kt.augment`), so the number of workers never changes a result."""

    def __init__(self, split: Split, prep: Preprocessing, batch_size: int, workers: int = 0,
                 augment: str = "none", device: torch.device | None = None, models: list[Any] | None = None) -> None:
        if augment not in AUGMENTATIONS:
            raise KtError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}.")
        self.split, self.prep, self.batch_size, self.augment = split, prep, batch_size, augment
        self.device = device or torch.device("cpu")
        self.labels = torch.as_tensor(split.labels, dtype=torch.long)
        self.views = reference_views(split, models) if augment == "none" else None
        self.per_sample = augment in SAMPLE_KINDS or split.decodes or self.views is not None
        if self.per_sample and not split.has_samples():
            raise KtError(f"augmentation {augment!r} works on single images, but {type(split).__name__} has no "
                          "load(position) (kt.data.Split.load); implement it in the dataset plugin or use a batch "
                          f"augmentation ({', '.join(BATCH_KINDS)}).")
        self.sampler = _PassSampler()
        self.loader = None
        if self.per_sample:
            transforms = list(self.views.values()) if self.views else None
            self.loader = DataLoader(_Samples(split, prep, augment, transforms), batch_sampler=self.sampler,
                                     num_workers=workers,
                                     persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                     pin_memory=self.device.type == "cuda")

    def batches(self, positions: np.ndarray | None = None, seed: int = 0) -> Iterator[Batch]:
        """One pass over ``positions`` (all, in order, by default) with pass seed ``seed``:
        (uint8 images on the device, or their :class:`Views`, labels, positions)."""
        order = np.arange(len(self.split)) if positions is None else np.asarray(positions)
        plan = AugmentPlan.make(self.augment, len(self.split), seed) if self.augment in BATCH_KINDS[1:] else None
        for images, pos in self._raw(order, seed):
            if self.views:
                images = Views(dict(zip(self.views, images, strict=True)))
            images = images.to(self.device, non_blocking=True)
            yield (plan.apply(images, pos) if plan else images), self.labels[pos], pos

    def _raw(self, order: np.ndarray, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if not self.per_sample:
            for images, _labels, pos in self.split.batches(self.prep, self.batch_size, order, device=self.device):
                yield images, pos
            return
        self.sampler.keys = [[(int(p), seed) for p in chunk] for chunk in chunks]
        for chunk, images in zip(chunks, self.loader, strict=True):
            yield images, torch.as_tensor(chunk)


def reference_views(split: Split, models: list[Any] | None) -> dict[str, ViewTransform] | None:
    """The distinct reference views of ``models`` (view key -> transform), or None where they are
    not needed (no models, or a split whose samples every model takes as they are) or not possible
    (a split without :meth:`Split.load`: its own ``batches`` resize on the fast path, with a warning)."""
    if not models:
        return None
    native = split.native_size()
    if all(m.preprocess.size == native and m.preprocess.crop_pct == 1.0 for m in models):
        return None
    if not split.has_samples():
        warnings.warn(f"{type(split).__name__} has no load(position), so models see its own resized batches "
                      "instead of their libraries' reference views; implement load() in the dataset plugin.",
                      stacklevel=2)
        return None
    return {m.view_key: m.transform for m in models}


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
    decodes: bool = False  # samples are image files decoded one by one (loader workers pay off)

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetInfo:
        defaults = cls()
        return cls(mean=tuple(getattr(dataset, "mean", defaults.mean)),
                   std=tuple(getattr(dataset, "std", defaults.std)),
                   size=getattr(dataset, "size", None), hflip=bool(getattr(dataset, "hflip", True)),
                   decodes=bool(getattr(dataset, "decodes", False)))

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
    except KtError:
        raise
    except TypeError as e:
        raise KtError(f"dataset {name!r} does not take these options {sorted(options)}: {e}.") from None
    except Exception as e:  # noqa: BLE001 - a plugin's own validation of its options
        raise KtError(f"config key dataset: {registry.who('datasets', name)} rejected the options {options}: "
                      f"{type(e).__name__}: {e}") from None


def check_augment(augment: str, dataset: Dataset, key: str) -> None:
    """Refuse a flip augmentation on a dataset whose labels do not survive a horizontal flip."""
    if augment in FLIPPING and not DatasetInfo.of(dataset).hflip:
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
