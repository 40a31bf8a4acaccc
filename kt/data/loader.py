"""The Loader: the one place that decides how a pass batches a split. Per-sample work (decoding
files, sample augmentations, reference views) runs in persistent worker processes through
``split.load``; a split that needs none of it is read through its own ``split.batches``."""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from kt.augment import AUGMENTATIONS, BATCH_KINDS, SAMPLE_KINDS, AugmentPlan, SampleAugment
from kt.data.splits import Batch, Split
from kt.errors import KtError
from kt.preprocess import Preprocessing, ViewTransform, fast_view


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
    views), from ``workers`` persistent, prefetching processes (none: from a prefetching thread).

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
        batches = self.loader if self.loader.num_workers else prefetched(iter(self.loader))
        for chunk, images in zip(chunks, batches, strict=True):
            yield images, torch.as_tensor(chunk)


def prefetched(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, each made in a background thread while the caller works on the one before: with no
    loader workers, PIL's decoding and resizing (which release the GIL) overlap the model's passes
    instead of waiting between them. An exception in the thread is raised in the caller."""
    slot: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def fill() -> None:
        try:
            for item in items:
                slot.put((item, None))
        except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
            slot.put((None, error))
        slot.put((done, None))

    threading.Thread(target=fill, daemon=True, name="kt-prefetch").start()
    while True:
        item, error = slot.get()
        if error is not None:
            raise error
        if item is done:
            return
        yield item


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
