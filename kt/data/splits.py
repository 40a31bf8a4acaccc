"""Splits: what a dataset plugin returns for ``train`` or ``eval``. A split only says how to produce
its samples (one by one through ``load``, or as its own batches); how a pass batches them, with
workers, views and augmentations, is the :class:`~kt.data.loader.Loader`'s decision."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kt.data.decoding import decode, decode_pil
from kt.errors import KtError
from kt.preprocess import Preprocessing, fast_view

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
        """The split's own uint8 batches, resized/cropped as ``prep`` says, with labels and their
        positions: for splits cheaper to batch whole than sample by sample (in memory). The Loader
        uses them where a pass needs no per-sample work; a split with ``decodes = True`` is always
        read through :meth:`load` and need not implement this.

        ``device``: where the consumer wants the images; a split may move them there before resizing
        (cheaper to send, and the GPU resizes) or return them on the CPU."""
        raise NotImplementedError(f"{type(self).__name__} makes no batches of its own; read it through "
                                  "kt.data.Loader(split, prep, batch_size).batches().")


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


@dataclass
class FileSplit(Split):
    """A split of image files (``ids`` are paths relative to ``root``). Files differ in size and cost
    a decode each, so the Loader reads them one by one in its workers (``decodes``); batch them
    with ``Loader(split, prep, batch_size, workers).batches()``."""

    root: Path | None = None
    decodes = True

    def take(self, positions: np.ndarray) -> FileSplit:
        return replace(self, ids=self.ids[positions], labels=self.labels[positions])

    def load(self, position: int, short_side: int | None = None) -> torch.Tensor:
        return decode(self.root / str(self.ids[position]), short_side)

    def load_pil(self, position: int) -> Any:
        return decode_pil(self.root / str(self.ids[position]))


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
